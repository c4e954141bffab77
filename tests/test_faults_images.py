"""Hostile images (issue 28): zip entries whose header lies about their size, pictures whose
header claims more pixels than may be decoded or than their bytes can hold, and a zip of
unreadable images. Each is read by the code that reads images (ImageSource, the thumbnails, the
pixel statistics, `vclust pixels` as a real subprocess); the peak memory of a read is measured
in a child process (``ru_maxrss``), never assumed."""

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vclust.storage.images import ImageSource, write_thumbnails

from .test_faults import ENV, REPO, run_cli, small_case

MB = 1 << 20


def _jpeg(size=(64, 48), colour=(120, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _claiming_jpeg(w: int, h: int) -> bytes:
    """A 16x16 JPEG (about 630 bytes) whose frame header says ``w`` x ``h``."""
    data = bytearray(_jpeg((16, 16)))
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, h, w)
    return bytes(data)


def _png_bomb(w: int, h: int) -> bytes:
    """A valid 1-bit PNG of ``w`` x ``h`` (all black): a few hundred KB that decode to w*h
    pixels (three bytes each once converted to RGB)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (w + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _lying_zip(path: Path, name: str, payload: bytes, claim: int) -> Path:
    """A zip of one deflated entry whose headers (local and central) give ``claim`` as its
    uncompressed size."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok/good.jpg", _jpeg())
        zf.writestr(name, payload)
    raw = bytearray(path.read_bytes())
    enc = name.encode()
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = 0
        while (pos := raw.find(sig, pos)) >= 0:
            nlen_at = 26 if sig == b"PK\x03\x04" else 28
            nlen = struct.unpack_from("<H", raw, pos + nlen_at)[0]
            name_at = pos + (30 if sig == b"PK\x03\x04" else 46)
            if raw[name_at:name_at + nlen] == enc:
                struct.pack_into("<I", raw, pos + size_at, claim)
            pos += 4
    path.write_bytes(bytes(raw))
    return path


MEASURE = r"""
import json, resource, sys
from vclust.storage.images import ImageSource, write_thumbnails
from vclust.jobs.pixels import stats_for_ids
zip_path, image_id, how, out = sys.argv[1:5]
src = ImageSource(zip_path)
fetch = getattr(src, "fetch_why", lambda i: (*src.fetch(i), ""))  # (the code before issue 28)
fetch("ok/good.jpg")  # the reading code warmed up, its imports done
write_thumbnails(src, ["ok/good.jpg"], out)
stats_for_ids(src, ["ok/good.jpg"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if how == "fetch":
    status, data, why = fetch(image_id)
elif how == "thumbnail":
    listed = out + "/unreadable.csv"
    try:
        res = write_thumbnails(src, [image_id], out, unreadable_csv=listed)
    except TypeError:  # (the code before issue 28)
        res = write_thumbnails(src, [image_id], out)
    status = "unreadable" if res["unreadable"] else "ok"
    why = open(listed).read().splitlines()[1] if res["unreadable"] else ""
else:
    bad = []
    try:
        cols = stats_for_ids(src, [image_id], bad=bad)
    except TypeError:  # (the code before issue 28)
        cols = stats_for_ids(src, [image_id])
    status = "readable" if cols["readable"][0] else "refused"
    why = bad[0][1] if bad else ""
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": status, "why": why, "peak_growth_kb": after - before,
                  "peak_kb": after}))
"""


def _measure(zip_path: Path, image_id: str, how: str, out: Path) -> dict:
    """Read ``image_id`` in a child process: its status, why, the process's peak resident
    memory and how far the read raised it (0: the read stayed below the peak the imports and a
    good image's read reached)."""
    res = subprocess.run([sys.executable, "-c", MEASURE, str(zip_path), image_id, how, str(out)],
                         capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    # 300 MB of zeros deflated to ~300 KB, its headers claiming 1,000 bytes
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = b"".join(zeros.compress(b"\x00" * MB) for _ in range(300)) + zeros.flush()
    under = root / "understated.zip"
    under.write_bytes(_zip_of({"ok/good.jpg": (_jpeg(), None),
                               "bad/bomb.jpg": (raw, 1000)}))
    claims_2gb = _lying_zip(root / "claims2gb.zip", "bad/huge.jpg", _jpeg(), 2_000_000_000)
    big = root / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ok/good.jpg", _jpeg())
        zf.writestr("bad/30000.png", _png_bomb(30000, 30000))
        zf.writestr("bad/15000.png", _png_bomb(15000, 10000))
        zf.writestr("bad/claims12000.jpg", _claiming_jpeg(12000, 12000))
        zf.writestr("bad/claims4000.jpg", _claiming_jpeg(4000, 3000))
    return {"root": root, "under": under, "claims2gb": claims_2gb, "big": big}


def _zip_of(entries: dict) -> bytes:
    """A zip whose entries are {name: (raw deflate stream or plain bytes, claimed size)}: a
    claimed size (not None) makes the entry deflated with that uncompressed size and CRC 0."""
    body, central = bytearray(), bytearray()
    for name, (data, claim) in entries.items():
        enc = name.encode()
        if claim is None:
            method, usize, crc, comp = 0, len(data), zlib.crc32(data), data
        else:
            method, usize, crc, comp = 8, claim, 0, data
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(comp),
                            usize, len(enc), 0) + enc + comp
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc,
                               len(comp), usize, len(enc), 0, 0, 0, 0, 0, offset) + enc
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                      len(body), 0)
    return bytes(body + central + end)


def test_an_entry_whose_header_understates_its_size_is_not_inflated_whole(hostile, tmp_path,
                                                                          figure):
    """Issue 28: a 300 KB entry claiming 1,000 bytes held 300 MB and was inflated whole."""
    got = _measure(hostile["under"], "bad/bomb.jpg", "fetch", tmp_path / "t")
    assert got["status"] == "unreadable" and "inflates past the 1,000 bytes" in got["why"], got
    assert got["peak_growth_kb"] < 32 * 1024, got  # 300 MB when inflated whole
    figure(f"understated zip entry (300 MB in 300 KB, claims 1,000 B): peak grew "
           f"{got['peak_growth_kb'] / 1024:.1f} MB (peak RSS {got['peak_kb'] / 1024:.0f} MB)")
    with ImageSource(hostile["under"]) as src:
        assert src.fetch("ok/good.jpg")[0] == "ok"  # the rest of the zip reads as before


def test_an_entry_claiming_2gb_is_refused_by_its_header(hostile, tmp_path, figure):
    got = _measure(hostile["claims2gb"], "bad/huge.jpg", "fetch", tmp_path / "t")
    assert got["status"] == "unreadable", got
    assert "2,000,000,000 bytes, more than the 268,435,456 an image may have" in got["why"], got
    assert got["peak_growth_kb"] < 32 * 1024, got
    figure(f"zip entry claiming 2 GB: refused ({got['why']}); peak grew "
           f"{got['peak_growth_kb'] / 1024:.1f} MB (peak RSS {got['peak_kb'] / 1024:.0f} MB)")


@pytest.mark.parametrize("how", ["thumbnail", "pixels"])
@pytest.mark.parametrize("image_id, reason", [
    ("bad/30000.png", "too many pixels"),
    ("bad/15000.png", "15000x10000 is 150,000,000 pixels, more than the 40,000,000"),
    ("bad/claims12000.jpg", "12000x12000 is 144,000,000 pixels"),
    ("bad/claims4000.jpg", "its header gives 4000x3000, more pixels than its"),
])
def test_pictures_too_large_or_larger_than_their_bytes_are_refused_before_decoding(
        hostile, tmp_path, figure, how, image_id, reason):
    """Issue 28: a 15000x10000 PNG was decoded whole (+576 MB in pixels, +1,149 MB in the
    report); a 676-byte JPEG claiming 12000x12000 was stored readable at that size."""
    got = _measure(hostile["big"], image_id, how, tmp_path / "t")
    assert got["status"] in ("unreadable", "refused"), got
    assert reason in got["why"], got
    assert got["peak_growth_kb"] < 32 * 1024, got
    figure(f"{image_id} ({how}): refused ({got['why'][:70]}...); peak grew "
           f"{got['peak_growth_kb'] / 1024:.1f} MB (peak RSS {got['peak_kb'] / 1024:.0f} MB)")


def test_a_zip_of_unreadable_images_gives_one_warning_line(tmp_path):
    """Issue 28: an overwritten zip printed one stderr warning per unreadable image (625
    lines). `vclust pixels` (a real subprocess) and the thumbnails say it in one line, with the
    count; the thumbnails list each in the CSV the caller names."""
    from vclust.storage.ingest import ingest

    files, ids = small_case(tmp_path / "case", rows=120)
    ingest(tmp_path / "store", files, ids_csv=ids, batch="b0")
    with zipfile.ZipFile(tmp_path / "images.zip", "w", zipfile.ZIP_STORED) as zf:
        for i in range(120):  # every image overwritten by garbage (a good one now and then)
            zf.writestr(f"img/0/{i}.jpg", _jpeg() if i % 10 == 0 else b"\xff\xd8garbage" * 9)
    out = run_cli(["pixels", tmp_path / "store", "--images", tmp_path / "images.zip", "--all"])
    assert out.returncode == 0, out.stderr
    assert "dask: in this process" in out.stderr  # 120 images: no LocalCluster started
    warn = [ln for ln in out.stderr.splitlines() if ln.startswith("vclust:")]
    assert len(warn) == 1, out.stderr
    assert "108 of 120 images unreadable or undecodable" in warn[0], warn

    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("vclust.storage.images")
    logger.addHandler(handler)
    try:
        with ImageSource(tmp_path / "images.zip") as src:
            res = write_thumbnails(src, [f"img/0/{i}.jpg" for i in range(120)],
                                   tmp_path / "thumbs", unreadable_csv=tmp_path / "bad.csv")
    finally:
        logger.removeHandler(handler)
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert res["unreadable"] == 108 and len(warnings) == 1, [r.getMessage() for r in records]
    assert "108 of 120 images unreadable" in warnings[0].getMessage()
    assert str(tmp_path / "bad.csv") in warnings[0].getMessage()
    listed = (tmp_path / "bad.csv").read_text().splitlines()
    assert listed[0] == "image_id,why" and len(listed) == 109


def test_a_good_image_beside_hostile_ones_still_reads(hostile, tmp_path):
    """The bounds refuse pictures, not the source: a good image of a hostile zip reads."""
    with ImageSource(hostile["big"]) as src:
        res = write_thumbnails(src, ["ok/good.jpg", "bad/15000.png"], tmp_path / "thumbs")
    assert (res["written"], res["unreadable"]) == (1, 1)

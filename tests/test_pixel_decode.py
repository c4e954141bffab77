"""`vclust pixels` decodes sound JPEGs with libjpeg-turbo straight into an array
(vclust.storage.decode.decode_jpeg) and leaves everything else to Pillow: the pixels must be
Pillow's, value for value, at full size and DCT-reduced, and what Pillow refuses or decodes its
own way must still reach Pillow. The statistics computed from those pixels (numerics.pixels: two
compiled kernels, numerics.pixel_kernels, with exact integer sums) must equal their plain
two-dimensional definitions, computed here in float64."""

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vclust.jobs.pixels import decode, row_stats
from vclust.numerics.pixels import STAT_COLUMNS, image_stats
from vclust.storage.decode import decode_jpeg, open_image, reduced_box


def _photos() -> dict[str, Image.Image]:
    """Real photographs that ship inside scikit-learn and scikit-image."""
    import skimage
    import sklearn.datasets

    sk = Path(sklearn.datasets.__file__).parent / "images"
    si = Path(skimage.__file__).parent / "data"
    files = [sk / "china.jpg", si / "rocket.jpg", si / "astronaut.png", si / "camera.png"]
    return {f.stem: Image.open(f).convert("RGB") for f in files}


def _encode(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _pillow(data: bytes, size: int) -> np.ndarray:
    """The pixels as `vclust pixels` decoded them with Pillow alone (draft mode for JPEGs at
    least twice ``size``)."""
    with open_image(data) as im:
        box = reduced_box(*im.size, size)
        if box is not None:
            im.draft("RGB", box)
        return np.asarray(im.convert("RGB"))


def _variants():
    """(name, JPEG bytes): every photograph cropped to VeRi-Wild's size and whole, enlarged to
    be reduced 1/2, 1/4 and 1/8 in the DCT, in 4:2:0, 4:2:2 and 4:4:4, progressive and grey."""
    for name, img in _photos().items():
        crop = img.crop((10, 20, 10 + 257, 20 + 211))  # odd sides: partial 8 x 8 blocks
        for label, pic in (("crop", crop), ("whole", img), ("x3", img.resize(
                (img.width * 3, img.height * 3))), ("x9", crop.resize((257 * 9, 211 * 9)))):
            yield f"{name}-{label}-420", _encode(pic, quality=92)
            yield f"{name}-{label}-422", _encode(pic, quality=80, subsampling=1)
            yield f"{name}-{label}-444", _encode(pic, quality=95, subsampling=0)
        yield f"{name}-progressive", _encode(crop, quality=90, progressive=True)
        yield f"{name}-grey", _encode(crop.convert("L"), quality=90)


def test_decode_jpeg_gives_pillows_pixels_whole_and_reduced_in_the_dct():
    reductions = set()
    for name, data in _variants():
        fast = decode_jpeg(data, 256)
        assert fast is not None, name  # a sound JPEG is libjpeg-turbo's to decode
        w, h, px = fast
        with Image.open(io.BytesIO(data)) as im:
            assert (w, h) == im.size, name
        want = _pillow(data, 256)
        assert px.shape == want.shape[:2] + (4,), name
        assert np.array_equal(px[..., :3], want), name
        assert (px[..., 3] == 255).all(), name
        reductions.add(round(w / px.shape[1]))
        # the whole pipeline: the same statistics as from Pillow's RGB and luma
        luma = Image.fromarray(want).convert("L")
        assert decode(data)[3].tobytes() == luma.tobytes(), name
        assert row_stats("ok", data)[4:] == pytest.approx(
            image_stats(want, np.asarray(luma), luma.histogram()), rel=1e-9), name
    assert reductions == {1, 2, 4, 8}, reductions


def test_what_decode_jpeg_does_not_take_is_left_to_pillow():
    photo = _photos()["china"].crop((0, 0, 300, 240))
    good = _encode(photo, quality=90)
    cmyk = _encode(photo.convert("CMYK"), quality=90)
    png = io.BytesIO()
    photo.save(png, "PNG")
    # bytes between the scan and its end marker: libjpeg warns (Pillow decodes it all the same)
    warned = good[:-2] + b"junk" + good[-2:]
    cases = {"cmyk": cmyk, "png": png.getvalue(), "cut": good[:len(good) // 2],
             "warned": warned, "garbage": b"\xff\xd8\xff" + bytes(500),
             # a header claiming 12000 x 12000 pixels in a few hundred bytes: open_image refuses
             "claims": good[:good.index(b"\xff\xc0") + 5] + (12000).to_bytes(2, "big") * 2
             + good[good.index(b"\xff\xc0") + 9:][:400]}
    for name, data in cases.items():
        assert decode_jpeg(data, 256) is None, name
        # decode() then gives exactly what Pillow gives: the picture, or Pillow's error
        try:
            want = _pillow(data, 256)
        except Exception as exc:  # noqa: BLE001 - Pillow's errors
            with pytest.raises(type(exc)):
                decode(data)
            continue
        got = decode(data)[2]
        assert got.shape == want.shape and np.array_equal(got, want), name
    assert decode_jpeg(good, 256) is not None


def _plain_stats(rgb: np.ndarray, luma: np.ndarray) -> dict:
    """The statistics whose computation changed, by their two-dimensional definitions, in
    float64 (the module docstring of vclust.numerics.pixels)."""
    y = luma.astype(np.float64)
    lap = (4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:])
    c = rgb[::2, ::2, :3].astype(np.float64)
    rg, yb = c[..., 0] - c[..., 1], (c[..., 0] + c[..., 1]) / 2 - c[..., 2]
    colour = math.sqrt(rg.var() + yb.var()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    out = {"sharpness": lap.var(), "colourfulness": colour,
           "clipped": np.count_nonzero(rgb[..., :3] == 255) / (3 * luma.size)}
    if min(luma.shape) >= 16:
        h8, w8 = luma.shape[0] // 8 * 8, luma.shape[1] // 8 * 8
        out["structure"] = y[:h8, :w8].reshape(h8 // 8, 8, w8 // 8, 8).mean(axis=(1, 3)).std()
        dx, dy = np.diff(y, axis=1), np.diff(y, axis=0)
        out["fine"] = (dx ** 2).mean() + (dy ** 2).mean() - 1 / 3
    return out


def test_statistics_equal_their_plain_definitions_rgb_and_rgbx():
    rng = np.random.default_rng(3)
    pictures = [np.asarray(p.crop((0, 0, 257, 211))) for p in _photos().values()]
    pictures += [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                 for h, w in ((3, 3), (3, 40), (17, 5), (16, 16), (33, 31))]
    pictures.append(np.full((40, 50, 3), 255, np.uint8))  # white: every value clipped
    pictures.append(np.full((40, 50, 3), 77, np.uint8))  # grey: no colour, no edges
    for rgb in pictures:
        luma_img = Image.fromarray(rgb).convert("L")
        luma, hist = np.asarray(luma_img), luma_img.histogram()
        rgbx = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
        got = dict(zip(STAT_COLUMNS, image_stats(rgb, luma, hist)))
        assert image_stats(rgbx, luma, hist) == pytest.approx(tuple(got.values()), rel=1e-12,
                                                             nan_ok=True)
        want = _plain_stats(rgb, luma)
        for key in ("sharpness", "colourfulness", "clipped"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), (rgb.shape, key)
        if min(luma.shape) >= 16:
            assert got["structure"] == pytest.approx(want["structure"], rel=1e-6, abs=1e-9)
            detail = math.log(max(want["fine"], 1e-3) / max(got["edges"], 1e-6))
            assert got["detail"] == pytest.approx(detail, rel=1e-5, abs=1e-6), rgb.shape


def test_luma_and_histogram_are_pillows_for_every_colour():
    """vclust.numerics.pixels.luma_histogram (a compiled kernel) against Pillow's
    ``convert("L")`` and ``histogram()`` on a picture holding each of the 2^24 colours once,
    RGB and RGBX."""
    from vclust.numerics.pixels import luma_histogram

    v = np.arange(1 << 24, dtype=np.uint32)
    rgb = np.stack([v & 255, (v >> 8) & 255, v >> 16], axis=1).astype(np.uint8)
    rgb = rgb.reshape(4096, 4096, 3)
    want = Image.fromarray(rgb).convert("L")
    for pixels in (rgb, np.concatenate([rgb, np.full((4096, 4096, 1), 255, np.uint8)], 2)):
        luma, hist = luma_histogram(pixels)
        assert luma.tobytes() == want.tobytes()
        assert hist.tolist() == want.histogram()


def test_the_warm_up_compiles_what_vclust_pixels_and_the_ward_tree_run(tmp_path):
    """The install's warm-up of vclust's own kernels (vclust.warmup.precompile_own) fills
    numba's disk cache with them for the argument types of every path `vclust pixels` takes (a
    JPEG decoded by libjpeg-turbo, a PNG by Pillow, a Pillow luma given) and of the Ward tree's
    merge loop (vclust.numerics.ward, float32 rows given): a later process compiles
    nothing."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    run = dict(env=env, capture_output=True, text=True, timeout=300)
    out = subprocess.run([sys.executable, "-c", "from vclust.warmup import precompile_own; "
                          "precompile_own()"], **run)
    assert out.returncode == 0, out.stderr
    photo = _photos()["china"].crop((0, 0, 257, 211))
    png = io.BytesIO()
    photo.save(png, "PNG")
    (tmp_path / "a.jpg").write_bytes(_encode(photo, quality=90))
    (tmp_path / "a.png").write_bytes(png.getvalue())
    code = f"""
import json, numpy as np
from PIL import Image
from vclust.jobs.pixels import row_stats
from vclust.numerics import pixel_kernels as K
from vclust.numerics.pixels import image_stats
rows = [row_stats("ok", open(r"{tmp_path}/a." + ext, "rb").read()) for ext in ("jpg", "png")]
rgb = np.asarray(Image.open(r"{tmp_path}/a.png").convert("RGB"))
luma = Image.fromarray(rgb).convert("L")
image_stats(rgb, np.asarray(luma), luma.histogram())
from sklearn.neighbors import kneighbors_graph
from vclust.numerics import ward
x = np.random.default_rng(7).normal(size=(300, 20)).astype(np.float32)
ward.ward_children(x, kneighbors_graph(x, 10, include_self=False))
print(json.dumps([[r[0] for r in rows]] + [[sum(f.stats.cache_hits.values()),
                  sum(f.stats.cache_misses.values())]
                  for f in (K.luma_histogram, K.stats, ward._merge)]))
"""
    out = subprocess.run([sys.executable, "-c", code], **run)
    assert out.returncode == 0, out.stderr
    readable, *kernels = json.loads(out.stdout)
    assert readable == [1, 1]
    assert all(hits >= 1 for hits, _ in kernels)  # loaded from the cache ...
    assert all(misses == 0 for _, misses in kernels)  # ... and nothing compiled

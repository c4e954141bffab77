"""Images read in place (vclust.images) and the synthetic case's pictures (vclust.synth_images)."""

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vclust.errors import InputError
from vclust.storage.images import ImageSource, montage, thumb_name, write_thumbnails

ID = "veriwild/1/00001/000001.jpg"


def jpeg(colour=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def case_zip(tmp_path):
    """A zip laid out as deliveries are: one extra leading folder, a folder entry, a near-miss
    name, a deflated and a bzip2 entry, a truncated and a garbage JPEG."""
    good = jpeg()
    path = tmp_path / "veriwild.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("VeRi-Wild/", b"")
        z.writestr("VeRi-Wild/" + ID, good)
        z.writestr("xveriwild/2/00002/000002.jpg", jpeg((0, 0, 255)))  # near miss
        z.writestr("VeRi-Wild/veriwild/3/00003/000003.jpg", jpeg((0, 255, 0)),
                   compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("VeRi-Wild/veriwild/4/00004/000004.jpg", jpeg((255, 255, 0)),
                   compress_type=zipfile.ZIP_BZIP2)
        z.writestr("VeRi-Wild/veriwild/5/00005/000005.jpg", good[: len(good) // 2])  # truncated
        z.writestr("VeRi-Wild/veriwild/6/00006/000006.jpg", os.urandom(3000))  # garbage
    return path, good


def test_ids_match_entries_as_path_suffixes(case_zip):
    path, good = case_zip
    src = ImageSource(path)
    assert src.kind == "zip" and len(src) == 6  # the folder entry is not an image
    assert src.locate(ID) == "VeRi-Wild/" + ID
    assert src.read(ID) == good
    assert src.read("VeRi-Wild/" + ID) == good  # the whole name matches too
    assert src.read("000001.jpg") == good  # a bare file name, in any folder
    # a suffix that does not start on a '/' boundary is not a match
    assert src.read("veriwild/2/00002/000002.jpg") is None
    assert src.locate("Wild/" + ID) is None
    assert src.read("../" + ID) is None
    # deflated and bzip2 entries read back the same as written
    assert Image.open(io.BytesIO(src.read("veriwild/3/00003/000003.jpg"))).getpixel((5, 5))[1] > 200
    assert Image.open(io.BytesIO(src.read("veriwild/4/00004/000004.jpg"))).getpixel((5, 5))[2] < 80


def test_windows_separators_in_ids(case_zip):
    path, good = case_zip
    src = ImageSource(path)
    assert src.read(ID.replace("/", "\\")) == good
    assert src.read(".\\" + ID.replace("/", "\\")) == good
    assert thumb_name(ID.replace("/", "\\")) == thumb_name(ID)


def test_the_shortest_of_several_matches_wins(tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("b/c/x/1.jpg", b"long")
        z.writestr("a/x/1.jpg", b"short")
        z.writestr("x/1.jpg.bak", b"other")
    assert ImageSource(path).read("x/1.jpg") == b"short"
    assert ImageSource(path).read("c/x/1.jpg") == b"long"


def test_missing_and_corrupt_images_are_none_and_counted(case_zip, tmp_path):
    path, _ = case_zip
    src = ImageSource(path)
    assert src.thumbnail("veriwild/9/00009/000009.jpg") is None
    assert src.thumbnail("veriwild/5/00005/000005.jpg") is None  # truncated: no exception
    assert src.thumbnail("veriwild/6/00006/000006.jpg") is None  # garbage
    thumb = src.thumbnail(ID, size=(32, 32))
    assert thumb.size == (32, 24) and thumb.mode == "RGB"  # aspect kept
    ids = [ID, "veriwild/9/00009/000009.jpg", "veriwild/5/00005/000005.jpg",
           "veriwild/6/00006/000006.jpg", "veriwild\\3\\00003\\000003.jpg"]
    res = write_thumbnails(src, ids, tmp_path / "thumbs", size=(32, 24))
    assert (res["missing"], res["unreadable"], res["written"]) == (1, 2, 2)
    assert [res["thumbs"][i] is not None for i in ids] == [True, False, False, False, True]
    assert sorted(os.listdir(tmp_path / "thumbs")) == sorted(
        [res["thumbs"][ids[0]], res["thumbs"][ids[4]]])


def test_a_corrupt_zip_entry_reads_as_unreadable(tmp_path):
    good = jpeg()
    path = tmp_path / "crc.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(ID, good)
        z.writestr("veriwild/1/00001/000002.jpg", good)
    raw = bytearray(path.read_bytes())
    at = raw.index(good)  # the first entry's data: flip bytes in the middle (CRC no longer matches)
    raw[at + 100:at + 110] = bytes(10)
    path.write_bytes(bytes(raw))
    src = ImageSource(path)
    assert src.read(ID) is None
    assert src.read("veriwild/1/00001/000002.jpg") == good
    res = write_thumbnails(src, [ID], tmp_path / "t")
    assert (res["unreadable"], res["missing"], res["thumbs"][ID]) == (1, 0, None)


@pytest.mark.parametrize("content", [b"paths\nveriwild\\1\\x.jpg\n", b""])
def test_a_file_that_is_not_a_zip_is_refused_in_one_line(tmp_path, content):
    bad = tmp_path / "x.zip"
    bad.write_bytes(content)
    with pytest.raises(InputError) as err:
        ImageSource(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "not a zip file or a folder" in msg


def test_a_truncated_zip_and_a_missing_path_are_refused(tmp_path, case_zip):
    path, _ = case_zip
    cut = tmp_path / "cut.zip"
    cut.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(InputError, match="not a zip file or a folder"):
        ImageSource(cut)
    with pytest.raises(InputError, match="no such file or folder"):
        ImageSource(tmp_path / "nowhere.zip")


def test_folder_source(tmp_path):
    good = jpeg()
    root = tmp_path / "images"
    (root / "VeRi-Wild" / "veriwild" / "1" / "00001").mkdir(parents=True)
    (root / "VeRi-Wild" / ID).write_bytes(good)
    (root / "VeRi-Wild" / "veriwild" / "1" / "00001" / "bad.jpg").write_bytes(b"not a jpeg")
    assert ImageSource(root).read(ID) == good  # below one extra leading folder
    assert ImageSource(root / "VeRi-Wild").read(ID.replace("/", "\\")) == good
    assert ImageSource(root / "VeRi-Wild" / "veriwild").read(ID) == good  # the id's own folder
    src = ImageSource(root)
    assert src.kind == "folder"
    assert src.read("veriwild/1/00001/000404.jpg") is None
    assert src.read("../images/VeRi-Wild/" + ID) is None
    assert src.thumbnail("veriwild/1/00001/bad.jpg") is None
    assert src.thumbnail(ID).size == (64, 48)  # never enlarged


def test_thumbnails_are_written_once(case_zip, tmp_path):
    src = ImageSource(case_zip[0])
    ids = [ID, "veriwild/3/00003/000003.jpg", ID]  # a repeat is written once
    out = tmp_path / "thumbs"
    first = write_thumbnails(src, ids, out, size=(40, 30))
    assert (first["written"], first["existing"]) == (2, 0)
    names = sorted(os.listdir(out))
    assert len(names) == 2 and all(n.endswith(".jpg") for n in names)
    mtimes = {n: os.stat(out / n).st_mtime_ns for n in names}
    with Image.open(out / first["thumbs"][ID]) as im:
        assert im.format == "JPEG" and im.size == (40, 30)
    again = write_thumbnails(src, ids, out, size=(40, 30))
    assert (again["written"], again["existing"]) == (0, 2)
    assert again["thumbs"] == first["thumbs"]
    assert {n: os.stat(out / n).st_mtime_ns for n in names} == mtimes
    other = write_thumbnails(src, [ID], out, size=(20, 15))  # another size: another file
    assert other["written"] == 1 and other["thumbs"][ID] != first["thumbs"][ID]


def test_no_source_means_no_pictures(tmp_path):
    res = write_thumbnails(None, [ID, "b.jpg"], tmp_path / "thumbs")
    assert res["thumbs"] == {ID: None, "b.jpg": None} and res["written"] == 0
    assert not (tmp_path / "thumbs").exists()


def test_montage(case_zip):
    src = ImageSource(case_zip[0])
    red = src.thumbnail(ID)
    tiles = [red, None, red, red, None, red, red]
    sheet = montage(tiles, cols=3, size=(40, 30), gap=2)
    assert sheet.size == (3 * 42 + 2, 3 * 32 + 2) and sheet.mode == "RGB"
    a = np.asarray(sheet).astype(int)
    def tile(i):
        y, x = 2 + (i // 3) * 32, 2 + (i % 3) * 42
        return a[y:y + 30, x:x + 40]

    assert tile(0)[15, 20, 0] > 150 and tile(0)[15, 20, 2] < 80  # the red image, fitted
    grey = tile(1)[5, 20]
    assert abs(grey[0] - grey[2]) < 5 and 120 < grey[0] < 200  # the grey placeholder
    assert montage([], cols=4, size=(10, 10)).size == (4 * 12 + 2, 12 + 2)


def test_large_jpegs_are_decoded_reduced(tmp_path):
    src_dir = tmp_path / "big"
    src_dir.mkdir()
    (src_dir / "a.jpg").write_bytes(jpeg((10, 200, 10), size=(1600, 1200)))
    im = ImageSource(src_dir).thumbnail("a.jpg", size=(128, 96))
    assert im.size == (128, 96) and im.getpixel((64, 48))[1] > 150


def test_source_survives_pickling(case_zip):
    src = ImageSource(case_zip[0])
    copy = pickle.loads(pickle.dumps(src))
    assert copy.read(ID) == case_zip[1]
    src.close()
    assert src.read(ID) == case_zip[1]  # reopened on use


def test_zip64_archives_with_many_entries(tmp_path):
    """More than 65,535 entries: the zip64 end records, as in the 416k-image delivery."""
    from vclust.synth.images import _StoredZip

    def name(i):
        return f"veriwild/{i % 150}/{i // 8:05d}/{i:06d}.jpg"

    path = tmp_path / "many.zip"
    w = _StoredZip(path)
    n = 70_000
    for i in range(n):
        data = f"{i}".encode()
        w.add("root/" + name(i), data, zipfile.crc32(data))
    w.close()
    with zipfile.ZipFile(path) as z:
        assert len(z.namelist()) == n and z.read("root/" + name(69_997)) == b"69997"
    src = ImageSource(path)
    assert len(src) == n
    assert src.read(name(149).replace("/", "\\")) == b"149"
    assert src.read(name(69_997)) == b"69997"
    assert src.read(name(70_000)) is None


# --------------------------------------------------------------------------- synthetic pictures


@pytest.fixture(scope="module")
def synth_case(tmp_path_factory):
    from vclust.synth import generate_case, read_truth

    root = tmp_path_factory.mktemp("synth_images")
    # a large outlier share so that 300 rows hold glare, empty and junk frames
    summary = generate_case(root, n_rows=300, seed=0, outlier_share=0.5)
    truth = read_truth(root)
    z = zipfile.ZipFile(summary["images"])

    def pixels(path):
        return np.asarray(Image.open(io.BytesIO(z.read(path))).convert("RGB")).astype(int)

    yield root, summary, truth, z, pixels
    z.close()


def test_synthetic_zip_has_one_image_per_row(synth_case):
    root, summary, truth, z, _ = synth_case
    assert summary["images"] == str(root / "veriwild.zip")
    assert z.testzip() is None
    ids = pd.read_csv(root / "images_paths.csv")["paths"].str.replace("\\", "/", regex=False)
    assert z.namelist() == list(ids) == list(truth["path"])
    assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    with Image.open(io.BytesIO(z.read(ids[0]))) as im:
        assert im.format == "JPEG" and im.size == (128, 96) and im.mode == "RGB"
    assert set(truth["outlier_kind"]) == {"", "junk", "glare", "empty"}
    src = ImageSource(summary["images"])  # read back through the ids as delivered
    raw = pd.read_csv(root / "images_paths.csv")["paths"]
    assert "\\" in raw[0] and src.read(raw[0]) == z.read(ids[0])


def test_synthetic_zip_is_deterministic_and_optional(synth_case, tmp_path):
    from vclust.synth import generate_case

    root = synth_case[0]
    again = generate_case(tmp_path / "a", n_rows=300, seed=0, outlier_share=0.5)
    assert Path(again["images"]).read_bytes() == (root / "veriwild.zip").read_bytes()
    assert not list((tmp_path / "a").glob("*.partial"))
    none = generate_case(tmp_path / "b", n_rows=300, seed=0, outlier_share=0.5, images=False)
    assert "images" not in none and not (tmp_path / "b" / "veriwild.zip").exists()
    for f in ("efficientnet-b7", "osnet"):  # the descriptors do not depend on the pictures
        assert ((tmp_path / "b" / "descriptors" / f"{f}.pickle").read_bytes()
                == (root / "descriptors" / f"{f}.pickle").read_bytes())


def _of(truth, **where):
    m = np.ones(len(truth), bool)
    for k, v in where.items():
        m &= truth[k].isin(v if isinstance(v, list) else [v]).to_numpy()
    return truth["path"][m].tolist()


def test_glare_frames_are_blown_out(synth_case):
    _, _, truth, _, pixels = synth_case
    glare = [pixels(p).mean() for p in _of(truth, outlier_kind="glare")]
    inliers = [pixels(p).mean() for p in _of(truth, outlier_kind="")]
    assert len(glare) > 5 and min(glare) > 225
    assert min(glare) > max(inliers) + 60


def test_empty_frames_show_the_road_alone(synth_case):
    _, _, truth, _, pixels = synth_case
    empty = [pixels(p) for p in _of(truth, outlier_kind="empty")]
    inliers = [pixels(p) for p in _of(truth, outlier_kind="")]
    assert len(empty) > 5

    def coloured(a):  # share of strongly coloured pixels
        return ((a.max(2) - a.min(2)) > 60).mean()

    assert max(coloured(a) for a in empty) == 0
    assert np.median([coloured(a) for a in inliers]) > 0.005
    assert np.median([a.mean(2).std() for a in empty]) < np.median([a.mean(2).std()
                                                                     for a in inliers]) - 5


def test_paint_follows_the_colour(synth_case):
    _, _, truth, _, pixels = synth_case

    def vehicle_rgb(path):  # mean colour of the strongly coloured pixels
        a = pixels(path)
        m = (a.max(2) - a.min(2)) > 60
        assert m.sum() > 200, path
        return a[m].mean(0)

    red = [vehicle_rgb(p) for p in _of(truth, outlier_kind="", colour="red")]
    blue = [vehicle_rgb(p) for p in _of(truth, outlier_kind="", colour="blue")]
    assert len(red) >= 3 and len(blue) >= 3
    assert all(r[0] > r[2] + 60 for r in red)
    assert all(b[2] > b[0] + 60 for b in blue)


def test_rear_views_show_red_tail_lights(synth_case):
    _, _, truth, _, pixels = synth_case

    def tail_red(path):
        a = pixels(path)
        return int(((a[..., 0] > 150) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum())

    plain = ["white", "black", "grey", "silver", "blue", "green"]  # no red in the paint
    front = [tail_red(p) for p in _of(truth, outlier_kind="", colour=plain, view="front")]
    rear = [tail_red(p) for p in _of(truth, outlier_kind="", colour=plain, view="rear")]
    assert len(front) > 5 and len(rear) > 5
    assert max(front) <= 2 and min(rear) >= 15


def test_body_types_have_distinct_silhouettes():
    from vclust.synth.images import render

    def extent(body):  # width and height of what differs from the same scene left empty
        a = np.asarray(render(body, "front", "red", jitter=1)).astype(int)
        e = np.asarray(render(body, "front", "red", "empty", jitter=1)).astype(int)
        ys, xs = np.nonzero(np.abs(a - e).max(2) > 60)
        return xs.max() - xs.min(), ys.max() - ys.min()

    w = {b: extent(b) for b in ["sedan", "hatchback", "suv", "van", "pickup", "truck", "bus"]}
    assert w["bus"][0] > w["sedan"][0] > w["hatchback"][0]  # long ... short
    assert w["truck"][0] > w["van"][0] and w["pickup"][0] > w["suv"][0]
    assert w["bus"][1] > w["van"][1] > w["suv"][1] > w["sedan"][1]  # tall ... low
    assert w["truck"][1] > w["pickup"][1]


def test_an_unfinished_zip_is_not_left_behind(tmp_path):
    from vclust.synth.images import CaseImageWriter

    attrs = {"body_type": np.array(["bus", "sedan"]), "view": np.array(["front", "rear"]),
             "colour": np.array(["red", "blue"]), "vehicle_id": np.array([1, 2]),
             "outlier_kind": np.array(["", "glare"], dtype=object)}
    w = CaseImageWriter(tmp_path / "veriwild.zip", seed=0)
    w.add_block(["veriwild/1/00001/000001.jpg", "veriwild/2/00002/000002.jpg"], attrs, 0)
    assert (tmp_path / "veriwild.zip.partial").exists() and not (tmp_path / "veriwild.zip").exists()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    w = CaseImageWriter(tmp_path / "veriwild.zip", seed=0)
    w.add_block(["veriwild/1/00001/000001.jpg", "veriwild/2/00002/000002.jpg"], attrs, 0)
    assert w.close() == tmp_path / "veriwild.zip"
    assert [p.name for p in tmp_path.iterdir()] == ["veriwild.zip"]
    src = ImageSource(tmp_path / "veriwild.zip")
    assert src.thumbnail("veriwild\\2\\00002\\000002.jpg").size == (128, 96)

"""Pixel evidence: real photographs degraded in known ways, in a real zip, measured into a real
store on a real LocalCluster; the reasons they get; a SIGKILLed `vclust pixels` (a real
subprocess) leaving the store as it was; the synthetic zip's planted frames, labelled."""

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from vclust.jobs import steps as jobs
from vclust.errors import InputError
from vclust.storage.images import ImageSource
from vclust.numerics.pixels import (COLUMNS, PIXEL_REASONS, PROBLEMS, fit_thresholds,
                                    pixel_reasons)
from vclust.jobs.params import IngestParams, LabelParams, PixelsParams
from vclust.jobs.pixels import compute_pixels, read_stats, stats_for_ids

VCLUST = [sys.executable, "-m", "vclust"]


def _sample_photos() -> dict[str, Image.Image]:
    """The photographs that ship inside scikit-learn (china, flower) and scikit-image (rocket.jpg
    and the colour photographs of its data folder)."""
    import sklearn.datasets
    import skimage

    sk = Path(sklearn.datasets.__file__).parent / "images"
    si = Path(skimage.__file__).parent / "data"
    files = [sk / "china.jpg", sk / "flower.jpg", si / "rocket.jpg", si / "astronaut.png",
             si / "chelsea.png", si / "coffee.png", si / "motorcycle_left.png"]
    return {f.stem: Image.open(f).convert("RGB") for f in files}


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


#: the degradations planted, and the reason each must get (None: not flagged)
PLANTED = {
    "degraded/china_overexposed.jpg": "overexposed",
    "degraded/flower_darkened.jpg": "underexposed",
    "degraded/chelsea_blurred.jpg": "blurry",
    "degraded/coffee_blurred.jpg": "blurry",
    "degraded/rocket_truncated.jpg": "unreadable",
    "degraded/flat_frame.jpg": "uniform",
    "degraded/not_an_image.jpg": "unreadable",
    "degraded/missing.jpg": "unreadable",  # listed among the ids, absent from the zip
    "intact/china.jpg": None,
    "intact/motorcycle_left.jpg": None,
}


@pytest.fixture(scope="module")
def photo_zip(tmp_path_factory):
    """A zip of intact photographs (whole, and crops of VeRi-Wild's size, 256 x 200, as a
    collection would hold) and of degraded ones; returns (zip path, ids)."""
    root = tmp_path_factory.mktemp("photos")
    photos = _sample_photos()
    entries = {}
    for name, img in photos.items():
        entries[f"intact/{name}.jpg"] = _jpeg(img)
        w, h = img.size
        rng = np.random.default_rng(len(name))
        for j in range(5):
            x, y = int(rng.integers(0, w - 256)), int(rng.integers(0, h - 200))
            entries[f"intact/{name}_crop{j}.jpg"] = _jpeg(img.crop((x, y, x + 256, y + 200)))
    entries["degraded/china_overexposed.jpg"] = _jpeg(
        ImageEnhance.Brightness(photos["china"]).enhance(2.5))
    entries["degraded/flower_darkened.jpg"] = _jpeg(
        ImageEnhance.Brightness(photos["flower"]).enhance(0.2))
    entries["degraded/chelsea_blurred.jpg"] = _jpeg(
        photos["chelsea"].filter(ImageFilter.GaussianBlur(4)))
    entries["degraded/coffee_blurred.jpg"] = _jpeg(
        photos["coffee"].filter(ImageFilter.GaussianBlur(4)))
    whole = _jpeg(photos["rocket"])
    entries["degraded/rocket_truncated.jpg"] = whole[: len(whole) // 2]
    entries["degraded/flat_frame.jpg"] = _jpeg(Image.new("RGB", (256, 200), (96, 98, 95)))
    entries["degraded/not_an_image.jpg"] = b"this is not a JPEG" * 50
    path = root / "photos.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    ids = sorted(entries) + ["degraded/missing.jpg"]
    return path, ids


def _reasons_of(stats, ids):
    bounds = fit_thresholds({k: v[stats["readable"] == 1] if k != "readable" else
                             v[stats["readable"] == 1] for k, v in stats.items()})
    code = pixel_reasons(stats, bounds)
    names = np.asarray(("",) + PIXEL_REASONS, dtype=object)[code]
    return dict(zip(ids, names)), bounds


def test_each_degradation_of_a_real_photograph_gets_its_reason(photo_zip):
    path, ids = photo_zip
    with ImageSource(path) as source:
        stats = stats_for_ids(source, ids)
    reasons, bounds = _reasons_of(stats, ids)
    for image_id, want in PLANTED.items():
        assert reasons[image_id] == (want or ""), (image_id, reasons[image_id], bounds)
    # no intact photograph, whole or cropped, is flagged
    flagged_intact = [i for i in ids if i.startswith("intact/") and reasons[i]]
    assert not flagged_intact, flagged_intact
    # why the unreadable ones are unreadable
    problem = dict(zip(ids, (PROBLEMS[p] for p in stats["problem"])))
    assert problem["degraded/missing.jpg"] == "missing"
    assert problem["degraded/rocket_truncated.jpg"] == "undecodable"
    assert problem["degraded/not_an_image.jpg"] == "undecodable"
    assert problem["intact/china.jpg"] == ""
    # sizes are the images' own (china.jpg is 640 x 427), though decoded at a reduced scale
    i = ids.index("intact/china.jpg")
    assert (stats["width"][i], stats["height"][i]) == (640, 427)
    assert stats["colourfulness"][ids.index("degraded/flat_frame.jpg")] < 3


def test_thresholds_can_be_fixed_by_the_caller(photo_zip):
    path, ids = photo_zip
    with ImageSource(path) as source:
        stats = stats_for_ids(source, ids)
    ok = stats["readable"] == 1
    fitted = fit_thresholds({k: v[ok] for k, v in stats.items()})
    # a bound past every darkened picture: the darkened flower is no longer underexposed
    fixed = fit_thresholds({k: v[ok] for k, v in stats.items()}, overrides={"underexposed": 5})
    assert fixed["underexposed"] == 5 and fitted["underexposed"] > 5
    code = dict(zip(ids, pixel_reasons(stats, fixed)))
    assert code["degraded/flower_darkened.jpg"] == 0
    with pytest.raises(ValueError, match="no pixel threshold"):
        fit_thresholds({k: v[ok] for k, v in stats.items()}, overrides={"glare": 1})


def _ingest_ids(store, ids, batch, tmp, seed=0, dims=16):
    """A batch of random descriptors whose rows carry ``ids``."""
    rng = np.random.default_rng(seed)
    npy = tmp / f"{batch}.npy"
    np.save(npy, rng.normal(size=(len(ids), dims)).astype(np.float32))
    csv = tmp / f"{batch}.csv"
    pd.DataFrame({"paths": ids}).to_csv(csv, index=False)
    return jobs.ingest(store, IngestParams(sources=[str(npy)], name="desc", ids=str(csv),
                                           batch=batch, chunk_rows=16))


def _tree_digest(path: Path) -> dict:
    """Every file under ``path`` with the sha256 of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_pixels_stored_by_row_per_batch_on_the_cluster_and_rerun_changes_nothing(
        photo_zip, tmp_path, local_client):
    path, ids = photo_zip
    store = tmp_path / "store"
    half = len(ids) // 2
    _ingest_ids(store, ids[:half], "b0", tmp_path)
    _ingest_ids(store, ids[half:], "b1", tmp_path, seed=1)
    out = compute_pixels(store, path, batches=["b1"], block_rows=7)  # several tasks
    assert [b["status"] for b in out["batches"]] == ["written"]
    got = read_stats(store, 0, len(ids))
    assert not got["have"][:half].any() and got["have"][half:].all()
    assert np.isnan(got["brightness"][:half]).all()
    with ImageSource(path) as source:
        want = stats_for_ids(source, ids[half:])
    for name in COLUMNS:
        np.testing.assert_array_equal(got[name][half:], want[name], err_msg=name)
    # the tasks ran on the workers
    assert local_client.run(lambda: __import__("vclust.jobs.pixels").jobs.pixels._SOURCES and 1 or 0)
    before = _tree_digest(store)
    again = compute_pixels(store, path, all_batches=True, block_rows=7)
    assert [b["status"] for b in again["batches"]] == ["written", "unchanged"]
    after = _tree_digest(store)
    assert {k: v for k, v in after.items() if "/b0/" not in k and k != "zarr.json"} == \
        {k: v for k, v in before.items() if k != "zarr.json"}
    third = compute_pixels(store, path, all_batches=True)
    assert [b["status"] for b in third["batches"]] == ["unchanged", "unchanged"]
    assert _tree_digest(store) == after
    assert not store.with_name("store.staging").exists()


def test_pixels_refuses_the_wrong_zip_and_an_unknown_batch(photo_zip, tmp_path, local_client):
    path, ids = photo_zip
    store = tmp_path / "store"
    _ingest_ids(store, ["elsewhere/a.jpg", "elsewhere/b.jpg"], "b0", tmp_path)
    before = _tree_digest(store)
    with pytest.raises(InputError, match="none of the 2 images"):
        compute_pixels(store, path, all_batches=True)
    with pytest.raises(InputError, match="no batch 'nope'"):
        compute_pixels(store, path, batches=["nope"])
    assert _tree_digest(store) == before
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    r = subprocess.run(VCLUST + ["pixels", str(store), "--images", str(bad), "--all"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a zip" in r.stderr, r.stderr


def test_sigkilled_pixels_leaves_the_store_as_it_was_and_a_rerun_completes_it(
        photo_zip, tmp_path, local_client):
    """A real `vclust pixels` subprocess (its own LocalCluster) killed with SIGKILL mid-run."""
    path, _ = photo_zip
    china = _jpeg(_sample_photos()["china"])
    big = tmp_path / "many.zip"
    n = 1500
    ids = [f"cam/{i:05d}.jpg" for i in range(n)]
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
        for i in ids:
            zf.writestr(i, china)
    store = tmp_path / "store"
    _ingest_ids(store, ids, "b0", tmp_path)
    before = _tree_digest(store)
    staging = tmp_path / "store.staging"
    proc = subprocess.Popen(VCLUST + ["pixels", str(store), "--images", str(big), "--all",
                                      "--block-rows", "100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # until a few blocks are written
            written = list(staging.glob("pixels-*/brightness/c/*")) if staging.exists() else []
            if len(written) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "vclust pixels finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert _tree_digest(store) == before  # not a byte of the store changed
    assert not read_stats(store, 0, n)["have"].any()
    # the rerun takes over the dead process's lock, removes its leftovers, completes the batch
    out = compute_pixels(store, big, all_batches=True, block_rows=500)
    assert out["batches"][0]["status"] == "written"
    got = read_stats(store, 0, n)
    assert got["have"].all() and (got["readable"] == 1).all()
    assert (got["width"] == 640).all() and np.ptp(got["brightness"]) == 0
    assert not staging.exists()


# --------------------------------------------------------------------------- the synthetic zip


def _degrade_zip(src: Path, dst: Path, plant: dict) -> None:
    """A copy of ``src`` with entries replaced (bytes) or left out (None)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename in plant:
                if plant[info.filename] is not None:
                    zout.writestr(info.filename, plant[info.filename])
            else:
                zout.writestr(info, zin.read(info))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, local_client):
    """A 1,200-row synthetic case whose zip gets degraded copies of some of its pictures, ingested,
    measured, fitted and labelled; a second batch of near-copies of rows of the first."""
    from vclust.jobs.params import FitParams
    from vclust.synth import generate_case

    root = tmp_path_factory.mktemp("synthpixels")
    summary = generate_case(root / "case", n_rows=1200, seed=3)
    truth = pd.read_csv(root / "case" / "truth.csv", keep_default_na=False)
    truth["path"] = truth["path"].str.replace("\\", "/", regex=False)
    inliers = truth.index[truth["outlier_kind"] == ""].to_numpy()
    rng = np.random.default_rng(0)
    pick = rng.choice(inliers, size=10, replace=False)
    zf = zipfile.ZipFile(summary["images"])
    pictures = {p: Image.open(io.BytesIO(zf.read(p))).convert("RGB") for p in truth["path"][pick]}
    names = list(pictures)
    plant = {
        names[0]: (_jpeg(ImageEnhance.Brightness(pictures[names[0]]).enhance(0.2)), "underexposed"),
        names[1]: (_jpeg(pictures[names[1]].filter(ImageFilter.GaussianBlur(2.5))), "blurry"),
        names[2]: (_jpeg(Image.new("RGB", (128, 96), (40, 40, 40))), "uniform"),
        names[3]: (_jpeg(pictures[names[3]])[:700], "unreadable"),
        names[4]: (None, "unreadable"),
        names[5]: (_jpeg(ImageEnhance.Brightness(pictures[names[5]]).enhance(2.8)), "overexposed"),
    }
    zip_path = root / "degraded.zip"
    _degrade_zip(Path(summary["images"]), zip_path, {k: v[0] for k, v in plant.items()})
    store, labels = root / "store", root / "labels"
    jobs.ingest(store, IngestParams(sources=[str(root / "case")], batch="b0"))
    jobs.pixels(store, PixelsParams(images=str(zip_path), all=True, block_rows=500))
    model = jobs.fit(store, FitParams(descriptor="vdc_color", k=6, seed=0))
    jobs.save_model(model, model_dir=root / "model")
    model = jobs.resolve_model(model=root / "model")
    # batch b1: near-copies of 20 inlier rows of b0 (the same vehicle a frame apart)
    from vclust.storage.store import Store

    twins = np.sort(rng.choice(inliers, size=20, replace=False))
    dims = Store.open(store).dims
    b1 = root / "b1"
    (b1 / "descriptors").mkdir(parents=True)
    import pickle

    for name, d in dims.items():
        arr = np.asarray(Store.open(store).array(name)[:])[twins]
        arr = arr + rng.normal(scale=1e-4, size=arr.shape).astype(np.float32) * np.abs(arr).mean()
        with open(b1 / "descriptors" / f"{name}.pickle", "wb") as fh:
            pickle.dump(arr.astype(np.float32), fh)
    twin_ids = [f"twins/{i:04d}.jpg" for i in range(len(twins))]
    pd.DataFrame({"paths": twin_ids}).to_csv(b1 / "images_paths.csv", index=False)
    jobs.ingest(store, IngestParams(sources=[str(b1)], batch="b1"))
    jobs.label(store, model, labels, all_batches=True, params=LabelParams())
    return {"root": root, "store": store, "labels": labels, "model": model, "truth": truth,
            "plant": plant, "zip": zip_path, "twins": twins, "twin_ids": twin_ids}


def test_synthetic_zip_planted_degradations_get_their_reason_in_the_labels(synthetic, figure):
    from vclust.storage.labels import read_labels

    frame = read_labels(synthetic["labels"]).set_index("image_id")
    for image_id, (_, want) in synthetic["plant"].items():
        row = frame.loc[image_id]
        assert row["is_outlier"] and row["outlier_reason"] == want, (image_id, row.to_dict())
    truth = synthetic["truth"].set_index("path")
    b0 = frame[frame["batch"] == "b0"]
    kind = truth.loc[b0.index, "outlier_kind"]
    planted = b0.index.isin(list(synthetic["plant"]))
    pixel = b0["outlier_reason"].isin(PIXEL_REASONS)
    intact = (kind == "").to_numpy() & ~planted
    assert not (pixel.to_numpy() & intact).any(), b0[pixel.to_numpy() & intact]
    glare = (kind == "glare").to_numpy()
    assert glare.sum() > 5
    over = (b0["outlier_reason"] == "overexposed").to_numpy()
    assert over[glare].mean() >= 0.9 and b0["is_outlier"].to_numpy()[glare].all()
    figure(f"pixels, synthetic zip: {over[glare].mean():.0%} of {glare.sum()} glare frames "
           f"overexposed; 6/6 planted degradations with their reason; 0 of {intact.sum()} "
           "intact pictures flagged by a pixel reason")
    # b1 has no pixel statistics: its rows keep the descriptors' reasons only
    b1 = frame[frame["batch"] == "b1"]
    assert not b1["outlier_reason"].isin(PIXEL_REASONS).any()
    # a pixel reason is never hidden by a descriptor reason: every row one fires on carries it,
    # descriptor outliers (the glare frames, the planted frames) included
    from vclust.storage.store import Store

    bounds = jobs.pixel_bounds(Store.open(synthetic["store"]))
    stats = read_stats(synthetic["store"], 0, len(frame))
    code = pixel_reasons(stats, bounds)
    by_row = frame.reset_index().set_index("row").sort_index()
    fired = np.flatnonzero(code)
    assert len(fired) >= 6 + glare.sum()
    want = np.asarray(PIXEL_REASONS, dtype=object)[code[fired] - 1]
    assert (by_row["outlier_reason"].to_numpy()[fired] == want).all()
    assert by_row["is_outlier"].to_numpy()[fired].all()


def test_pixel_reasons_can_be_turned_off_and_bounds_fixed(synthetic, tmp_path):
    from vclust.storage.labels import read_labels

    labels = tmp_path / "labels"
    jobs.label(synthetic["store"], synthetic["model"], labels, batches=["b0"],
               params=LabelParams(no_pixels=True))
    frame = read_labels(labels).set_index("image_id")
    assert not frame["outlier_reason"].isin(PIXEL_REASONS).any()
    jobs.label(synthetic["store"], synthetic["model"], labels, batches=["b0"],
               params=LabelParams(underexposed_brightness=1.0))
    frame = read_labels(labels).set_index("image_id")
    dark = [k for k, (_, want) in synthetic["plant"].items() if want == "underexposed"][0]
    assert frame.loc[dark, "outlier_reason"] != "underexposed"
    blurred = [k for k, (_, want) in synthetic["plant"].items() if want == "blurry"][0]
    assert frame.loc[blurred, "outlier_reason"] == "blurry"


def test_near_duplicates_group_each_copy_with_its_original(synthetic, figure):
    from vclust.report.duplicates import near_duplicates, summary, tight_distance
    from vclust.storage.labels import read_labels

    frame = read_labels(synthetic["labels"])
    tight = tight_distance(synthetic["model"])
    groups = near_duplicates(frame, tight)
    assert list(groups.columns) == ["group", "row", "image_id"]
    by_row = dict(zip(groups["row"], groups["group"]))
    twin_rows = frame.set_index("image_id").loc[synthetic["twin_ids"], "row"].to_numpy()
    found = sum(1 for orig, twin in zip(synthetic["twins"], twin_rows)
                if twin in by_row and by_row.get(int(orig)) == by_row[twin])
    assert found == len(twin_rows)
    s = summary(groups, len(frame), len(synthetic["model"].outliers.ref_rows_), tight, 0.1)
    assert s["rows"] >= 2 * len(twin_rows) and 0 < s["share"] < 0.2
    assert s["coverage"] == round(1200 / 1220, 6)  # the reference: the 1,200 fit rows (all of b0)
    figure(f"near-duplicates, synthetic: {found}/{len(twin_rows)} planted copies grouped with "
           f"their original; {s['groups']} groups, {s['rows']} rows ({s['share']:.1%} of the data)")
    # by hand: a chain is one group, a row whose twin is not labelled is no group
    hand = pd.DataFrame({"row": [0, 1, 2, 3, 4], "image_id": list("abcde"),
                         "nearest_row": [1, 2, 1, 99, 0], "nearest_distance": [.1, .1, .1, .1, 5]})
    g = near_duplicates(hand, 0.5)
    assert g["row"].tolist() == [0, 1, 2] and g["group"].tolist() == [0, 0, 0]


def test_report_has_pixel_galleries_and_near_duplicates(synthetic, tmp_path):
    from vclust.jobs.params import ReportParams
    from vclust.report import write_report

    out = tmp_path / "report"
    data = write_report(synthetic["store"], synthetic["model"], synthetic["labels"],
                        ReportParams(out=str(out), images=str(synthetic["zip"]), sample=500, pixel_images=40,
                                     map_method="pca", hover_images=0))
    px = {g["title"]: g for g in data["pixels"]["galleries"]}
    assert set(px) == {"broken", "bright", "dark", "blurry", "uniform"}
    shown = {i["id"] for g in px.values() for i in g["shown"]}
    assert set(synthetic["plant"]) <= shown
    assert {i["caption"] for i in px["broken"]["shown"]} == {"missing", "undecodable"}
    html = (out / "index.html").read_text()
    assert 'data-pixel="blurry"' in html and 'data-dup-group=' in html
    table = pd.read_csv(out / "near_duplicates.csv")
    assert list(table.columns) == ["group", "row", "image_id"]
    assert data["near_duplicates"]["rows"] == len(table) > 0
    # the descriptor galleries leave the pixel reasons to their own
    assert not {g["reason"] for g in data["outliers"]["galleries"]} & set(PIXEL_REASONS)


def test_pixels_job_step_measures_the_batch_just_ingested(photo_zip, tmp_path, local_client):
    """A job spec ingest -> pixels, run twice on the test's LocalCluster: the second run
    changes nothing; the shipped nightly job measures its batch after ingest."""
    from vclust.jobs.runner import load_spec, parse_spec, run_spec

    path, ids = photo_zip
    npy, csv = tmp_path / "night.npy", tmp_path / "night.csv"
    np.save(npy, np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32))
    pd.DataFrame({"paths": ids}).to_csv(csv, index=False)
    spec = {"name": "night", "steps": ["ingest", "pixels"], "store": str(tmp_path / "store"),
            "registry": str(tmp_path / "registry"), "labels": str(tmp_path / "labels"),
            "scheduler": local_client.scheduler.address,
            "ingest": {"sources": [str(npy)], "ids": str(csv), "batch": "n1"},
            "pixels": {"images": str(path), "block_rows": 16}}
    assert run_spec(parse_spec(dict(spec), "test"), say=lambda m: None) == 0
    stats = read_stats(tmp_path / "store", 0, len(ids))
    assert stats["have"].all() and stats["readable"].sum() == len(ids) - 3
    before = _tree_digest(tmp_path / "store")
    assert run_spec(parse_spec(dict(spec), "test"), say=lambda m: None) == 0
    assert _tree_digest(tmp_path / "store") == before
    nightly = load_spec(Path(__file__).resolve().parents[1] / "jobs" / "nightly_relabel.yaml")
    assert nightly.steps[:3] == ["ingest", "pixels", "label"]
    assert nightly.pixels.images.endswith("veriwild.zip") and nightly.pixels.batches is None

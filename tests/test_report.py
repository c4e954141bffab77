"""The analysts' report end to end: a synthetic case with its images, fitted and labelled on a
real LocalCluster; the report written, read as JSON, and opened in headless Chromium, driven
over the DevTools protocol (tests/cdp.py): points selected on the map, an image enlarged with its
nearest rows, a cluster named and names.csv downloaded. A kept model whose ids have gaps (as
`vclust compare` keeps them) reported without empty cards; the CSV joined to the delivery's
images_paths.csv as it is; the store opened with xarray."""

import json
import re
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from vclust.jobs import steps as jobs
from vclust.report import evidence
from vclust.errors import InputError
from vclust.storage.export import export_csv
from vclust.storage.labels import read_labels
from vclust.storage.names import read_names
from vclust.numerics.metrics import identity_consistency
from vclust.jobs.params import FitParams, IngestParams, PixelsParams, ReportParams
from vclust.synth import generate_case

VCLUST = [sys.executable, "-m", "vclust"]
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))  # tests/cdp.py


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, local_client):
    """A 3,000-row synthetic case with its veriwild.zip, ingested, fitted (k=6) and labelled."""
    root = tmp_path_factory.mktemp("report")
    summary = generate_case(root / "case", n_rows=3000, seed=5)
    store, labels, registry = root / "store", root / "labels", root / "registry"
    jobs.ingest(store, IngestParams(sources=[str(root / "case")], batch="b0"))
    model = jobs.fit(store, FitParams(descriptor="vdc_type+vdc_color", k=6, seed=0))
    jobs.save_model(model, registry=registry)
    model = jobs.resolve_model(registry=registry)
    jobs.label(store, model, labels, all_batches=True)
    return {"root": root, "store": store, "labels": labels, "registry": registry,
            "model": model, "zip": summary["images"]}


@pytest.fixture(scope="module")
def report(fitted):
    from vclust.report import write_report

    out = fitted["root"] / "report"
    params = ReportParams(out=str(out), images=fitted["zip"], sample=1500, seed=0,
                          hover_images=100, truth=str(fitted["root"] / "case" / "truth.csv"))
    data = write_report(fitted["store"], fitted["model"], fitted["labels"], params)
    return {"out": out, "data": data}


class _Page(HTMLParser):
    """What index.html shows: per card and group the image ids, per reason gallery the ids."""

    def __init__(self):
        super().__init__()
        self.cards, self.galleries, self.body = {}, {}, {}
        self._card = self._group = self._reason = None
        self.imgs = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "section":  # a new section: its figures belong to no card or reason gallery
            self._card = self._group = self._reason = None
        if tag == "article" and "data-cluster" in a:
            self._card, self._reason = int(a["data-cluster"]), None
            self.cards[self._card] = {}
        if tag == "div" and "data-group" in a and self._card is not None:
            self._group = a["data-group"]
            self.cards[self._card][self._group] = []
        if tag == "div" and "data-reason" in a:
            self._card, self._reason = None, a["data-reason"]
            self.galleries[self._reason] = []
        if tag == "figure" and "data-id" in a:
            if self._reason is not None:
                self.galleries[self._reason].append(a["data-id"])
            elif self._card is not None and self._group:
                self.cards[self._card][self._group].append(a["data-id"])
        if tag == "img" and "thumb" in a.get("class", ""):
            self.imgs.append(a["src"])


def _parse(text):
    p = _Page()
    p.feed(text)
    return p


def chromium_dom(index_html, tmp_path) -> str:
    """The DOM of ``index_html`` after its scripts ran, from headless Chromium (Debian's
    package, installed by `make install`)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is not installed (Debian package 'chromium'; "
                    "`make install` installs it): the report cannot be checked in a browser")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000",
           "--virtual-time-budget=30000", "--dump-dom", index_html.resolve().as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


# --------------------------------------------------------------------------- the report


def test_report_json_matches_the_page(report):
    out, data = report["out"], report["data"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(data))
    page = _parse((out / "index.html").read_text())
    assert sorted(page.cards) == [c["id"] for c in data["clusters"]] == list(range(6))
    assert data["model"]["k"] == 6
    for c in data["clusters"]:
        for group in ("nearest", "random", "border"):
            assert page.cards[c["id"]][group] == [i["id"] for i in c["groups"][group]], group
        assert len(c["groups"]["nearest"]) == 8 and len(c["groups"]["random"]) == 8
        assert all(b["other_cluster"] != c["id"] for b in c["groups"]["border"])
    assert {g["reason"]: [i["id"] for i in g["shown"]]
            for g in data["outliers"]["galleries"]} == page.galleries
    assert sum(c["size"] for c in data["clusters"]) == data["rows"] == 3000
    # every shown image has a thumbnail file (the synthetic zip holds every image)
    for src in page.imgs:
        assert (out / src).is_file(), src
    assert data["images"]["missing"] == 0 and data["images"]["unreadable"] == 0
    assert data["map"]["points"] == 1500 and data["map"]["method"] in ("umap", "tsne", "pca")
    for name in ("map.png", "clusters.md", "data.js", "assets/plotly.min.js",
                 "assets/report.js", "assets/report.css"):
        assert (out / name).is_file(), name
    assert len(list((out / "montages").glob("*.png"))) == 6


def _check_nearest_and_badges(data, frame):
    """Each card's nearest images: the unflagged rows nearest its centre; every image of the
    page carries its row's outlier reason (the badge)."""
    why = dict(zip(frame["image_id"], np.where(frame["is_outlier"], frame["outlier_reason"], "")))
    flagged_ids = set(frame.loc[frame["is_outlier"], "image_id"])
    for c in data["clusters"]:
        clean = frame[(frame["cluster"] == c["id"]) & ~frame["is_outlier"]]
        shown = [i["distance"] for i in c["groups"]["nearest"]]
        np.testing.assert_allclose(shown, clean["distance"].sort_values().iloc[:8].to_numpy(),
                                   atol=1e-3)
        assert not flagged_ids & {i["id"] for i in c["groups"]["nearest"]}
        assert not flagged_ids & {i["id"] for i in c["groups"]["border"]}  # junk frames apart
        for group in ("random", "border"):
            for i in c["groups"][group]:
                assert i["outlier"] == why[i["id"]], (group, i)


def test_report_nearest_images_are_nearest_and_outliers_worst_first(report, fitted):
    frame = read_labels(fitted["labels"], model=fitted["model"].model_id)
    data = report["data"]
    _check_nearest_and_badges(data, frame)
    # the demo's clusters drew flagged rows among their "nearest": this case does too, so the
    # check above has something to leave out
    near_all = {i for c in data["clusters"] for i in frame[frame["cluster"] == c["id"]]
                .nsmallest(8, "distance")["image_id"]}
    assert near_all & set(frame.loc[frame["is_outlier"], "image_id"])
    flagged = frame[frame["is_outlier"]]
    assert data["outliers"]["count"] == len(flagged)
    shown = [i for g in data["outliers"]["galleries"] for i in g["shown"]]
    for g in data["outliers"]["galleries"]:
        zs = [i["z"] for i in g["shown"]]
        assert zs == sorted(zs, reverse=True)
    # scores that rank: the stored scores of the shown rows round to 1.000 for many, their z not
    scores = [round(i["score"], 3) for i in shown]
    zs = [i["z"] for i in shown]
    assert scores.count(1.0) > 10 and len(set(zs)) > 0.9 * len(zs), (scores, zs)
    assert min(zs) >= data["outliers"]["threshold_z"] - 1e-6


def test_report_opens_in_headless_chromium(report, tmp_path):
    out, data = report["out"], report["data"]
    dom = chromium_dom(out / "index.html", tmp_path)
    body = dict(re.findall(r'(data-[a-z0-9-]+)="([^"]*)"', dom.split("<body", 1)[1].split(">", 1)[0]))
    assert body.get("data-ready") == "1", body
    assert body.get("data-errors") == "0", body.get("data-error-text")
    total = len(_parse((out / "index.html").read_text()).imgs)
    assert total > 0
    assert int(body["data-images-loaded"]) == total and body["data-images-failed"] == "0", body
    assert int(body["data-map-points"]) == data["map"]["points"], body
    assert body["data-map-points3d"] == "0", body  # drawn when its <details> is opened


def test_report_acted_on_in_the_browser(report, tmp_path):
    """Lasso on the map -> a gallery of the selected points' images; click a card's image ->
    enlarged with its nearest rows; a name typed on a card -> names.csv downloaded that
    --names reads; no script error. Screenshots kept in tmp_path (looked at by hand)."""
    from cdp import Browser

    out, data = report["out"], report["data"]
    with Browser(tmp_path) as b:
        b.open(out / "index.html")
        assert b.eval("document.body.dataset.errors") == "0", b.eval("document.body.dataset.errorText")
        # the 3D map, drawn when opened
        b.eval("document.querySelector('#map details').open = true")
        b.wait_for(f"document.body.dataset.mapPoints3d === '{data['map']['points']}'")
        # filters: one cluster, then the flagged rows of one reason, then all again
        m = b.eval("({c: window.VCLUST_MAP.cluster, o: window.VCLUST_MAP.outlier, "
                   "r: window.VCLUST_MAP.reason})")
        k = data["clusters"][1]["id"]
        b.eval(f"var s=document.getElementById('f-cluster'); s.value='{k}';"
               "s.dispatchEvent(new Event('change'))")
        assert int(b.wait_for("document.body.dataset.mapKept")) == m["c"].count(k)
        reason = data["outliers"]["galleries"][0]["reason"]
        b.eval("var s=document.getElementById('f-cluster'); s.value='';"
               "s.dispatchEvent(new Event('change'));"
               f"s=document.getElementById('f-reason'); s.value='{reason}';"
               "s.dispatchEvent(new Event('change'))")
        want = sum(1 for o, r in zip(m["o"], m["r"]) if o and r == reason)
        assert want > 0
        b.wait_for(f"document.body.dataset.mapKept === '{want}' && "
                   f"document.body.dataset.mapPoints === '{want}'")  # the trace drawn, not hidden
        b.eval("var s=document.getElementById('f-reason'); s.value='';"
               "s.dispatchEvent(new Event('change'))")
        b.wait_for(f"document.body.dataset.mapKept === '{len(m['c'])}' && "
                   f"document.body.dataset.mapPoints === '{len(m['c'])}'")
        b.eval("document.body.dataset.selected = ''")  # set again by the selection below
        # a box-shaped lasso over the middle of the 2D map
        r = b.rect("#map2d")
        cx, cy, h = r["x"] + r["w"] / 2, r["y"] + r["h"] / 2, min(r["w"], r["h"]) / 3
        b.drag([(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h),
                (cx - h, cy - h + 4)])
        n_sel = int(b.wait_for("document.body.dataset.selected"))
        assert n_sel > 0
        shown = b.eval("Array.from(document.querySelectorAll('#selection figure.t'))"
                       ".map(f => f.dataset.id)")
        assert 0 < len(shown) <= min(60, n_sel)
        # every image shown is a selected map point with a thumbnail that loaded
        ids = set(b.eval("window.VCLUST_MAP.id"))
        assert set(shown) <= ids
        b.wait_for("Array.from(document.querySelectorAll('#selection img'))"
                   ".every(i => i.complete && i.naturalWidth > 0)")
        b.screenshot(tmp_path / "selection.png")
        # a card's first "nearest" image, enlarged: its nearest rows, their images loaded
        first = data["clusters"][0]["groups"]["nearest"][0]["id"]
        b.click_on(f'#cluster-{data["clusters"][0]["id"]} [data-group="nearest"] figure.t')
        assert b.wait_for("document.body.dataset.lightbox") == first
        near = b.eval("Array.from(document.querySelectorAll('#lightbox .lb-near figure.t'))"
                      ".map(f => f.dataset.id)")
        assert len(near) == evidence.NEIGHBOURS and first not in near
        assert b.wait_for("Array.from(document.querySelectorAll('#lightbox img'))"
                          ".every(i => i.complete && i.naturalWidth > 0)")
        b.screenshot(tmp_path / "enlarged.png")
        b.eval("document.querySelector('#lightbox .lb-close').click()")
        # name cluster 0 on its card, download names.csv
        b.click_on('input.c-name[data-cluster="0"]')
        for ch in "white, suvs":
            b.call("Input.insertText", text=ch)
        b.click_on('input.c-note[data-cluster="0"]')
        b.call("Input.insertText", text='front "view"')
        assert b.eval("document.querySelector('td.t-name[data-cluster=\"0\"]').textContent") \
            == "white, suvs"
        b.click_on("#names-download")
        csv = b.downloads / "names.csv"
        b.wait_for("true") and _wait_file(csv)
        assert b.eval("document.body.dataset.errors") == "0", b.eval("document.body.dataset.errorText")
        assert not b.errors, b.errors
    assert read_names(csv, 6) == {0: ("white, suvs", 'front "view"')}


def _wait_file(path, timeout=30):
    import time

    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert path.exists(), f"{path} was not downloaded"


def test_clusters_read_from_the_synthetic_images(report):
    """The synthetic images follow the rows' attributes, and the clusters of this case follow
    colour and type: each card's known attributes name a dominant value."""
    for c in report["data"]["clusters"]:
        assert c["reading"] and "colour" in c["reading"], c


# --------------------------------------------------------------------------- bad input


def test_report_cli_refuses_a_zip_that_is_not_a_zip_and_unknown_names(fitted, tmp_path):
    fake = tmp_path / "veriwild.zip"
    fake.write_text("not a zip at all\n")
    names = tmp_path / "names.csv"
    names.write_text("cluster,name\n0,white cars\n17,no such cluster\n")
    base = VCLUST + ["report", str(fitted["store"]), "--registry", str(fitted["registry"]),
                     "--labels", str(fitted["labels"]), "--out", str(tmp_path / "r")]
    for extra, needle in (["--images", str(fake)], "not a zip"), (["--names", str(names)], "17"):
        res = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vclust: error:") and needle in lines[0], \
            res.stderr
    assert not (tmp_path / "r").exists()


def test_read_names(tmp_path):
    p = tmp_path / "n.csv"
    p.write_text("cluster,name,note\n0,white sedans,front view\n2,red\n")
    assert read_names(p, 3) == {0: ("white sedans", "front view"), 2: ("red", "")}
    p.write_text("cluster,name\n0,a\n0,b\n")
    with pytest.raises(InputError, match="named twice"):
        read_names(p, 3)
    p.write_text("cluster,name\nx,a\n")
    with pytest.raises(InputError, match="not a cluster number"):
        read_names(p, 3)
    p.write_text("cluster,name\n3,a\n")
    with pytest.raises(InputError, match="no cluster 3"):
        read_names(p, 3)


# --------------------------------------------------------------------------- labels and export


def test_outlier_reason_written_exported_and_read_without_vclust(fitted, tmp_path):
    frame = read_labels(fitted["labels"], model=fitted["model"].model_id)
    assert frame["outlier_reason"].notna().all()
    flagged = frame[frame["is_outlier"]]
    assert len(flagged) and (flagged["outlier_reason"] != "").all()
    assert (frame.loc[~frame["is_outlier"], "outlier_reason"] == "").all()
    names = tmp_path / "names.csv"
    names.write_text("cluster,name\n0,first\n3,fourth\n")
    csv = tmp_path / "best.csv"
    assert export_csv(fitted["labels"], csv, names=names) == 3000
    code = (
        "import sys, pandas as pd\n"
        f"f = pd.read_csv({str(csv)!r}, keep_default_na=False)\n"
        f"p = pd.read_parquet({str(fitted['labels'])!r})\n"
        "assert not any(m.startswith('vclust') for m in sys.modules)\n"
        "print(list(f.columns)); print(int((f.outlier_reason != '').sum()), int(f.is_outlier.sum()))\n"
        "print(sorted(set(f.loc[f.cluster == 0, 'cluster_name'])), sorted(set(f.loc[f.cluster == 3, 'cluster_name'])), sorted(set(f.loc[f.cluster == 1, 'cluster_name'])))\n"
        "print(int(p.outlier_reason.notna().sum()))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    cols, reasons, names_line, n_parquet = res.stdout.strip().splitlines()
    assert cols == str(["path", "image_id", "model", "cluster", "is_outlier", "outlier_score",
                        "outlier_reason", "outlier_reasons", "cluster_name"])
    n_reason, n_out = map(int, reasons.split())
    assert n_reason == n_out == len(flagged)
    assert names_line == str(["first"]) + " " + str(["fourth"]) + " " + str([""])
    assert int(n_parquet) == 3000
    bad = tmp_path / "bad.csv"
    bad.write_text("cluster,name\n42,nope\n")
    with pytest.raises(InputError, match="no cluster 42"):
        export_csv(fitted["labels"], tmp_path / "x.csv", names=bad)
    assert not (tmp_path / "x.csv").exists()


# --------------------------------------------------------------------------- identity


def test_identity_consistency_by_hand():
    # vehicle a: 3 images in clusters 0,0,1; vehicle b: 2 images in 1,1; vehicle c: 1 image
    labels = np.array([0, 0, 1, 1, 1, 0])
    groups = np.array(["a", "a", "a", "b", "b", "c"], dtype=object)
    got = identity_consistency(labels, groups)
    # rows of a in 0: (2-1)/(3-1) = 0.5 each; a's row in 1: 0/2 = 0; b's rows: 1/1 = 1 each
    assert got["per_cluster"] == {0: 0.5, 1: pytest.approx(2 / 3)}
    assert got["overall"] == pytest.approx((0.5 + 0.5 + 0 + 1 + 1) / 5)
    assert got["rows"] == 5 and got["groups"] == 2
    assert identity_consistency(labels, np.arange(6).astype(object))["overall"] is None
    # the same counts from integer codes (what compare passes), and with a noise label -1
    assert identity_consistency(labels, pd.factorize(groups)[0]) == got
    shifted = identity_consistency(labels - 1, groups)
    assert shifted["per_cluster"] == {-1: 0.5, 0: pytest.approx(2 / 3)}
    assert shifted["overall"] == got["overall"]


def test_synthetic_zip_holds_every_row(fitted):
    ids = pd.read_csv(fitted["root"] / "case" / "images_paths.csv")["paths"]
    with zipfile.ZipFile(fitted["zip"]) as z:
        names = set(z.namelist())
    assert all(i.replace("\\", "/") in names for i in ids)


# --------------------------------------------------------------------------- joins and readers


def test_csv_joins_the_delivery_as_it_is(fitted, tmp_path):
    """images_paths.csv spells paths with backslashes (as VeRi-Wild's does): a plain merge of the
    export on it matches every row; image_id is the store's id, model the model's id."""
    delivery = pd.read_csv(fitted["root"] / "case" / "images_paths.csv", dtype=str)
    assert delivery["paths"].str.contains("\\", regex=False).all()
    csv = tmp_path / "labels.csv"
    assert export_csv(fitted["labels"], csv) == 3000
    f = pd.read_csv(csv, dtype={"path": str}, keep_default_na=False)
    joined = delivery.merge(f, left_on="paths", right_on="path", how="inner")
    assert len(joined) == len(delivery) == 3000
    assert (joined["image_id"] == joined["paths"].str.replace("\\", "/", regex=False)).all()
    assert set(f["model"]) == {fitted["model"].model_id}


def test_store_opens_in_xarray_and_zarr_lists_it_without_warnings(fitted, tmp_path):
    """Dimension names on every array, every folder a group (pixels/ too, after vclust pixels),
    read by xarray and zarr alone in a fresh interpreter with warnings as errors."""
    import shutil as sh

    store = tmp_path / "store"
    sh.copytree(fitted["store"], store)
    jobs.pixels(store, PixelsParams(images=fitted["zip"], all=True))
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "import zarr, xarray as xr\n"
        f"p = {str(store)!r}\n"
        "g = zarr.open_group(p, mode='r')\n"
        "groups = sorted(k for k, v in g.members(max_depth=None) if isinstance(v, zarr.Group))\n"
        "print(groups)\n"
        "root = xr.open_zarr(p, consolidated=False)\n"
        "print(sorted(root.data_vars), dict(root.sizes))\n"
        "d = xr.open_zarr(p, group='descriptors', consolidated=False)\n"
        "print(sorted(d.data_vars), int(d['vdc_color'].shape[0]))\n"
        "px = xr.open_zarr(p, group='pixels/b0', consolidated=False)\n"
        "print(len(px.data_vars) > 0, int(px.sizes['row']))\n"
        "assert not any(m.startswith('vclust') for m in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    groups, root, desc, px = res.stdout.strip().splitlines()
    assert groups == str(["descriptors", "pixels", "pixels/b0"])
    assert root == str(["batch", "delivered_ids", "ids"]) + " " + str({"row": 3000})
    assert desc.startswith(str(["efficientnet-b7", "osnet", "vdc_color", "vdc_type"])) \
        and desc.endswith(" 3000")
    assert px == "True 3000"


def test_report_of_a_model_with_gaps_in_its_ids(fitted, tmp_path):
    """A model renumbered as `vclust compare` keeps one (ids 0, 2, ..., 10 of 11): the report
    shows its 6 clusters, k = 6, no empty card, and no flagged row among the nearest images."""
    from vclust.model import succession
    from vclust.model.registry import save_model
    from vclust.report import write_report

    registry = tmp_path / "registry"
    gapped = succession.renumber(fitted["model"], {c: 2 * c for c in range(6)})
    _, model_id = save_model(gapped, registry=registry, make_current=True)
    model = jobs.resolve_model(registry=registry)
    assert model.model_id == model_id and int(model.clusterer.n_clusters_) == 11
    labels = tmp_path / "labels"
    said = []
    jobs.label(fitted["store"], model, labels, all_batches=True, say=said.append)
    # progress within the batch: rows done and their share, the last line all of them
    steps = [x for x in said if x.startswith("labelling batch b0: ") and " of " in x]
    assert steps and steps[-1].startswith("labelling batch b0: 3,000 of 3,000 rows (100%)"), said
    params = ReportParams(out=str(tmp_path / "r"), images=fitted["zip"], sample=1000, seed=0,
                          hover_images=50, map_method="pca")
    data = write_report(fitted["store"], model, labels, params)
    assert [c["id"] for c in data["clusters"]] == [0, 2, 4, 6, 8, 10]
    assert data["model"]["k"] == 6 and data["model"]["model_k"] == 11
    assert all(c["size"] > 0 for c in data["clusters"])
    assert all(b["other_cluster"] in {0, 2, 4, 6, 8, 10}
               for c in data["clusters"] for b in c["groups"]["border"])
    _check_nearest_and_badges(data, read_labels(labels, model=model_id))
    page = _parse((tmp_path / "r" / "index.html").read_text())
    assert sorted(page.cards) == [0, 2, 4, 6, 8, 10]
    assert "k = 6" in (tmp_path / "r" / "index.html").read_text()


def test_z_asked_of_the_index_is_the_z_behind_the_stored_score(fitted):
    """The combined z the report asks of the outlier index (where the float32 score rounds to 1)
    is the labelling's own: for rows whose score still has its digits, the two agree; rows read
    once for the map (evidence.Rows) give the same answers as rows read again."""
    import dask

    from vclust.report import content
    from vclust.storage.store import Store

    model, store = fitted["model"], Store.open(fitted["store"])
    frame = read_labels(fitted["labels"], model=model.model_id).sort_values("row", ignore_index=True)
    rows = frame["row"].to_numpy()[::7]
    z_stored = content.z_of_score(frame["outlier_score"].to_numpy()[::7])
    asked = evidence.row_evidence(model, store, frame, rows, exact_z_rows=rows)
    z_asked = np.array([asked["z"][int(r)] for r in rows])
    keep = z_stored < 14  # 1 - score above about 1e-5: the float32 score has the digits
    assert keep.sum() > 300 and (~keep).sum() > 0
    # the z a float32 score can tell apart: half its spacing, through the logit's slope
    # (1.8e-3 at z = 14, where 1 - score is 1.7e-5 and float32 steps by 6e-8 near 1)
    score = frame["outlier_score"].to_numpy()[::7].astype(np.float32)[keep]
    s64 = score.astype(np.float64)  # below 1 on these rows: the slope is finite
    resolution = 0.5 * np.spacing(score).astype(np.float64) / (s64 * (1 - s64))
    gap = np.abs(z_asked - z_stored)[keep]
    assert (gap <= 1e-4 + resolution).all(), (gap.max(), z_stored[keep][gap.argmax()])
    assert (z_asked[~keep] > 13).all()
    sample = content.map_sample(frame, 1000, 0)
    raw = {d: store.descriptors(d)[sample] for d in model.descriptors}
    z, raw = dask.compute(model.reduce(raw), raw)
    again = evidence.row_evidence(model, store, frame, rows, exact_z_rows=rows,
                                  known=evidence.Rows(sample, raw, z))
    assert (again["neighbours"] == asked["neighbours"]).all()
    assert again["z"] == pytest.approx(asked["z"])


def _held_until(name):
    from distributed import Event

    return Event(name).wait(120)


def test_evidence_rows_are_read_here_while_the_workers_are_busy(fitted, local_client):
    """The shown rows' evidence (a few hundred rows read, reduced and asked of the index) is made
    in the report's own process: with both workers busy, as they are while they lay out the
    maps, it does not wait for them (the 416k case's report waited about 25 s)."""
    import threading

    from distributed import Event

    from vclust.storage.store import Store

    model, store = fitted["model"], Store.open(fitted["store"])
    frame = read_labels(fitted["labels"], model=model.model_id).sort_values("row", ignore_index=True)
    rows = frame["row"].to_numpy()[3::50]
    want = evidence.row_evidence(model, store, frame, rows)
    held = Event("vclust-test-workers-held")
    workers = list(local_client.scheduler_info()["workers"])
    busy = [local_client.submit(_held_until, "vclust-test-workers-held", pure=False,
                                workers=[w]) for w in workers]
    got = {}
    t = threading.Thread(target=lambda: got.update(evidence.row_evidence(model, store, frame,
                                                                         rows)))
    try:
        t.start()
        t.join(60)
        assert not t.is_alive(), "the evidence waited for the busy workers"
        assert not any(f.done() for f in busy)  # the workers were held all along
    finally:
        held.set()
        local_client.gather(busy)
        t.join()
    assert (got["neighbours"] == want["neighbours"]).all()
    np.testing.assert_array_equal(got["distances"], want["distances"])


def test_z_asked_for_a_seeded_draw_when_many_scores_round_to_1(fitted, monkeypatch):
    """Past EXACT_Z_ROWS rows whose score rounds to 1, a seeded draw of them is asked; the rest
    rank after them in the galleries (their z only known to be above 14)."""
    import vclust.report as rep
    from vclust.report import content
    from vclust.storage.store import Store

    model = fitted["model"]
    frame = read_labels(fitted["labels"], model=model.model_id).sort_values("row", ignore_index=True)
    lost = content.z_of_score(frame["outlier_score"].to_numpy()) > rep.Z_DIGITS
    assert lost.sum() > 40
    monkeypatch.setattr(rep, "EXACT_Z_ROWS", 30)
    said = []
    f = rep._with_z(frame, model, Store.open(fitted["store"]), said.append, seed=0)
    assert np.isfinite(f["z"][lost]).sum() == 30 and f["z"][lost].isna().sum() == lost.sum() - 30
    assert f["z"][~lost].notna().all()
    assert said == [f"report: the combined z of 30 of the {lost.sum():,} rows whose score rounds "
                    "to 1, asked of the outlier index"]
    for g in content.outlier_galleries(f, 1000):
        zs = [i["z"] for i in g["shown"]]
        known = [z for z in zs if z is not None]
        assert zs[:len(known)] == sorted(known, reverse=True)  # asked first, worst first
        assert all(z is None for z in zs[len(known):])


def test_a_row_without_an_image_is_named_on_its_tile():
    """A report without --images (or a row whose image is missing) names each row on its tile
    by its id's last part, the full id and "(no image)" in its title; a row with a thumbnail
    shows the thumbnail. The enlarged and selected views (report.js) and the compare page name
    them the same way."""
    from pathlib import Path

    from vclust.report.page import _thumb

    long_name = "a" * 30 + ".jpg"
    tile = _thumb({"id": "veriwild/101/05745/032093.jpg", "outlier": "empty"}, {})
    assert re.search(r'<div class="ph" title="[^"]*032093\.jpg[^"]*\(no image\)">032093\.jpg</div>',
                     tile), tile
    assert '<span class="badge"' in tile and "empty" in tile
    assert ">" + "a" * 23 + "…</div>" in _thumb({"id": "x/" + long_name}, {})
    shown = _thumb({"id": "bottle/0001"}, {"bottle/0001": "t0.jpg"})
    assert 'src="thumbs/t0.jpg"' in shown and 'class="ph"' not in shown
    js = (Path(__file__).resolve().parents[1] / "vclust/report/assets/report.js").read_text()
    assert "esc(tail(id))" in js and "(no image)" in js


def test_the_cluster_table_leaves_out_columns_no_cluster_has():
    """No --truth: no "known attributes" column; ids without folders (no vehicle to follow): no
    "identity consistency" column. With them, both, one cell per cluster."""
    from vclust.report.page import _cluster_table

    bare = [{"id": i, "size": 10, "share": 0.5, "outlier_share": 0.1} for i in range(2)]
    page = _cluster_table(bare)
    assert "known attributes" not in page and "identity consistency" not in page
    assert page.count("<td") == 2 * 5
    full = [dict(c, identity_consistency=0.9, reading="colour red (80%)") for c in bare]
    page = _cluster_table(full)
    assert "<th>identity consistency</th>" in page and "known attributes</th>" in page
    assert page.count("<td") == 2 * 7 and page.count("colour red (80%)") == 2

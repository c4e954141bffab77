"""The analysts' report end to end: a synthetic case with its images, fitted and labelled on a
real LocalCluster; the report written, read as JSON, and opened in headless Chromium."""

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
from vclust.errors import InputError
from vclust.storage.labels import export_csv, read_labels, read_names
from vclust.numerics.metrics import identity_consistency
from vclust.jobs.params import FitParams, IngestParams, ReportParams
from vclust.synth import generate_case

VCLUST = [sys.executable, "-m", "vclust"]


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


def test_report_nearest_images_are_nearest_and_outliers_worst_first(report, fitted):
    frame = read_labels(fitted["labels"], model=fitted["model"].model_id)
    data = report["data"]
    for c in data["clusters"]:
        d = frame.loc[frame["cluster"] == c["id"], "distance"].sort_values()
        shown = [i["distance"] for i in c["groups"]["nearest"]]
        np.testing.assert_allclose(shown, d.iloc[:8].to_numpy(), atol=1e-3)
    for g in data["outliers"]["galleries"]:
        scores = [i["score"] for i in g["shown"]]
        assert scores == sorted(scores, reverse=True)
    flagged = frame[frame["is_outlier"]]
    assert data["outliers"]["count"] == len(flagged)


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
    assert int(body["data-map-points3d"]) == data["map"]["points"], body


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
    assert cols == str(["path", "cluster", "is_outlier", "outlier_score", "outlier_reason",
                        "cluster_name"])
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

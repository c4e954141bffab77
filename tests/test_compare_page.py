"""The compare page acted on in headless Chromium (tests/cdp.py): a real `vclust compare` of a
small synthetic case with its images; the contingency holds only clusters that label rows (a
kept model's ids can have gaps: the table drops their empty rows and columns), with counts in
the cells; a click on a cell shows images of that cell; the proposal's ranks are a table."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vclust.jobs import steps as jobs
from vclust.jobs.compare import compare
from vclust.jobs.params import CompareParams, IngestParams
from vclust.report.compare_page import _contingency
from vclust.synth import generate_case

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/cdp.py


@pytest.fixture(scope="module")
def compared(tmp_path_factory, local_client):
    root = tmp_path_factory.mktemp("compare-page")
    summary = generate_case(root / "case", n_rows=1500, seed=9)
    store, registry, labels = root / "store", root / "registry", root / "labels"
    jobs.ingest(store, IngestParams(sources=[str(root / "case")], batch="b0"))
    params = CompareParams(descriptors=["vdc_color", "vdc_type+vdc_color"], algorithm="kmeans",
                           k_range="3:5", out=str(root / "cmp"), map_method="pca",
                           map_sample=800, images=summary["images"])
    result = compare(store, params, registry, labels)
    return {"root": root, "out": root / "cmp", "summary": result}


def _data(out):
    text = (out / "data.js").read_text()
    return json.loads(text.split("=", 1)[1].rsplit(";", 1)[0])


def test_contingency_drops_empty_rows_and_columns(tmp_path):
    f = tmp_path / "a__b.csv"
    pd.DataFrame([[3, 0, 1], [0, 0, 0], [2, 0, 5]], index=[0, 4, 7],
                 columns=["0", "2", "5"]).to_csv(f)
    assert _contingency(f) == {"rows": [0, 7], "cols": [0, 5], "z": [[3, 1], [2, 5]]}


def test_contingency_of_kept_models_holds_only_clusters_with_rows(compared):
    d = _data(compared["out"])
    labels = {m["id"]: set(m["labels"]) for m in d["models"]}
    assert d["contingency"]
    for key, t in d["contingency"].items():
        a, b = key.split("__")
        z = np.asarray(t["z"])
        assert (z.sum(axis=1) > 0).all() and (z.sum(axis=0) > 0).all(), key
        # every cluster of the map sample is a row (or column) of the table
        assert labels[a] <= set(t["rows"]) and labels[b] <= set(t["cols"]), key
    assert any(thumb for thumb in d["thumbs"])


def test_compare_page_cell_click_shows_its_images(compared, tmp_path):
    from cdp import Browser

    out, d = compared["out"], _data(compared["out"])
    with Browser(tmp_path) as b:
        b.open(out / "index.html")
        assert b.eval("document.body.dataset.errors") == "0", b.eval("document.body.dataset.errorText")
        # the proposal's ranks: one row per kept model, the proposed one first
        ranks = b.eval("Array.from(document.querySelectorAll('#ranks tr[data-model]'))"
                       ".map(r => r.dataset.model)")
        assert sorted(ranks) == sorted(m["id"] for m in d["models"])
        assert ranks[0] == d["proposal"]
        # counts in the cells
        assert b.eval("document.getElementById('contingency').data[0].texttemplate") == "%{z}"
        # the table's largest cell, clicked where it is drawn
        t = b.eval("(function(){var g=document.getElementById('contingency').data[0];"
                   "return {z:g.z,x:g.x,y:g.y};})()")
        z = np.asarray(t["z"])
        i, j = np.unravel_index(np.argmax(z), z.shape)
        r = b.rect("#contingency .nsewdrag")
        b.click(r["x"] + r["w"] * (j + 0.5) / z.shape[1], r["y"] + r["h"] * (i + 0.5) / z.shape[0])
        cell = b.wait_for("document.body.dataset.cell")
        ca, cb = map(int, cell.split(","))
        assert (f"A {ca}", f"B {cb}") == (t["y"][i], t["x"][j])
        assert int(b.eval("document.body.dataset.cellTotal")) == z[i, j]
        shown = b.eval("Array.from(document.querySelectorAll('#cells figure.t'))"
                       ".map(f => f.dataset.id)")
        assert int(b.eval("document.body.dataset.cellImages")) == len(shown) > 0
        # each image shown is a sample row of that cell in both models
        a_sel = int(b.eval("document.getElementById('model-a').value"))
        b_sel = int(b.eval("document.getElementById('model-b').value"))
        la, lb = d["models"][a_sel]["labels"], d["models"][b_sel]["labels"]
        cell_ids = {d["ids"][k] for k in range(len(la)) if la[k] == ca and lb[k] == cb}
        assert set(shown) <= cell_ids
        b.wait_for("Array.from(document.querySelectorAll('#cells img'))"
                   ".every(i => i.complete && i.naturalWidth > 0)")
        b.eval("document.getElementById('contingency').scrollIntoView()")
        b.screenshot(tmp_path / "cell.png")
        assert not b.errors, b.errors

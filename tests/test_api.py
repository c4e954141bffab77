"""vclust.api against the command line: one small case in one store (ingested by `vclust
ingest`), fitted, labelled, exported, reported and compared once by the real commands
(`python -m vclust ...` in a subprocess) and once through the API on a real LocalCluster client;
labels, cluster tables, cards, comparison tables and the CSV must be equal."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from vclust import api
from vclust.errors import InputError
from vclust.synth import generate_case

# a minute or more on 2 cores: the commands and the API each fit, label and compare once (on a
# machine shared with other work the module took 140-270 s: the suite's 300 s is too tight)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

VCLUST = [sys.executable, "-m", "vclust", "-q"]
DESCRIPTOR = "vdc_type+vdc_color"
SPECS = ["vdc_color", "vdc_type+vdc_color"]


def _run(*args):
    res = subprocess.run(VCLUST + [str(a) for a in args], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def case(tmp_path_factory, local_client):
    """A 2,000-row synthetic case in one store (ingested by the command); then fitted,
    labelled, exported, reported and compared by the commands and through the API, each into
    its own registry, labels and output. The commands that would start a LocalCluster are
    sent to the fixture's (--scheduler); fit and label run in their own process, as they
    choose to; the API runs on the fixture's client, the one in use."""
    root = tmp_path_factory.mktemp("api")
    summary = generate_case(root / "case", n_rows=2000, seed=11)
    names = root / "names.csv"
    store = root / "store"
    on = ["--scheduler", local_client.scheduler.address]
    cli = {k: root / f"cli-{k}" for k in ("registry", "labels", "report", "compare",
                                          "cregistry", "clabels")}
    _run("ingest", store, root / "case", "--batch", "b0", *on)
    _run("fit", store, "--descriptor", DESCRIPTOR, "--k-range", "4:5",
         "--registry", cli["registry"])
    _run("label", store, "--registry", cli["registry"], "--out", cli["labels"], "--all")
    names.write_text("cluster,name,note\n0,first,a note\n2,third,\n")
    _run("export", cli["labels"], "--registry", cli["registry"], "--csv", root / "cli.csv",
         "--names", names)
    _run("report", store, "--registry", cli["registry"], "--labels", cli["labels"],
         "--out", cli["report"], "--images", summary["images"], "--names", names,
         "--sample", 600, "--map-method", "pca", "--hover-images", 0, "--outliers", 12, "--pixel-images", 0, *on)
    _run("compare", store, "--descriptor", *SPECS, "--k-range", "3:4",
         "--registry", cli["cregistry"], "--labels", cli["clabels"], "--out", cli["compare"],
         "--map-method", "pca", "--map-sample", 300, *on)

    mine = {k: root / f"api-{k}" for k in cli}
    model = api.fit(store, DESCRIPTOR, k_range="4:5", registry=mine["registry"])
    api.label(store, mine["labels"], registry=mine["registry"], all=True)
    api.export(mine["labels"], root / "api.csv", registry=mine["registry"], names=names)
    comparison = api.compare(store, SPECS, k_range="3:4", registry=mine["cregistry"],
                             labels_dir=mine["clabels"], out=mine["compare"], map_method="pca",
                             map_sample=300)
    return {"root": root, "store": store, "cli": cli, "api": mine, "names": names,
            "model": model, "images": summary["images"], "comparison": comparison}


def test_labels_equal_the_commands(case):
    cli, mine = case["cli"], case["api"]
    by_cli = api.labels(cli["labels"], registry=cli["registry"], names=case["names"])
    by_api = api.labels(mine["labels"], registry=mine["registry"], names=case["names"])
    assert len(by_api) == 2000 and by_api["row"].tolist() == list(range(2000))
    pd.testing.assert_frame_equal(by_api, by_cli)
    # one model's rows, as written: the Parquet dataset read without vclust, filtered by hand
    raw = pd.read_parquet(mine["labels"])
    raw = raw[raw["model"].astype(str) == case["model"].model_id].sort_values("row")
    assert raw["cluster"].tolist() == by_api["cluster"].tolist()
    named = dict(zip(by_api["cluster"], by_api["cluster_name"]))
    assert named[0] == "first" and named[2] == "third" and named[1] == ""


def test_csv_equals_the_commands(case):
    root = case["root"]
    by_cli = pd.read_csv(root / "cli.csv", keep_default_na=False)
    by_api = pd.read_csv(root / "api.csv", keep_default_na=False)
    assert len(by_api) == 2000 and "cluster_name" in by_api
    # the files differ only in the model ids they name
    assert (by_api["model"] == case["model"].model_id).all()
    pd.testing.assert_frame_equal(by_api.drop(columns="model"), by_cli.drop(columns="model"))
    labels = api.labels(case["api"]["labels"], registry=case["api"]["registry"],
                        names=case["names"])
    assert by_api["cluster"].tolist() == labels["cluster"].tolist()
    assert by_api["cluster_name"].tolist() == labels["cluster_name"].tolist()


def test_cluster_table_and_cards_equal_the_report(case):
    cli = case["cli"]
    report = json.loads((cli["report"] / "report.json").read_text())
    table = api.clusters(cli["labels"], registry=cli["registry"], names=case["names"])
    assert table.index.tolist() == [c["id"] for c in report["clusters"]]
    for c in report["clusters"]:
        row = table.loc[c["id"]]
        for key in ("name", "note", "size", "share", "outliers", "outlier_share",
                    "mean_distance", "identity_consistency"):
            assert row[key] == pytest.approx(c[key]) if isinstance(c[key], float) \
                else row[key] == c[key], (c["id"], key)
    # the same tables from the API's own run
    pd.testing.assert_frame_equal(
        api.clusters(case["api"]["labels"], registry=case["api"]["registry"],
                     names=case["names"]), table)
    view = api.view(case["store"], cli["labels"], registry=cli["registry"],
                    images=case["images"], names=case["names"], sample=600)
    pd.testing.assert_frame_equal(view.clusters, table)
    for c in report["clusters"]:
        card = view.card(c["id"])
        assert card.image_ids == {g: [i["id"] for i in items]
                                  for g, items in c["groups"].items()}, c["id"]
        html = card._repr_html_()
        shown = sum(len(v) for v in card.image_ids.values())
        assert html.count('src="data:image/jpeg;base64,') == shown  # every image read in place
    with pytest.raises(InputError, match="no cluster 99"):
        view.card(99)
    fig = view.map("pca")
    assert sum(len(t.x) for t in fig.data) == 600


def test_comparison_tables_equal_the_command(case):
    cli = api.read_comparison(case["cli"]["compare"])
    mine = case["comparison"]
    spec_cli = dict(zip(cli.proposal["model_id"], cli.proposal["descriptor"]))
    spec_api = dict(zip(mine.proposal["model_id"], mine.proposal["descriptor"]))
    volatile = ["model_id", "seconds"]
    pd.testing.assert_frame_equal(mine.runs.drop(columns=volatile),
                                  cli.runs.drop(columns=volatile))
    for table, spec in ((mine, spec_api), (cli, spec_cli)):
        table.agreement["model_a"] = table.agreement["model_a"].map(spec)
        table.agreement["model_b"] = table.agreement["model_b"].map(spec)
    pd.testing.assert_frame_equal(mine.agreement, cli.agreement)
    pd.testing.assert_frame_equal(mine.proposal.drop(columns="model_id"),
                                  cli.proposal.drop(columns="model_id"))
    assert spec_api[mine.proposed] == spec_cli[cli.proposed]
    assert len(mine.proposal) == len(SPECS)
    kept = api.models(case["api"]["cregistry"])  # registered, none made current
    assert sorted(kept.index) == sorted(mine.proposal["model_id"]) and not kept["current"].any()
    assert sorted(kept["descriptor"]) == sorted(SPECS) and kept["k"].isin([3, 4]).all()
    a, b = mine.proposal["model_id"][:2]
    t = mine.contingency(a, b)
    assert t.to_numpy().sum() == 2000 and mine.contingency(b, a).shape == t.shape[::-1]
    # the labels folder holds every kept model's rows; labels() reads the one asked for
    assert len(pd.read_parquet(case["api"]["clabels"])) == 2000 * len(SPECS)
    for m in mine.proposal["model_id"]:
        assert len(api.labels(case["api"]["clabels"], model=m)) == 2000
    with pytest.raises(InputError, match="labels of 2 models"):
        api.labels(case["api"]["clabels"])


def test_bad_options_raise_the_errors_the_commands_exit_2_with(case, tmp_path):
    store = case["store"]
    with pytest.raises(InputError, match="k_range must look like A:B"):
        api.fit(store, DESCRIPTOR, k_range="9:4", registry=tmp_path / "r")
    res = subprocess.run(VCLUST + ["fit", str(store), "--descriptor", DESCRIPTOR, "--k-range",
                                   "9:4", "--registry", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--k-range must look like A:B" in res.stderr
    with pytest.raises(InputError, match="no_such: not an option"):
        api.label(store, tmp_path / "l", registry=case["api"]["registry"], no_such=1)
    with pytest.raises(InputError, match="the store has no descriptor set 'nope'"):
        api.compare(store, ["nope"], registry=tmp_path / "r", labels_dir=tmp_path / "l",
                    out=tmp_path / "o")
    bad = tmp_path / "names.csv"
    bad.write_text("cluster,name\n17,no such cluster\n")
    with pytest.raises(InputError, match="no cluster 17"):
        api.labels(case["api"]["labels"], registry=case["api"]["registry"], names=bad)
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()
    assert api.models(case["api"]["registry"])["current"].tolist() == [True]
    table = api.partitions(registry=case["api"]["registry"])
    assert table["k"].tolist() == [4, 5] and table["chosen"].sum() == 1
    assert np.isfinite(table["calinski_harabasz"]).all()

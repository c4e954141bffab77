"""vclust compare, promote and the renumbering of clusters across models: a small synthetic case
on a real LocalCluster; agreement checked against scikit-learn on the labels written; the page
opened in headless Chromium."""

import json
import re
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest

from vclust.jobs import steps as jobs
from vclust.model import succession
from vclust.jobs.compare import compare
from vclust.storage.labels import read_labels
from vclust.numerics.metrics import identity_consistency
from vclust.jobs.params import CompareParams, FitParams, IngestParams
from vclust.model.registry import Registry
from vclust.report.content import identity_of
from vclust.synth import generate_case

VCLUST = [sys.executable, "-m", "vclust"]
SPECS = ["vdc_color", "vdc_type+vdc_color*2"]
# agglomerative too: its partitions come from a tree cut, not the shared fit path
ALGS = "kmeans,gmm,agglomerative"
N_ALG = len(ALGS.split(","))


@pytest.fixture(scope="module")
def case(tmp_path_factory, local_client):
    root = tmp_path_factory.mktemp("compare")
    generate_case(root / "case", n_rows=2400, seed=4, images=False)
    store = root / "store"
    jobs.ingest(store, IngestParams(sources=[str(root / "case")], batch="b0"))
    return {"root": root, "store": store}


@pytest.fixture(scope="module")
def compared(case):
    root = case["root"]
    params = CompareParams(descriptors=SPECS, algorithm=ALGS, k_range="3:5",
                           out=str(root / "cmp"), map_method="pca", map_sample=800)
    summary = compare(case["store"], params, root / "registry", root / "labels")
    return {**case, "summary": summary, "out": root / "cmp", "registry": root / "registry",
            "labels": root / "labels"}


def test_runs_one_row_per_spec_algorithm_k_and_kept_models_not_current(compared):
    runs = pd.read_csv(compared["out"] / "runs.csv", keep_default_na=False)
    assert list(runs.columns) == ["model_id", "descriptor", "algorithm", "k",
                                  "calinski_harabasz", "davies_bouldin", "silhouette",
                                  "identity_consistency", "outlier_share", "seconds"]
    assert len(runs) == len(SPECS) * N_ALG * 3
    kept = runs[runs["model_id"] != ""]
    assert len(kept) == len(SPECS) * N_ALG
    assert set(map(tuple, kept[["descriptor", "algorithm"]].to_numpy())) == \
        {(s, a) for s in SPECS for a in ALGS.split(",")}
    reg = Registry(compared["registry"])
    assert reg.current() is None and sorted(kept["model_id"]) == reg.list()
    for mid in kept["model_id"]:
        f = read_labels(compared["labels"], model=mid)
        assert len(f) == 2400 and "outlier_reason" in f
        assert float(kept.set_index("model_id").loc[mid, "outlier_share"]) == \
            pytest.approx(f["is_outlier"].mean())
    # each set read from the store once (the read log counts every chunk read)
    assert compared["summary"]["store_reads"] == {"vdc_color": 1.0, "vdc_type": 1.0}
    assert compared["summary"]["proposal"]["model_id"] in set(kept["model_id"])


@pytest.mark.parametrize("where", ["here", "workers"])
def test_rows_as_given_are_read_once_per_spec_not_per_kept_model(case, tmp_path, monkeypatch,
                                                                 where):
    """With no memory for the rows as given, each spec's outlier scorer reads them twice (its
    reference, then the scoring rows of every row) for all its algorithms together: vdc_color,
    named by two specs, 1 + 2 + 2 passes; vdc_type 1 + 2 (per kept model it would be 1 + 4 + 4
    and 1 + 4). Each kept model still labels every row and its scores match its own
    scorer applied afresh; so too when the spaces are clustered, and the scoring rows held and
    labelled, on the workers (``workers``: no space small enough for this process)."""
    from vclust.jobs import compare as C
    from vclust.jobs import fit as F

    monkeypatch.setattr(C, "raw_budget", lambda: 0)
    if where == "workers":
        monkeypatch.setattr(F, "IN_PROCESS_BYTES", 0)
    threads, spec_scorer = [], C._spec_scorer  # made beside the first k-range, on its thread
    monkeypatch.setattr(C, "_spec_scorer", lambda *a: threads.append(
        threading.current_thread().name) or spec_scorer(*a))
    from vclust.storage import store as S

    id_reads, read_ids = [], S.read_ids  # the labels' ids, read in this process
    monkeypatch.setattr(S, "read_ids", lambda *a: id_reads.append(a[1:]) or read_ids(*a))
    params = CompareParams(descriptors=SPECS, algorithm="kmeans,gmm", k_range="3:3",
                           out=str(tmp_path / "cmp"), map_method="pca", map_sample=800)
    said = []
    summary = compare(case["store"], params, tmp_path / "registry", tmp_path / "labels",
                      say=said.append)
    assert any("clustering in this process" in m for m in said) == (where == "here")
    assert summary["store_reads"] == {"vdc_color": 5.0, "vdc_type": 3.0}
    assert len(summary["kept"]) == 4
    assert threads == ["vclust-spec-scorer"] * len(SPECS)
    # every kept model labels every row, and each block's ids are read once for all of them
    # here (steps.ids_read_once), on the workers by each model's tasks
    assert len(id_reads) == len(set(id_reads)) and (len(id_reads) > 0) == (where == "here")
    assert sum(b - a for a, b in id_reads) == (2400 if where == "here" else 0)
    assert jobs._IDS_READ is None  # the memo ends with the run
    from vclust.model.bundle import Model

    reg = Registry(tmp_path / "registry")
    for m in summary["kept"]:
        model = Model.load(reg.path(m["model_id"]))
        jobs.label(case["store"], model, tmp_path / "fresh", all_batches=True)
        fresh = read_labels(tmp_path / "fresh", model=m["model_id"]).sort_values("row")
        written = read_labels(tmp_path / "labels", model=m["model_id"]).sort_values("row")
        assert len(written) == 2400
        assert np.array_equal(fresh["cluster"].to_numpy(), written["cluster"].to_numpy()), m
        for col in ("image_id", "path"):
            assert fresh[col].tolist() == written[col].tolist()
        np.testing.assert_allclose(fresh["outlier_score"], written["outlier_score"], atol=1e-4)


def test_agreement_equals_scikit_learn_on_the_labels_written(compared):
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    agree = pd.read_csv(compared["out"] / "agreement.csv")
    n = len(SPECS) * N_ALG
    assert len(agree) == n * (n - 1) // 2
    for r in agree.itertuples():
        a = read_labels(compared["labels"], model=r.model_a).sort_values("row")
        b = read_labels(compared["labels"], model=r.model_b).sort_values("row")
        assert r.ari == pytest.approx(adjusted_rand_score(a["cluster"], b["cluster"]), abs=1e-12)
        assert r.ami == pytest.approx(adjusted_mutual_info_score(a["cluster"], b["cluster"]),
                                      abs=1e-10)
        fa, fb = a["is_outlier"].to_numpy(), b["is_outlier"].to_numpy()
        union = (fa | fb).sum()
        assert r.outlier_jaccard == pytest.approx((fa & fb).sum() / union if union else 1.0)
        ct = pd.read_csv(compared["out"] / "contingency" / f"{r.model_a}__{r.model_b}.csv",
                         index_col=0)
        cross = pd.crosstab(a["cluster"].to_numpy(), b["cluster"].to_numpy())
        assert np.array_equal(ct.to_numpy()[np.ix_(cross.index, cross.columns)],
                              cross.to_numpy())
        assert ct.to_numpy().sum() == 2400


def test_cross_metrics_every_kept_model_in_every_space(compared):
    cross = pd.read_csv(compared["out"] / "cross_metrics.csv")
    assert len(cross) == (len(SPECS) * N_ALG) * len(SPECS)
    assert set(cross["space"]) == set(SPECS)
    runs = pd.read_csv(compared["out"] / "runs.csv", keep_default_na=False)
    own = cross[cross["space"] == cross["model_descriptor"]].set_index("model_id")
    for r in runs[runs["model_id"] != ""].itertuples():  # in its own space: the runs figure
        assert own.loc[r.model_id, "calinski_harabasz"] == pytest.approx(r.calinski_harabasz)
        assert own.loc[r.model_id, "davies_bouldin"] == pytest.approx(r.davies_bouldin)


def test_identity_consistency_by_hand_and_in_runs(compared):
    # group a = rows 0,1,2 (clusters 0,0,1), group b = rows 3,4 (1,1), group c = row 5 alone
    got = identity_consistency([0, 0, 1, 1, 1, 0], ["a", "a", "a", "b", "b", "c"])
    # row 0: 1 of a's 2 other rows in cluster 0 -> 0.5; row 1: 0.5; row 2: 0/2; rows 3, 4: 1
    assert got["overall"] == pytest.approx((0.5 + 0.5 + 0 + 1 + 1) / 5)
    assert got["per_cluster"] == {0: pytest.approx(0.5), 1: pytest.approx(2 / 3)}
    assert got["rows"] == 5 and got["groups"] == 2
    runs = pd.read_csv(compared["out"] / "runs.csv", keep_default_na=False)
    for r in runs[runs["model_id"] != ""].itertuples():
        f = read_labels(compared["labels"], model=r.model_id).sort_values("row")
        groups = identity_of(f["image_id"].to_numpy().astype(str))
        want = identity_consistency(f["cluster"].to_numpy(), groups)["overall"]
        assert r.identity_consistency == pytest.approx(want)


def test_tables_read_by_pandas_without_vclust(compared):
    code = (
        "import sys, pandas as pd\n"
        f"r = pd.read_csv({str(compared['out'] / 'runs.csv')!r})\n"
        f"a = pd.read_csv({str(compared['out'] / 'agreement.csv')!r})\n"
        "assert len(r) and len(a) and {'ari', 'ami', 'outlier_jaccard'} <= set(a.columns)\n"
        "assert r['k'].dtype.kind == 'i' and a['ari'].dtype.kind == 'f'\n"
        "assert not [m for m in sys.modules if m.startswith('vclust')], 'vclust loaded'\n"
        "print(len(r), len(a))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr


def test_page_opens_in_headless_chromium(compared, tmp_path):
    from tests.test_report import chromium_dom

    dom = chromium_dom(compared["out"] / "index.html", tmp_path)
    body = dict(re.findall(r'(data-[a-z0-9-]+)="([^"]*)"', dom.split("<body", 1)[1].split(">", 1)[0]))
    assert body.get("data-ready") == "1", body
    assert body.get("data-errors") == "0", body.get("data-error-text")
    assert body.get("data-models") == str(len(SPECS) * N_ALG)
    assert body.get("data-map-points") == str(2 * 800)  # two maps, the same 800 rows
    assert body.get("data-heatmap-cells") == str((len(SPECS) * N_ALG) ** 2)
    html = (compared["out"] / "index.html").read_text()
    assert "http://" not in html and "https://" not in html


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra, needle", [
    (["--descriptor", "osnet+nosuchset"], "no descriptor set 'nosuchset'"),
    (["--descriptor", "vdc_color+vdc_type*-2"], "weight '-2'"),
    (["--descriptor", "vdc_color*abc"], "weight 'abc'"),
    (["--descriptor", "vdc_color", "--k-range", "3:5000"], "too few for k=5000"),
    (["--descriptor", "vdc_color", "--algorithm", "kmeans,dance"], "--algorithm"),
])
def test_bad_specs_exit_2_with_one_line_and_change_nothing(case, tmp_path, extra, needle):
    reg, labels, out = tmp_path / "reg", tmp_path / "labels", tmp_path / "out"
    res = subprocess.run(VCLUST + ["compare", str(case["store"]), "--registry", str(reg),
                                   "--labels", str(labels), "--out", str(out)] + extra,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vclust: error:") and needle in lines[0], \
        res.stderr
    assert not reg.exists() and not labels.exists() and not out.exists()


def test_fit_accepts_the_weight_syntax(tmp_path):
    p = FitParams(descriptor="osnet + vdc_color*2.0", k=4)
    assert p.descriptor == "osnet+vdc_color*2" and p.descriptors == ["osnet", "vdc_color"]
    assert p.weights == {"osnet": 1.0, "vdc_color": 2.0}
    res = subprocess.run(VCLUST + ["fit", str(tmp_path / "none"), "--descriptor", "osnet*0",
                                   "--model", str(tmp_path / "m")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "weight '0'" in res.stderr and not (tmp_path / "m").exists()


def test_mixture_weight_scales_the_sets_variance():
    from vclust.numerics.preprocess import MixturePreprocessor, Preprocessor

    rng = np.random.default_rng(0)
    sets = {"a": rng.normal(size=(500, 8)).astype(np.float32),
            "b": rng.normal(size=(500, 6)).astype(np.float32) * 5}
    mix = MixturePreprocessor({n: Preprocessor(l2=False, pca_variance=None) for n in sets},
                              {"b": 3.0}).fit(sets)
    z = mix.transform(sets)
    va, vb = z[:, :8].var(axis=0, ddof=1).sum(), z[:, 8:].var(axis=0, ddof=1).sum()
    assert vb / va == pytest.approx(3.0, rel=1e-4)
    back = MixturePreprocessor.from_state(*mix.to_state())
    assert np.allclose(back.transform(sets), z)


# --------------------------------------------------------------------------- renumbering


def _model(centres, name="kmeans"):
    from vclust.model.bundle import Model
    from vclust.numerics.algorithms import FittedClusterer
    from vclust.numerics.outliers import OutlierScorer

    scorer = OutlierScorer()
    k = len(centres)
    scorer.cluster_median_ = np.arange(k, dtype=float) + 1
    scorer.cluster_log_mad_ = np.ones(k)
    scorer.cluster_share_ = np.full(k, 1 / k)
    scorer.cluster_tight_ = np.zeros(k)
    scorer.cluster_degenerate_ = np.zeros(k, bool)
    info = {"profile": {"cluster_shares": [1 / k] * k, "cluster_mean_distance": [1.0] * k},
            "clusters": [{"cluster": c, "size": 1} for c in range(k)]}
    return Model(["x"], None, FittedClusterer(name, centres), scorer, info, model_id="m")


def test_renumbering_keeps_ids_of_a_permuted_partition_and_gives_new_ids_to_new_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], np.float32)
    x = np.concatenate([c + rng.normal(scale=0.5, size=(50, 2)) for c in centres]).astype(np.float32)
    prev = _model(centres)
    prev_labels = prev.clusterer.predict(x)
    rows = np.arange(len(x))
    # the same partition, its clusters permuted
    perm = np.array([2, 0, 3, 1])
    refit = _model(centres[perm])
    refit_labels = refit.clusterer.predict(x)
    assert not np.array_equal(refit_labels, prev_labels)
    new, mapping = succession.renumber_against(refit, prev, (rows, prev_labels), rows,
                                               refit_labels)
    assert np.array_equal(new.clusterer.predict(x), prev_labels)
    assert mapping == {0: 2, 1: 0, 2: 3, 3: 1}
    for c, i in mapping.items():  # per-cluster outlier statistics follow their cluster
        assert new.outliers.cluster_median_[i] == refit.outliers.cluster_median_[c]
        assert np.array_equal(new.clusterer.cluster_centers_[i], refit.clusterer.cluster_centers_[c])
    assert new.info["succession"]["retired"] == [] and new.info["succession"]["next_id"] == 4
    # a refit that splits cluster 3 in two and merges 0 with 1: 3 keeps its id on the larger
    # part, the merged cluster keeps one of the two, the new part gets id 4, the other is retired
    cent2 = np.array([[5, 0], [0, 10], [10, 8.5], [10, 11.5]], np.float32)
    x2 = np.concatenate([x, np.array([[10, 12]] * 10, np.float32)])
    refit2 = _model(cent2)
    lab2 = refit2.clusterer.predict(x2)
    prev2 = np.concatenate([prev_labels, np.full(10, 3)])
    rows2 = np.arange(len(x2))
    new2, mapping2 = succession.renumber_against(refit2, prev, (rows2, prev2), rows2, lab2)
    assert mapping2[1] == 2  # the cluster at (0, 10) keeps its id
    assert sorted(mapping2.values())[-1] == 4 and 4 in mapping2.values()
    assert len(set(mapping2.values())) == 4
    retired = new2.info["succession"]["retired"]
    assert len(retired) == 1 and retired[0] in (0, 1)
    got = new2.clusterer.predict(x2)
    assert retired[0] not in set(got.tolist())  # a retired id labels no row
    assert np.array_equal(got, np.array([mapping2[c] for c in lab2]))
    assert new2.clusterer.n_clusters_ == 5 and new2.info["profile"]["cluster_shares"][retired[0]] == 0


def test_every_kept_model_reproduces_its_labels_when_applied_afresh(compared, tmp_path):
    """compare writes each kept model's labels from the clusters and neighbours it already
    computed; the saved model, loaded and applied as the nightly job applies it (the store's
    rows reduced again, nothing held), must give the same labels."""
    from vclust.model.bundle import Model

    reg = Registry(compared["registry"])
    for m in compared["summary"]["kept"]:
        model = Model.load(reg.path(m["model_id"]))
        jobs.label(compared["store"], model, tmp_path / m["model_id"], all_batches=True)
        fresh = read_labels(tmp_path / m["model_id"], model=m["model_id"]).sort_values("row")
        written = read_labels(compared["labels"], model=m["model_id"]).sort_values("row")
        assert np.array_equal(fresh["cluster"].to_numpy(), written["cluster"].to_numpy()), m
        np.testing.assert_allclose(fresh["distance"], written["distance"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(fresh["outlier_score"], written["outlier_score"], atol=1e-4)
        assert (fresh["is_outlier"] == written["is_outlier"]).mean() >= 0.998, m


def test_gmm_fitted_on_the_workers_equals_fit_algorithm(compared):
    """compare fits gmm for every k at once on the workers; the kept model is the one
    ``fit_algorithm`` gives on the same rows."""
    from vclust.model.bundle import Model
    from vclust.numerics.algorithms import fit_algorithm
    from vclust.storage.store import Store

    store = Store.open(compared["store"])
    reg = Registry(compared["registry"])
    for m in compared["summary"]["kept"]:
        if m["algorithm"] != "gmm":
            continue
        model = Model.load(reg.path(m["model_id"]))
        sets = {d: store.descriptors(d, 0, store.n_rows) for d in model.descriptors}
        z = np.asarray(model.reduce(sets).compute())
        again = fit_algorithm("gmm", z, m["k"], random_state=0)
        np.testing.assert_allclose(model.clusterer.arrays["means"], again.arrays["means"],
                                   atol=1e-4)
        np.testing.assert_allclose(model.clusterer.arrays["weights"], again.arrays["weights"],
                                   atol=1e-5)


def test_promote_renumbers_and_carries_names(compared, tmp_path):
    """Promote one compared model, then another: the second was numbered against no current
    model, so promote makes a successor whose ids continue the first one's; the names follow."""
    reg = Registry(compared["registry"])
    kept = [m["model_id"] for m in compared["summary"]["kept"]]
    names = tmp_path / "names.csv"
    first = [m for m in compared["summary"]["kept"] if m["model_id"] == kept[0]][0]
    names.write_text("cluster,name,note\n" + "".join(f"{c},name {c},\n" for c in range(first["k"])))
    res = subprocess.run(VCLUST + ["promote", "--registry", str(reg.root), kept[0],
                                   "--names", str(names)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert reg.current() == kept[0]
    said = res.stdout + res.stderr
    assert "no current model" in said and "against None" not in said, said
    res = subprocess.run(VCLUST + ["promote", "--registry", str(reg.root), kept[1]],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--labels" in res.stderr  # needs the labels to match
    res = subprocess.run(VCLUST + ["-q", "promote", "--registry", str(reg.root), kept[1],
                                   "--labels", str(compared["labels"]), "--names", str(names)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    new_id = out["model"]
    assert out["renumbered"] and reg.current() == new_id != kept[1]
    a = read_labels(compared["labels"], model=kept[0]).sort_values("row")
    b = read_labels(compared["labels"], model=new_id).sort_values("row")
    old_b = read_labels(compared["labels"], model=kept[1]).sort_values("row")
    mapping = {int(k): v for k, v in out["mapping"].items()}
    assert np.array_equal(b["cluster"].to_numpy(), old_b["cluster"].map(mapping).to_numpy())
    # the matched clusters share most of their rows with the previous cluster of the same id
    for c in set(mapping.values()) & set(range(first["k"])):
        rows_b = set(b["row"][b["cluster"] == c])
        rows_a = set(a["row"][a["cluster"] == c])
        assert len(rows_a & rows_b) >= 0.5 * len(rows_b)
    named = pd.read_csv(names, keep_default_na=False)
    assert sorted(named["cluster"]) == sorted(set(mapping.values()) & set(range(first["k"])))
    for c, n in zip(named["cluster"], named["name"]):
        assert n == f"name {c}"
    assert (tmp_path / "names.csv.bak").exists()
    res = subprocess.run(VCLUST + ["export", str(compared["labels"]), "--registry", str(reg.root),
                                   "--csv", str(tmp_path / "out.csv"), "--names", str(names)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr  # the carried names fit the promoted model
    # the successor model applies with its ids: labels on disk match the model's numbering
    from vclust.model.bundle import Model

    m = Model.load(reg.path(new_id))
    assert m.info["succession"]["previous"] == kept[0]
    jobs.label(compared["store"], m, tmp_path / "relabel", all_batches=True)
    again = read_labels(tmp_path / "relabel", model=new_id).sort_values("row")
    assert np.array_equal(again["cluster"].to_numpy(), b["cluster"].to_numpy())


def test_compare_job_spec_covers_the_brief():
    from pathlib import Path

    from vclust.jobs.runner import load_spec, plan

    spec = load_spec(Path(__file__).resolve().parents[1] / "jobs" / "compare.yaml")
    c = spec.compare
    assert spec.steps == ["compare"]
    assert {"efficientnet-b7", "osnet", "vdc_color", "vdc_type"} <= set(c.descriptors)
    assert sum("+" in d for d in c.descriptors) == 2
    assert c.algorithms == ["kmeans", "gmm", "agglomerative"] and c.ks == list(range(6, 17))
    assert plan(spec, scheduler="tcp://127.0.0.1:1")["steps"][0]["step"] == "compare"


def test_nightly_refit_continues_the_current_models_cluster_ids(case, tmp_path):
    """runner._fit_and_register: a refit (another seed) is renumbered against the current
    model on the rows it labelled, before it is saved or labels anything."""
    from sklearn.metrics import adjusted_rand_score

    from vclust.jobs.runner import _fit_and_register, parse_spec

    reg, labels = tmp_path / "registry", tmp_path / "labels"
    base = {"name": "t", "steps": ["fit"], "store": str(case["store"]), "registry": str(reg),
            "labels": str(labels), "fit": {"descriptor": "vdc_color", "k": 5, "seed": 0}}
    first = _fit_and_register(parse_spec(dict(base), "t"), print)
    jobs.label(case["store"], first, labels, all_batches=True)
    second = _fit_and_register(parse_spec({**base, "fit": {**base["fit"], "seed": 7}}, "t"),
                               print)
    assert Registry(reg).current() == second.model_id
    assert second.info["succession"]["previous"] == first.model_id
    jobs.label(case["store"], second, labels, all_batches=True)
    a = read_labels(labels, model=first.model_id).sort_values("row")["cluster"].to_numpy()
    b = read_labels(labels, model=second.model_id).sort_values("row")["cluster"].to_numpy()
    if adjusted_rand_score(a, b) > 0.95:  # the same partition found again: the same ids
        assert (a == b).mean() > 0.95
    matched = [int(v) for k, v in second.info["succession"]["mapping"].items()]
    assert len(set(matched)) == len(matched)


def test_compare_numbers_its_models_against_the_current_one(compared, tmp_path):
    """With a current model labelled, compare's kept models continue its ids: promoting one
    switches `current` and changes no array and no label."""
    from sklearn.metrics import adjusted_rand_score

    reg = Registry(compared["registry"])
    current = reg.current()
    assert current is not None  # promoted by the test above
    params = CompareParams(descriptors=["vdc_color"], algorithm="kmeans", k_range="5:5",
                           out=str(tmp_path / "cmp2"), map_method="pca", map_sample=300)
    summary = compare(compared["store"], params, compared["registry"], compared["labels"])
    (kept,) = summary["kept"]
    from vclust.model.bundle import Model

    m = Model.load(reg.path(kept["model_id"]))
    assert m.info["succession"]["previous"] == current
    assert reg.current() == current  # compare makes nothing current
    a = read_labels(compared["labels"], model=current).sort_values("row")["cluster"].to_numpy()
    b = read_labels(compared["labels"], model=kept["model_id"]).sort_values("row")
    b = b["cluster"].to_numpy()
    mapping = {int(k): v for k, v in m.info["succession"]["mapping"].items()}
    assert set(np.unique(b)) <= set(mapping.values())
    if adjusted_rand_score(a, b) > 0.9:
        assert (a == b).mean() > 0.9
    res = subprocess.run(VCLUST + ["-q", "promote", "--registry", str(reg.root), kept["model_id"]],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["renumbered"] is False and reg.current() == kept["model_id"]


@pytest.mark.parametrize("spec", SPECS)
def test_fit_and_compare_make_the_same_model(compared, tmp_path, spec):
    """One fit core: the kmeans model `vclust compare` kept for a spec, and the model `vclust
    fit` makes of the same spec, k and seed, label and score every row alike (the outlier
    score of both on the scorer's own projection of the rows as given)."""
    from vclust.model.bundle import Model

    kept = next(m for m in compared["summary"]["kept"]
                if m["descriptor"] == spec and m["algorithm"] == "kmeans")
    fitted = jobs.fit(compared["store"], FitParams(descriptor=spec, k=kept["k"]))
    jobs.save_model(fitted, tmp_path / "model")
    fitted = Model.load(tmp_path / "model")
    jobs.label(compared["store"], fitted, tmp_path / "labels", all_batches=True)
    mine = read_labels(tmp_path / "labels", model=fitted.model_id).sort_values("row")
    theirs = read_labels(compared["labels"], model=kept["model_id"]).sort_values("row")
    compared_model = Model.load(Registry(compared["registry"]).path(kept["model_id"]))
    assert compared_model.outliers.projection_ is not None  # scored on the rows as given
    np.testing.assert_array_equal(mine["cluster"].to_numpy(), theirs["cluster"].to_numpy())
    # float32 sums in another order (the compare run holds its rows in other blocks) may move
    # a score in its last bits; not a row's flag
    np.testing.assert_allclose(mine["outlier_score"], theirs["outlier_score"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(mine["is_outlier"].to_numpy(), theirs["is_outlier"].to_numpy())
    np.testing.assert_array_equal(mine["outlier_reason"].to_numpy(),
                                  theirs["outlier_reason"].to_numpy())


def test_the_proposal_ties_the_same_partition_whatever_its_last_bits():
    """Two kept models with the same partition (ARI 1.0: two specs or algorithms found it)
    score the same CH and DB but for their last bits, which follow the clusters' numbering and
    the machine's kernels. Those bits do not decide: the tie goes to the order given. A real
    difference still does."""
    import pandas as pd

    from vclust.jobs.compare import propose

    kept = [{"model_id": m, "k": 10, "descriptor": d, "algorithm": a}
            for m, d, a in (("a", "osnet", "kmeans"), ("b", "vdc_color", "gmm"),
                            ("c", "vdc_type", "kmeans"))]

    def cross(ch_b, db_b):
        rows = []
        for space in ("osnet", "vdc_color", "vdc_type"):
            for m, ch, db in (("a", 83760.74942556719, 0.21408427408099934),
                              ("b", ch_b, db_b), ("c", 70000.0, 0.4)):
                rows.append({"model_id": m, "space": space, "calinski_harabasz": ch,
                             "davies_bouldin": db})
        return pd.DataFrame(rows)

    agreement = pd.DataFrame({"model_a": ["a", "a", "b"], "model_b": ["b", "c", "c"],
                              "ari": [1.0, 0.5, 0.5]})
    # b's CH a bit higher and its DB a bit lower than a's: without the rounding b wins both
    last_bits = propose(kept, cross(83760.7494255672, 0.2140842740809993), agreement)
    assert last_bits["model_id"] == "a", last_bits["scores"]
    assert last_bits["scores"]["a"]["mean_rank"] == last_bits["scores"]["b"]["mean_rank"]
    better = propose(kept, cross(83761.0, 0.21408427408099934), agreement)
    assert better["model_id"] == "b", better["scores"]

"""index.html of ``vclust compare``: the runs table, the agreement heatmap, the contingency of
any two kept models, and their maps side by side; opens from disk, offline (Plotly bundled).

The maps: a seeded sample of rows (the same rows for every model) is embedded once per
descriptor spec, in that spec's reduced space (vclust.numerics.maps.embed, 2D; one worker per map), and each
model is drawn in the embedding of the space it was fitted in, coloured by its labels. One
shared layout would show every model in one space's geometry (favouring that space's models);
one embedding per model would repeat the same embedding for every algorithm of a spec. With
one per spec, two models of one spec are compared on the same picture, and two specs each in
their own geometry, point for point the same images (hover shows the id).
"""

from __future__ import annotations

import contextlib
import html
import json
import shutil
from pathlib import Path

import numpy as np

from .page import ASSETS, PALETTE, copy_assets

CELL_IMAGES = 2_000  # sample rows with a thumbnail for the cells' images


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _runs_table(runs, proposal) -> str:
    cols = list(runs.columns)
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    rows = []
    for r in runs.to_dict("records"):
        mid = r.get("model_id") or ""
        mid = "" if isinstance(mid, float) else mid
        cls = []
        if mid:
            cls.append("chosen")
        if mid and mid == proposal.get("model_id"):
            cls.append("proposed")
        cells = "".join(f"<td>{_e(_fmt(r[c]) if c != 'model_id' else mid)}</td>" for c in cols)
        rows.append(f'<tr class="{" ".join(cls)}" data-model="{_e(mid)}">{cells}</tr>')
    return (f'<table id="runs"><caption>Every (spec, algorithm, k) fitted; the k kept per '
            f'(spec, algorithm) carries its model id</caption><tr>{head}</tr>'
            + "".join(rows) + "</table>")


def _contingency(path) -> dict:
    """A contingency CSV (rows model a's clusters, columns b's) without its empty rows and
    columns (a model kept by compare is numbered against another: its ids can have gaps)."""
    import pandas as pd

    t = pd.read_csv(path, index_col=0)
    t = t.loc[t.sum(axis=1) > 0, t.sum(axis=0) > 0]
    return {"rows": [int(i) for i in t.index], "cols": [int(str(c)) for c in t.columns],
            "z": t.to_numpy().astype(int).tolist()}


def _cell_thumbs(out: Path, ids, params, say) -> list:
    """Thumbnails of a seeded share of the maps' sample (up to CELL_IMAGES rows), for the images
    of a contingency cell; per sample row its thumbnail path or ""."""
    images = getattr(params, "images", None)
    if not images:
        return []
    from ..storage.images import ImageSource, write_thumbnails
    from . import THUMB_SIZE

    rng = np.random.default_rng([params.seed, 8])
    pick = ids[np.sort(rng.permutation(len(ids))[:CELL_IMAGES])]
    with ImageSource(images) as source:
        res = write_thumbnails(source, list(pick), out / "thumbs", size=THUMB_SIZE)
    got = {k: v for k, v in res["thumbs"].items() if v}
    say(f"compare page: {len(got):,} thumbnails of the maps' sample for the cells' images")
    return ["thumbs/" + got[i] if i in got else "" for i in ids]


def _ranks_table(kept, proposal) -> str:
    """The proposal's ranks of every kept model, best first."""
    scores = proposal.get("scores") or {}
    if not scores:
        return ""
    info = {m["model_id"]: m for m in kept}
    rows = []
    for mid, sc in sorted(scores.items(), key=lambda kv: (kv[1].get("mean_rank", 0), kv[0])):
        m = info.get(mid, {})
        cls = ' class="chosen"' if mid == proposal.get("model_id") else ""
        rows.append(f'<tr{cls} data-model="{_e(mid)}"><td>{_e(mid)}</td>'
                    f'<td class="l">{_e(m.get("descriptor", ""))}</td>'
                    f'<td class="l">{_e(m.get("algorithm", ""))}</td><td>{_e(m.get("k", ""))}</td>'
                    f'<td>{_fmt(sc.get("mean_rank"))}</td><td>{_fmt(sc.get("ch_rank"))}</td>'
                    f'<td>{_fmt(sc.get("db_rank"))}</td><td>{_fmt(sc.get("mean_ari"))}</td></tr>')
    return ('<table id="ranks" class="ranks"><caption>The proposal\'s ranks (lower is better; '
            'the proposed model highlighted)</caption><tr><th>model</th><th class="l">spec</th>'
            '<th class="l">algorithm</th><th>k</th><th>mean of the three ranks</th>'
            '<th>CH mean rank across spaces</th><th>DB mean rank across spaces</th>'
            '<th>mean ARI with the others</th></tr>' + "".join(rows) + "</table>")


class _Done:
    """A computed value posing as a future (no cluster connected)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def write_compare_page(out: Path, store, spaces: dict, kept: list[dict], runs, agreement,
                       cross, proposal: dict, params, say=print) -> Path:
    """Write index.html, compare.js's data (data.js) and the assets into ``out``."""
    from ..numerics.maps import choose_method, embed
    from . import SIDE_ROWS, layout_submit, worker_submit

    out = Path(out)
    copy_assets(out)
    shutil.copyfile(ASSETS / "compare.js", out / "assets" / "compare.js")
    n = store.n_rows
    rng = np.random.default_rng([params.seed, 7])
    sample = np.sort(rng.choice(n, size=min(params.map_sample, n), replace=False))
    ids = store.ids()[sample].astype(str)
    # one 2D map per spec, each in a worker of the cluster or a side process (a layout is one
    # thread): the specs' layouts run two at a time on two cores
    method = choose_method(params.map_method, len(sample))
    use_side = method != "pca" and len(sample) >= SIDE_ROWS
    with layout_submit() if use_side else contextlib.nullcontext(worker_submit()) as elsewhere:
        submit = elsewhere or (lambda fn, *args: _Done(fn(*args)))
        pending = {}
        for spec, (_, z) in spaces.items():
            zs = np.asarray(z[sample].compute(), dtype=np.float32)
            pending[spec] = submit(embed, zs, 2, method, params.seed)
        maps = {}
        for spec, future in pending.items():
            xy = future.result()
            maps[spec] = {"x": np.round(xy[:, 0], 4).tolist(),
                          "y": np.round(xy[:, 1], 4).tolist(), "method": method}
            say(f"compare page: {method} map of {len(sample):,} rows in {spec}'s space")
    model_ids = [m["model_id"] for m in kept]
    ari = np.eye(len(kept))
    ami = np.eye(len(kept))
    pos = {m: i for i, m in enumerate(model_ids)}
    for r in agreement.to_dict("records"):
        i, j = pos[r["model_a"]], pos[r["model_b"]]
        ari[i, j] = ari[j, i] = r["ari"]
        ami[i, j] = ami[j, i] = r["ami"]
    tables = {f.stem: _contingency(f) for f in sorted((out / "contingency").glob("*.csv"))}
    thumbs = _cell_thumbs(out, ids, params, say)
    data = {
        "models": [{"id": m["model_id"], "descriptor": m["descriptor"],
                    "algorithm": m["algorithm"], "k": m["k"], "n": m["n"],
                    "labels": np.asarray(m["labels"])[sample].astype(int).tolist(),
                    "outlier": np.asarray(m["flags"])[sample].astype(int).tolist()}
                   for m in kept],
        "ari": np.round(ari, 4).tolist(), "ami": np.round(ami, 4).tolist(),
        "contingency": tables, "maps": maps, "ids": ids.tolist(), "palette": PALETTE,
        "proposal": proposal.get("model_id"), "thumbs": thumbs,
        "images": bool(getattr(params, "images", None)),
    }
    (out / "data.js").write_text("window.VCLUST_COMPARE = "
                                 + json.dumps(data, separators=(",", ":")) + ";\n")
    opts = "".join(f'<option value="{i}">{_e(m["model_id"])} · {_e(m["descriptor"])} · '
                   f'{_e(m["algorithm"])} · k={m["k"]}</option>' for i, m in enumerate(kept))
    img_note = "" if getattr(params, "images", None) else \
        "; this run was given no --images, so ids only"
    html_text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>vclust compare — {len(kept)} models</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="assets/report.css"></head>
<body data-ready="0">
<header><h1>Comparison of {len(kept)} models</h1>
<p class="lede">{n:,} images · specs {_e(", ".join(spaces))} · algorithms
{_e(", ".join(params.algorithms))} · k {_e(params.k_range)}</p>
<nav><a href="#proposal">Proposal</a><a href="#agreement">Agreement</a><a href="#pair">Two
models</a><a href="#runs-section">Runs</a></nav></header>
<main>
<section id="proposal"><h2>Proposal</h2><p>{_e(proposal.get("why", ""))}</p>
<p class="hint">Rule: {_e(proposal.get("rule", ""))}. Make it current with
<code>vclust promote --registry REGISTRY {_e(proposal.get("model_id", ""))}</code>.</p>
{_ranks_table(kept, proposal)}</section>
<section id="agreement"><h2>Agreement</h2>
<p class="hint">Adjusted Rand index of every pair of kept models over all rows (1: the same
partition; about 0: unrelated). agreement.csv also has AMI and the Jaccard index of their outlier
sets.</p><div id="heatmap"></div></section>
<section id="pair"><h2>Two models</h2>
<p><label>A <select id="model-a">{opts}</select></label>
<label>B <select id="model-b">{opts}</select></label></p>
<p class="hint">Contingency: rows are A's clusters, columns B's (only clusters that label
rows); a cell counts the images in both. <b>Click a cell</b> to see sample images of it (from the
maps' sample{img_note}). The maps show the same {len(sample):,} sampled images, each model in the embedding of the
space it was fitted in, coloured by its clusters (outliers as x).</p>
<div id="contingency" class="map"></div>
<div id="cells"><p class="hint">Click a contingency cell to see its images.</p></div>
<div class="maps"><div><div id="map-a" class="map"></div></div>
<div><div id="map-b" class="map"></div></div></div></section>
<section id="runs-section"><h2>Runs</h2>{_runs_table(runs, proposal)}</section>
</main>
<footer>runs.csv · agreement.csv · contingency/ · cross_metrics.csv · proposal.json</footer>
<script src="assets/plotly.min.js"></script>
<script src="data.js"></script>
<script src="assets/compare.js"></script>
</body></html>
"""
    path = out / "index.html"
    path.write_text(html_text)
    return path

"""index.html of the report: static HTML for the overview, the cluster cards and the outlier
galleries (readable without scripts), plus the bundled assets that draw the maps."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"

# categorical colours (Kelly's / tab20-like), the same cluster the same colour everywhere
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#e7ba52",
           "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1", "#636363", "#fd8d3c",
           "#9c9ede", "#cedb9c", "#e7969c"]


def colour(k: int) -> str:
    return PALETTE[k % len(PALETTE)]


def plotly_js() -> Path:
    """plotly.min.js as shipped inside the plotly package (no CDN, no network)."""
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():  # pragma: no cover - a broken plotly install
        raise FileNotFoundError(f"{path}: plotly's bundled JavaScript is missing")
    return path


def copy_assets(out: Path) -> None:
    dst = out / "assets"
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("report.js", "report.css"):
        shutil.copyfile(ASSETS / f, dst / f)
    target = dst / "plotly.min.js"
    src = plotly_js()
    if not target.exists() or target.stat().st_size != src.stat().st_size:
        shutil.copyfile(src, target)


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v, digits=4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _thumb(item: dict, thumbs: dict, caption: str = "") -> str:
    """One image: its thumbnail (click to enlarge it with its nearest rows), an outlier badge
    when the row is flagged, a caption in full."""
    name = thumbs.get(item["id"])
    why = item.get("outlier") or ""
    title = _e(item["id"] + (f" — {caption}" if caption else "")
               + (f" — outlier: {why}" if why else ""))
    if name:
        img = f'<img class="thumb" src="thumbs/{_e(name)}" alt="{_e(item["id"])}" title="{title}">'
    else:  # the row named on its tile (a report without --images is all tiles)
        img = f'<div class="ph" title="{title} (no image)">{_e(_tail(item["id"]))}</div>'
    badge = f'<span class="badge" title="flagged: {_e(why)}">{_e(why)}</span>' if why else ""
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    cls = "t out" if why else "t"
    return (f'<figure class="{cls}" data-id="{_e(item["id"])}" tabindex="0">{img}{badge}{cap}'
            "</figure>")


def _tail(image_id: str, width: int = 24) -> str:
    """The last part of an image id (its file name), at most ``width`` characters."""
    tail = str(image_id).rstrip("/").rsplit("/", 1)[-1]
    return tail if len(tail) <= width else tail[:width - 1] + "…"


def _card(c: dict, thumbs: dict) -> str:
    stats = (f'{c["size"]:,} images ({_pct(c["share"])}) · outliers {_pct(c["outlier_share"])} · '
             f'mean distance {_fmt(c["mean_distance"], 3)}')
    if c.get("identity_consistency") is not None:
        stats += f' · identity consistency {c["identity_consistency"]:.2f}'
    parts = [f'<article class="card" id="cluster-{c["id"]}" data-cluster="{c["id"]}" '
             f'style="border-left-color:{colour(c["id"])}">',
             f'<div class="head"><h3><span class="swatch" style="background:{colour(c["id"])}">'
             f'</span>Cluster {c["id"]}</h3><div class="stats">{stats}</div></div>',
             f'<div class="naming"><label>name <input class="c-name" data-cluster="{c["id"]}" '
             f'value="{_e(c.get("name") or "")}" placeholder="what this cluster is"></label>'
             f'<label>note <input class="c-note" data-cluster="{c["id"]}" '
             f'value="{_e(c.get("note") or "")}" placeholder="why, what to check"></label></div>']
    if c.get("reading"):
        parts.append(f'<p class="reading">Known attributes: {_e(c["reading"])}</p>')
    g = c["groups"]
    parts.append('<div class="row-label">nearest its centre, outliers left out — what the '
                 'cluster is</div><div class="strip" data-group="nearest">'
                 + "".join(_thumb(i, thumbs) for i in g["nearest"]) + "</div>")
    parts.append('<div class="row-label">a seeded random draw — what it holds (outliers '
                 'badged)</div><div class="strip" data-group="random">'
                 + "".join(_thumb(i, thumbs) for i in g["random"]) + "</div>")
    parts.append('<div class="row-label">its border, outliers left out — almost as near '
                 'another centre (→ that cluster)</div><div class="strip" data-group="border">'
                 + "".join(_thumb(i, thumbs, f'→ {i["other_cluster"]}') for i in g["border"])
                 + "</div>")
    parts.append("</article>")
    return "\n".join(parts)


def _metrics_table(model: dict) -> str:
    rows = []
    for r in model.get("metrics", []):
        cls = ' class="chosen"' if r.get("k") == model.get("chosen_k") else ""
        rows.append(f'<tr{cls}><td>{_e(r.get("k"))}</td><td class="l">{_e(r.get("algorithm", ""))}'
                    f'</td><td>{_fmt(r.get("calinski_harabasz"), 6)}</td>'
                    f'<td>{_fmt(r.get("davies_bouldin"))}</td><td>{_fmt(r.get("silhouette"))}</td></tr>')
    return ('<table><caption>Partitions tried (CH higher is better, DB lower is better; '
            'the chosen one highlighted)</caption><tr><th>k</th><th class="l">algorithm</th>'
            '<th>Calinski-Harabasz</th><th>Davies-Bouldin</th><th>silhouette</th></tr>'
            + "".join(rows) + "</table>")


def _cluster_table(clusters: list[dict]) -> str:
    """The clusters' table; the identity consistency and known attributes columns only when
    some cluster has one (ids with folders; ``--truth``)."""
    ident = any(c.get("identity_consistency") is not None for c in clusters)
    known = any(c.get("reading") for c in clusters)
    rows = []
    for c in clusters:
        rows.append(
            f'<tr><td class="l"><a href="#cluster-{c["id"]}"><span class="swatch" '
            f'style="background:{colour(c["id"])}"></span>{c["id"]}</a></td>'
            f'<td class="l t-name" data-cluster="{c["id"]}">{_e(c.get("name") or "")}</td>'
            f'<td>{c["size"]:,}</td>'
            f'<td>{_pct(c["share"])}</td><td>{_pct(c["outlier_share"])}</td>'
            + (f'<td>{_fmt(c.get("identity_consistency"), 2)}</td>' if ident else "")
            + (f'<td class="l">{_e(c.get("reading") or "")}</td>' if known else "") + "</tr>")
    return ('<table><caption>Clusters</caption><tr><th class="l">cluster</th><th class="l">name'
            '</th><th>images</th><th>share</th><th>outliers</th>'
            + ("<th>identity consistency</th>" if ident else "")
            + ('<th class="l">known attributes</th>' if known else "") + "</tr>"
            + "".join(rows) + "</table>")


def _galleries(galleries: list[dict], thumbs: dict) -> str:
    out = []
    for g in galleries:
        out.append(f'<div class="gallery" data-reason="{_e(g["reason"])}"><h3>{_e(g["reason"])}'
                   f' — {g["count"]:,} flagged, the {len(g["shown"])} worst shown</h3>'
                   '<div class="strip">'
                   + "".join(_thumb(i, thumbs, (f'z {i["z"]:.1f}' if i["z"] is not None
                                                else "z > 14") + f' · c{i["cluster"]}')
                             for i in g["shown"]) + "</div></div>")
    return "\n".join(out) or "<p>No outliers flagged.</p>"


def _pixel_galleries(px: dict | None, thumbs: dict) -> str:
    if not px or not px.get("rows_with_stats"):
        return ('<p>No pixel statistics for these rows: run <code>vclust pixels STORE --images '
                'ZIP --all</code>, then label again.</p>')
    out = [f'<p class="hint">{px["rows_with_stats"]:,} rows have pixel statistics. A row in a '
           'gallery is flagged as an outlier with that reason whatever its descriptors say; '
           'worst first, with the statistic behind the reason.</p>']
    for g in px["galleries"]:
        out.append(f'<div class="gallery" data-pixel="{_e(g["reason"])}"><h3>{_e(g["title"])} '
                   f'({_e(g["reason"])}) — {g["count"]:,} rows ({_pct(g["share"])})</h3>'
                   '<div class="strip">'
                   + "".join(_thumb(i, thumbs, i["caption"]) for i in g["shown"]) + "</div></div>")
    return "\n".join(out)


def _duplicates(d: dict | None, thumbs: dict) -> str:
    if not d:
        return "<p>No near-duplicates.</p>"
    cov = ("" if d["coverage"] >= 1 else
           f' The index holds {_pct(d["coverage"])} of the rows, so about that share of the pairs '
           f'is found: the share of the data scaled by it is {_pct(d["share_estimated"])}.')
    out = [f'<p class="hint">{d["groups"]:,} groups of {d["rows"]:,} rows '
           f'({_pct(d["share"])} of the data) within distance {d["distance"]:.3g} '
           f'({d["ratio"]:g} x the typical neighbour distance); the whole table: '
           f'<a href="{_e(d["table"])}">{_e(d["table"])}</a>.{cov}</p>']
    for g in d["shown"]:
        out.append(f'<div class="gallery" data-dup-group="{g["group"]}"><h3>group {g["group"]} — '
                   f'{g["size"]} rows</h3><div class="strip">'
                   + "".join(_thumb(i, thumbs, f'row {i["row"]}') for i in g["rows"])
                   + "</div></div>")
    return "\n".join(out)


def _map_section(report: dict) -> str:
    mp = report.get("map")
    if not mp:
        return '<p class="hint">No map.</p>'
    return (
        f'<p class="hint">{_e(mp["method"].upper())} of a seeded sample of {mp["points"]:,} of '
        f'{report["rows"]:,} images (every outlier included up to the sample size), in '
        f'{mp["seconds"]:.1f} s. The legend counts the points of this sample, outliers apart '
        '(their own entry, hidden until clicked): the table above counts every image. Click a '
        'legend entry to hide or show a cluster, double-click to isolate it; hover a point for '
        f'its image (thumbnails for {mp["hover_images"]:,} of the points). <b>Lasso or box-select '
        'points</b> on the 2D map (the lasso is the default drag; pan and zoom in the toolbar) to '
        'see their images beside it; click any image to enlarge it with its nearest rows.</p>'
        '<div class="filters"><label>cluster <select id="f-cluster"></select></label>'
        '<label>outlier reason <select id="f-reason"></select></label>'
        '<label>pixel reason <select id="f-pixel"></select></label>'
        '<span id="f-count" class="hint"></span></div>'
        '<div class="maps"><div><div id="map2d" class="map"></div></div>'
        '<div class="side"><div id="selection"><p class="hint">Select points on the 2D map '
        '(lasso or box) to see their images here.</p></div>'
        '<details><summary>3D map</summary><div id="map3d" class="map"></div></details>'
        '</div></div>')


def write_page(out: Path, report: dict, map_data: dict | None, thumbs: dict) -> Path:
    """Write index.html, data.js and the assets into ``out``."""
    copy_assets(out)
    data = {**report, "palette": PALETTE}
    (out / "data.js").write_text(
        "window.VCLUST_REPORT = " + json.dumps(data, separators=(",", ":")) + ";\n"
        "window.VCLUST_MAP = " + json.dumps(map_data, separators=(",", ":")) + ";\n")
    m = report["model"]
    ident = report.get("identity")
    k_note = (f' (ids up to {m["model_k"] - 1}: the model was numbered against another)'
              if m.get("model_k") and m["model_k"] != m["k"] else "")
    lede = (f'{report["rows"]:,} images · descriptor sets {_e("+".join(m["descriptors"]))} · '
            f'{_e(m["algorithm"])}, k = {m["k"]}{k_note} · {report["outliers"]["count"]:,} '
            f'outliers ({_pct(report["outliers"]["share"])})')
    if ident and ident.get("overall") is not None:
        lede += f' · identity consistency {ident["overall"]:.2f}'
    img = report["images"]
    img_line = ("no image source given (--images): no pictures" if not img["source"] else
                f'{img["thumbnails"]:,} thumbnails from {_e(img["source"])}; '
                f'{img["missing"]} missing and {img["unreadable"]} unreadable shown as placeholders')
    thr = report["outliers"].get("threshold_z")
    thr_text = f" (flagged at z &ge; {thr:.2f})" if thr == thr and thr is not None else ""
    html_text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>vclust report — model {_e(m["id"])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="assets/report.css"></head>
<body data-ready="0" data-model="{_e(m["id"])}">
<header><h1>Clusters of model {_e(m["id"])}</h1><p class="lede">{lede}</p>
<nav><a href="#overview">Overview</a><a href="#map">Map</a><a href="#clusters">Clusters</a>
<a href="#outliers">Outliers</a><a href="#pixels">Pixels</a>
<a href="#duplicates">Near-duplicates</a></nav></header>
<main>
<section id="overview"><h2>Overview</h2>
<p class="hint">Name the clusters on their cards below (kept in this browser); <b>download
names.csv</b> (<code>cluster,name,note</code>) and pass it as <code>--names</code> to
<code>vclust report</code> and <code>vclust export</code>.
<button id="names-download" type="button">download names.csv</button>
<span id="names-state"></span></p>
<div class="tables">{_metrics_table(m)}{_cluster_table(report["clusters"])}</div></section>
<section id="map"><h2>Map</h2>{_map_section(report)}</section>
<section id="clusters"><h2>Clusters</h2>
<p class="hint">Each card: the images nearest the centre (rows flagged as outliers left out), a
seeded random draw, and the border (images not flagged, almost as near another centre, with
that cluster's number). A red badge marks a flagged row and its reason. Identity consistency: the share of a
vehicle's other images (same folder) in the same cluster. Click an image to enlarge it.</p>
<div class="cards">
{"".join(_card(c, thumbs) for c in report["clusters"])}
</div></section>
<section id="outliers"><h2>Outliers</h2>
<p class="hint">A gallery per reason (the term of the outlier score that fired), worst first,
captioned with the combined z of the score{thr_text} and the cluster; z keeps ranking where the
score (0..1) rounds to 1.000.</p>
{_galleries(report["outliers"]["galleries"], thumbs)}
</section>
<section id="pixels"><h2>Pixels: broken, bright, dark, blurry, uniform</h2>
{_pixel_galleries(report.get("pixels"), thumbs)}
</section>
<section id="duplicates"><h2>Near-duplicates</h2>
{_duplicates(report.get("near_duplicates"), thumbs)}
</section>
</main>
<footer>vclust {_e(report["vclust"])} · {_e(report["created"])} · {img_line} ·
the same content for programs: <a href="report.json">report.json</a></footer>
<div id="hover-card" hidden><div class="h-img"></div><div class="h-text"></div></div>
<div id="lightbox" hidden><div class="lb-box"><button type="button" class="lb-close"
title="close (Esc)">×</button><div class="lb-main"></div><div class="lb-text"></div>
<div class="lb-near-label">nearest rows in the outlier index (most similar first)</div>
<div class="lb-near strip"></div></div></div>
<script src="assets/plotly.min.js"></script>
<script src="data.js"></script>
<script src="assets/report.js"></script>
</body></html>
"""
    path = out / "index.html"
    path.write_text(html_text)
    return path

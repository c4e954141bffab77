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
    name = thumbs.get(item["id"])
    title = _e(item["id"] + (f" — {caption}" if caption else ""))
    if name:
        img = f'<img class="thumb" src="thumbs/{_e(name)}" alt="{_e(item["id"])}" title="{title}">'
    else:
        img = f'<div class="ph" title="{title}">no image</div>'
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure class="t" data-id="{_e(item["id"])}">{img}{cap}</figure>'


def _card(c: dict, thumbs: dict) -> str:
    name = f' · {_e(c["name"])}' if c.get("name") else ""
    stats = (f'{c["size"]:,} images ({_pct(c["share"])}) · outliers {_pct(c["outlier_share"])} · '
             f'mean distance {_fmt(c["mean_distance"], 3)}')
    if c.get("identity_consistency") is not None:
        stats += f' · identity consistency {c["identity_consistency"]:.2f}'
    parts = [f'<article class="card" id="cluster-{c["id"]}" data-cluster="{c["id"]}" '
             f'style="border-left-color:{colour(c["id"])}">',
             f'<div class="head"><h3><span class="swatch" style="background:{colour(c["id"])}">'
             f'</span>Cluster {c["id"]}{name}</h3><div class="stats">{stats}</div></div>']
    if c.get("note"):
        parts.append(f'<p class="note">{_e(c["note"])}</p>')
    if c.get("reading"):
        parts.append(f'<p class="reading">Known attributes: {_e(c["reading"])}</p>')
    g = c["groups"]
    parts.append('<div class="row-label">nearest its centre — what the cluster is</div>'
                 '<div class="strip" data-group="nearest">'
                 + "".join(_thumb(i, thumbs) for i in g["nearest"]) + "</div>")
    parts.append('<div class="row-label">a seeded random draw — what it holds</div>'
                 '<div class="strip" data-group="random">'
                 + "".join(_thumb(i, thumbs) for i in g["random"]) + "</div>")
    parts.append('<div class="row-label">its border — almost as near another centre '
                 '(→ that cluster)</div><div class="strip" data-group="border">'
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
    rows = []
    for c in clusters:
        rows.append(
            f'<tr><td class="l"><a href="#cluster-{c["id"]}"><span class="swatch" '
            f'style="background:{colour(c["id"])}"></span>{c["id"]}</a></td>'
            f'<td class="l">{_e(c.get("name") or "")}</td><td>{c["size"]:,}</td>'
            f'<td>{_pct(c["share"])}</td><td>{_pct(c["outlier_share"])}</td>'
            f'<td>{_fmt(c.get("identity_consistency"), 2)}</td>'
            f'<td class="l">{_e(c.get("reading") or "")}</td></tr>')
    return ('<table><caption>Clusters</caption><tr><th class="l">cluster</th><th class="l">name'
            '</th><th>images</th><th>share</th><th>outliers</th><th>identity consistency</th>'
            '<th class="l">known attributes</th></tr>' + "".join(rows) + "</table>")


def _galleries(galleries: list[dict], thumbs: dict) -> str:
    out = []
    for g in galleries:
        out.append(f'<div class="gallery" data-reason="{_e(g["reason"])}"><h3>{_e(g["reason"])}'
                   f' — {g["count"]:,} flagged, the {len(g["shown"])} worst shown</h3>'
                   '<div class="strip">'
                   + "".join(_thumb(i, thumbs, f'{i["score"]:.3f} · c{i["cluster"]}')
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


def write_page(out: Path, report: dict, map_data: dict | None, thumbs: dict) -> Path:
    """Write index.html, data.js and the assets into ``out``."""
    copy_assets(out)
    data = {**report, "palette": PALETTE}
    (out / "data.js").write_text(
        "window.VCLUST_REPORT = " + json.dumps(data, separators=(",", ":")) + ";\n"
        "window.VCLUST_MAP = " + json.dumps(map_data, separators=(",", ":")) + ";\n")
    m = report["model"]
    ident = report.get("identity")
    lede = (f'{report["rows"]:,} images · descriptor sets {_e("+".join(m["descriptors"]))} · '
            f'{_e(m["algorithm"])}, k = {m["k"]} · {report["outliers"]["count"]:,} outliers '
            f'({_pct(report["outliers"]["share"])})')
    if ident and ident.get("overall") is not None:
        lede += f' · identity consistency {ident["overall"]:.2f}'
    img = report["images"]
    img_line = ("no image source given (--images): no pictures" if not img["source"] else
                f'{img["thumbnails"]:,} thumbnails from {_e(img["source"])}; '
                f'{img["missing"]} missing and {img["unreadable"]} unreadable shown as placeholders')
    mp = report.get("map")
    map_section = (
        f'<p class="hint">{_e(mp["method"].upper())} of a seeded sample of {mp["points"]:,} of '
        f'{report["rows"]:,} images (every outlier included up to the sample size), in '
        f'{mp["seconds"]:.1f} s. Click a legend entry to hide or show a cluster, double-click '
        'to isolate it; drag to pan or rotate, scroll to zoom; hover a point for its image '
        f'(thumbnails for {mp["hover_images"]:,} of the points).</p>'
        '<div class="maps"><div><div id="map2d" class="map"></div></div>'
        '<div><div id="map3d" class="map"></div></div></div>'
        if mp else '<p class="hint">No map.</p>')
    html_text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>vclust report — model {_e(m["id"])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="assets/report.css"></head>
<body data-ready="0">
<header><h1>Clusters of model {_e(m["id"])}</h1><p class="lede">{lede}</p>
<nav><a href="#overview">Overview</a><a href="#map">Map</a><a href="#clusters">Clusters</a>
<a href="#outliers">Outliers</a><a href="#pixels">Pixels</a>
<a href="#duplicates">Near-duplicates</a></nav></header>
<main>
<section id="overview"><h2>Overview</h2>
<p class="hint">Name the clusters after reading their images: a CSV <code>cluster,name,note</code>
passed as <code>--names</code> puts the names here and in <code>vclust export --names</code>.</p>
<div class="tables">{_metrics_table(m)}{_cluster_table(report["clusters"])}</div></section>
<section id="map"><h2>Map</h2>{map_section}</section>
<section id="clusters"><h2>Clusters</h2>
<p class="hint">Each card: the images nearest the centre, a seeded random draw, and the border
(images almost as near another centre, with that cluster's number). Identity consistency: the
share of a vehicle's other images (same folder) in the same cluster.</p>
<div class="cards">
{"".join(_card(c, thumbs) for c in report["clusters"])}
</div></section>
<section id="outliers"><h2>Outliers</h2>
<p class="hint">A gallery per reason (the term of the outlier score that fired), worst first,
with the score and the cluster.</p>
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
<script src="assets/plotly.min.js"></script>
<script src="data.js"></script>
<script src="assets/report.js"></script>
</body></html>
"""
    path = out / "index.html"
    path.write_text(html_text)
    return path

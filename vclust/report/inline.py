"""The report's content shown inline in Jupyter: a cluster's card, an outlier gallery, the map.

The content is the report's (vclust.report.content computes it for both); only the form
differs: one self-contained HTML fragment per object (``_repr_html_``), its images small JPEGs
read in place from the zip or folder (vclust.storage.images) and embedded as ``data:`` URIs,
so the fragment shows in JupyterLab, in a notebook exported to HTML (nbconvert) and offline.
The map is a Plotly figure, coloured as the report colours its clusters (report.page.colour).
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from .page import colour

#: the size of an inline thumbnail: the report's (vclust.report.THUMB_SIZE)
THUMB_SIZE = (128, 96)

GROUP_TITLES = {"nearest": "nearest its centre: what the cluster is",
                "random": "drawn at random: what it holds",
                "border": "on its border: what it is confused with"}

_STYLE = ("<style>.vclust-card{font:13px/1.35 sans-serif;border:1px solid #ccc;border-radius:6px;"
          "padding:8px 10px;margin:6px 0;max-width:1120px}"
          ".vclust-card h4{margin:0 0 4px 0;font-size:15px}"
          ".vclust-card .vc-meta{color:#444;margin-bottom:6px}"
          ".vclust-card .vc-row{display:flex;flex-wrap:wrap;gap:4px;margin:2px 0 8px 0}"
          ".vclust-card figure{margin:0;width:128px;text-align:center;font-size:11px;color:#555}"
          ".vclust-card img,.vclust-card .vc-none{width:128px;height:96px;object-fit:contain;"
          "background:#eee;display:block;border:2px solid transparent}"
          ".vclust-card .vc-out img{border-color:#d62728}"
          ".vclust-card .vc-none{background:#bbb}</style>")


def _jpeg_uri(img) -> str:
    """A PIL image as a ``data:image/jpeg`` URI (the report's JPEG quality)."""
    from ..storage.images import JPEG_QUALITY

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(source, ids, size=THUMB_SIZE) -> dict:
    """{image id: data URI, or None when missing or unreadable} for ``ids``, each image read in
    place from ``source`` (an ``ImageSource``, or None: no images) at most ``size``."""
    out = {}
    for i in dict.fromkeys(str(i) for i in ids):
        img = source.thumbnail(i, size) if source is not None else None
        out[i] = _jpeg_uri(img) if img is not None else None
    return out


def _figure(item: dict, uri: str | None, caption: str) -> str:
    title = html.escape(f"{item['id']} (row {item['row']})"
                        + (f", outlier: {item['outlier']}" if item.get("outlier") else ""))
    cls = ' class="vc-out"' if item.get("outlier") else ""
    pic = (f'<img src="{uri}" alt="{html.escape(item["id"])}" title="{title}">' if uri else
           f'<div class="vc-none" title="{title} (no image)"></div>')
    return f'<figure{cls} data-id="{html.escape(item["id"])}">{pic}' \
           f'<figcaption>{html.escape(caption)}</figcaption></figure>'


def _caption(item: dict, names: dict | None = None) -> str:
    if "other_cluster" in item:
        other = item["other_cluster"]
        name = (names or {}).get(other, "")
        return f"near {other}" + (f" ({name})" if name else "") + f", margin {item['margin']:.2f}"
    if "distance" in item:
        return f"distance {item['distance']:.3f}"
    if "score" in item:
        return f"score {item['score']:.3f}, cluster {item['cluster']}"
    return item.get("outlier", "") or ""


def card_html(card: dict, uris: dict, names: dict | None = None) -> str:
    """One cluster's card as an HTML fragment: ``card`` as ``content.cluster_cards`` makes it,
    ``uris`` {image id: data URI or None}, ``names`` {cluster: name} for the border captions."""
    name = f": {card['name']}" if card.get("name") else ""
    meta = (f"{card['size']:,} images ({card['share']:.1%}), {card['outliers']:,} flagged "
            f"({card['outlier_share']:.1%}), mean distance {card['mean_distance']:.3f}")
    if card.get("identity_consistency") is not None:
        meta += f", identity consistency {card['identity_consistency']:.3f}"
    if card.get("note"):
        meta += f"; {card['note']}"
    parts = [_STYLE, f'<div class="vclust-card" data-cluster="{card["id"]}">',
             f"<h4>cluster {card['id']}{html.escape(name)}</h4>",
             f'<div class="vc-meta">{html.escape(meta)}</div>']
    for group, items in card["groups"].items():
        parts.append(f"<div>{html.escape(GROUP_TITLES.get(group, group))} ({len(items)})</div>")
        parts.append(f'<div class="vc-row" data-group="{group}">')
        parts += [_figure(i, uris.get(i["id"]), _caption(i, names)) for i in items]
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def gallery_html(galleries: list[dict], uris: dict) -> str:
    """The outlier galleries (``content.outlier_galleries``) as one HTML fragment: per reason,
    its count and the rows shown, worst first."""
    parts = [_STYLE, '<div class="vclust-card vclust-outliers">']
    if not galleries:
        parts.append("<div>no row is flagged</div>")
    for g in galleries:
        parts.append(f"<h4>{html.escape(g['reason'])}: {g['count']:,} rows</h4>")
        parts.append(f'<div class="vc-row" data-reason="{html.escape(g["reason"])}">')
        parts += [_figure(i, uris.get(i["id"]), _caption(i)) for i in g["shown"]]
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


def map_figure(xy, frame, names: dict | None = None, title: str = ""):
    """The 2D map as a Plotly figure: one trace per cluster (the report's colours; click the
    legend to hide one), the flagged rows a trace of their own drawn as crosses; hover shows the
    id, cluster, outlier score and reason. ``frame``: the map rows' labels, in ``xy``'s order."""
    import plotly.graph_objects as go

    xy = np.asarray(xy, dtype=np.float64)
    labels = frame["cluster"].to_numpy()
    flags = frame["is_outlier"].to_numpy(bool)
    ids = frame["image_id"].to_numpy().astype(str)
    score = frame["outlier_score"].to_numpy().astype(float)
    reason = (frame["outlier_reason"].fillna("").to_numpy().astype(str)
              if "outlier_reason" in frame else np.full(len(frame), "", dtype=object))
    hover = [f"{i}<br>cluster {c}<br>score {s:.3f}" + (f" ({r})" if r else "")
             for i, c, s, r in zip(ids, labels, score, reason)]
    hover = np.asarray(hover, dtype=object)
    fig = go.Figure()
    for k in sorted(np.unique(labels).tolist()):
        at = np.flatnonzero((labels == k) & ~flags)
        name = (names or {}).get(int(k), "")
        fig.add_trace(go.Scatter(
            x=xy[at, 0], y=xy[at, 1], mode="markers", name=f"{k}" + (f" {name}" if name else ""),
            marker={"size": 4, "color": colour(int(k))}, hovertext=hover[at],
            hoverinfo="text"))
    at = np.flatnonzero(flags)
    if len(at):
        fig.add_trace(go.Scatter(
            x=xy[at, 0], y=xy[at, 1], mode="markers", name="flagged",
            marker={"size": 6, "symbol": "x", "color": [colour(int(k)) for k in labels[at]],
                    "line": {"width": 0}}, hovertext=hover[at], hoverinfo="text"))
    fig.update_layout(title=title, height=520, legend_title_text="cluster",
                      xaxis={"showticklabels": False}, yaxis={"showticklabels": False},
                      margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig

"""The report for readers without a browser: map.png (the 2D map with a categorical legend) and
clusters.md with a montage PNG per cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .page import colour


def map_png(path: Path, xy: np.ndarray, clusters: np.ndarray, outlier: np.ndarray,
            names: dict, title: str) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend switch
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(10, 7.5), dpi=110)
    ax = fig.subplots()
    handles = []
    for k in np.unique(clusters):
        m = (clusters == k) & ~outlier
        if not m.any():
            continue
        ax.scatter(xy[m, 0], xy[m, 1], s=2, c=colour(int(k)), alpha=0.6, linewidths=0,
                   rasterized=True)
        ax.annotate(str(k), np.median(xy[m], axis=0), fontsize=9, weight="bold", ha="center",
                    va="center", color="black",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.7))
        label = f"{k} · {names[int(k)]}" if names.get(int(k)) else f"cluster {k}"
        handles.append(Line2D([], [], ls="", marker="o", ms=6, color=colour(int(k)),
                              label=f"{label} ({int(m.sum()):,})"))
    if outlier.any():
        ax.scatter(xy[outlier, 0], xy[outlier, 1], c="black", marker="x", s=10, linewidths=0.6)
        handles.append(Line2D([], [], ls="", marker="x", ms=6, color="black",
                              label=f"outliers ({int(outlier.sum()):,})"))
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return path


def clusters_md(out: Path, report: dict, source, thumbs_cache: dict) -> Path:
    """clusters.md with a montage per cluster (its 24 card images) under montages/."""
    from ..storage.images import montage

    mdir = out / "montages"
    mdir.mkdir(exist_ok=True)
    m = report["model"]
    lines = [f"# Clusters of model {m['id']}", "",
             f"{report['rows']:,} images, descriptor sets {'+'.join(m['descriptors'])}, "
             f"{m['algorithm']} k = {m['k']}, {report['outliers']['count']:,} outliers "
             f"({100 * report['outliers']['share']:.2f}%). The interactive report is index.html.",
             "", "![map](map.png)", "",
             "| cluster | name | images | share | outliers | identity consistency | known attributes |",
             "|---|---|---|---|---|---|---|"]
    for c in report["clusters"]:
        ic = c.get("identity_consistency")
        lines.append(f"| {c['id']} | {c.get('name') or ''} | {c['size']:,} | "
                     f"{100 * c['share']:.1f}% | {100 * c['outlier_share']:.1f}% | "
                     f"{'' if ic is None else f'{ic:.2f}'} | {c.get('reading') or ''} |")
    lines.append("")
    for c in report["clusters"]:
        title = f"## Cluster {c['id']}" + (f" · {c['name']}" if c.get("name") else "")
        lines += [title, ""]
        if source is not None:
            rows = []
            for group in ("nearest", "random", "border"):
                rows.append([thumbs_cache.get(i["id"]) for i in c["groups"][group]])
            width = max(1, max(len(r) for r in rows))
            tiles = [t for r in rows for t in (r + [None] * (width - len(r)))]
            png = mdir / f"cluster-{c['id']:03d}.png"
            montage(tiles, cols=width, size=(96, 72)).save(png)
            lines += [f"![cluster {c['id']}](montages/{png.name})", "",
                      "Rows: nearest the centre; a seeded random draw; the border.", ""]
        lines += ["Nearest the centre: " + ", ".join(i["id"] for i in c["groups"]["nearest"][:5]),
                  ""]
    lines += ["## Outliers", ""]
    for g in report["outliers"]["galleries"]:
        lines.append(f"### {g['reason']} ({g['count']:,} flagged)")
        lines.append("")
        lines += [f"- {i['id']} (score {i['score']:.3f}, cluster {i['cluster']})"
                  for i in g["shown"][:20]]
        lines.append("")
    path = out / "clusters.md"
    path.write_text("\n".join(lines))
    return path

"""The analysts' report: a 2D picture of the clusters and a reading of each cluster.

``clusters.png``: a seeded sample of the model's reduced rows projected on their two main axes,
coloured by cluster, outliers drawn as black crosses. ``clusters.md``: the metrics table, one
row per cluster (size, share, outlier share, mean distance, the images nearest its centre and,
when a truth table is given, the attributes most of its members share), and the top outliers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _md_table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _reading(frame, truth, attrs=("body_type", "view", "colour")) -> dict[int, str]:
    """Per cluster: the majority value of each truth attribute and its share among inliers."""
    merged = frame.merge(truth, left_on="image_id", right_on="path", how="inner")
    merged = merged[~merged["is_outlier"]]
    out = {}
    for c, g in merged.groupby("cluster"):
        parts = []
        for a in attrs:
            if a in g:
                top = g[a].astype(str).value_counts(normalize=True)
                parts.append(f"{a} {top.index[0]} ({top.iloc[0]:.0%})")
        out[int(c)] = ", ".join(parts)
    return out


def write_report(store_path, model, labels_dir, out, *, truth=None, sample: int = 20_000,
                 seed: int = 0) -> list[Path]:
    import pandas as pd
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend switch

    from .labels import read_labels
    from .storage.store import Store

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = read_labels(labels_dir, model=model.model_id,
                        columns=["image_id", "row", "cluster", "distance", "outlier_score",
                                 "is_outlier"]).sort_values("row")
    store = Store.open(store_path)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(frame["row"].to_numpy(), size=min(sample, len(frame)), replace=False))
    z = model.reduce({d: store.descriptors(d)[rows] for d in model.descriptors}).compute()
    z = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(z[: min(len(z), 5000)], full_matrices=False)
    xy = z @ vt[:2].T
    picked = frame.set_index("row").loc[rows]

    fig = Figure(figsize=(9, 7), dpi=110)
    ax = fig.subplots()
    inl = ~picked["is_outlier"].to_numpy()
    sc = ax.scatter(xy[inl, 0], xy[inl, 1], c=picked["cluster"].to_numpy()[inl], cmap="tab20",
                    s=3, alpha=0.6, linewidths=0)
    ax.scatter(xy[~inl, 0], xy[~inl, 1], c="black", marker="x", s=12, linewidths=0.7,
               label="outliers")
    for c in np.unique(picked["cluster"]):
        m = (picked["cluster"].to_numpy() == c) & inl
        if m.any():
            ax.annotate(str(c), xy[m].mean(axis=0), fontsize=9, weight="bold", ha="center")
    ax.set_title(f"model {model.model_id}: {len(rows)} of {len(frame)} images, "
                 f"{'+'.join(model.descriptors)}")
    ax.set_xlabel("axis 1 of the reduced rows")
    ax.set_ylabel("axis 2")
    ax.legend(loc="upper right")
    fig.colorbar(sc, ax=ax, label="cluster")
    fig.tight_layout()
    png = out / "clusters.png"
    fig.savefig(png)

    n = len(frame)
    rows_md = []
    readings = {}
    if truth is not None and Path(truth).exists():
        tr = pd.read_csv(truth, dtype={"path": str})
        tr["path"] = tr["path"].str.replace("\\", "/", regex=False)
        readings = _reading(frame, tr)
    examples = {c["cluster"]: c["examples"] for c in model.info.get("clusters", [])}
    for c, g in frame.groupby("cluster"):
        rows_md.append({"cluster": int(c), "size": len(g), "share": len(g) / n,
                        "outliers": float(g["is_outlier"].mean()),
                        "mean distance": float(g["distance"].mean()),
                        "reading": readings.get(int(c), ""),
                        "nearest images": ", ".join(examples.get(int(c), [])[:3])})
    top = frame.nlargest(20, "outlier_score")[["image_id", "cluster", "outlier_score"]]
    text = [
        f"# Clusters of model {model.model_id}",
        "",
        f"{n} images, descriptor sets {'+'.join(model.descriptors)}, "
        f"{int(frame['is_outlier'].sum())} outliers ({frame['is_outlier'].mean():.2%}).",
        "",
        "## Partitions tried (CH higher is better, DB lower is better)",
        "",
        _md_table(model.info.get("metrics", []),
                  ["k", "algorithm", "calinski_harabasz", "davies_bouldin", "silhouette"]),
        "",
        f"Chosen k = {model.info.get('chosen_k')}.",
        "",
        "## Reading of each cluster",
        "",
        _md_table(rows_md, ["cluster", "size", "share", "outliers", "mean distance", "reading",
                            "nearest images"]),
        "",
        "## Top outliers",
        "",
        _md_table(top.to_dict("records"), ["image_id", "cluster", "outlier_score"]),
        "",
        "![clusters](clusters.png)",
        "",
    ]
    md = out / "clusters.md"
    md.write_text("\n".join(text))
    return [png, md]

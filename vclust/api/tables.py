"""Labels, cluster tables and a comparison's tables as pandas DataFrames (vclust.api)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import load_model, model_id_of, names_of


@dataclass
class Comparison:
    """A comparison's tables (``vclust compare``'s ``--out`` folder) as DataFrames.

    Attributes
    ----------
    runs : pandas.DataFrame
        One row per spec, algorithm and k (``runs.csv``); ``model_id`` set on the k kept.
    agreement : pandas.DataFrame
        Every pair of kept models: ARI, AMI, Jaccard of their outlier sets.
    cross_metrics : pandas.DataFrame
        Every kept partition scored in every spec's reduced space.
    proposal : pandas.DataFrame
        One row per kept model, best first: its ranks by the proposal's rule (``mean_rank``,
        ``ch_rank``, ``db_rank``, ``mean_ari``) with its descriptor, algorithm and k.
    proposed : str
        The model proposed; ``why`` and ``rule`` say why.
    out : pathlib.Path
        The folder (``index.html`` the comparison page).
    """

    runs: object
    agreement: object
    cross_metrics: object
    proposal: object
    proposed: str
    why: str
    rule: str
    out: Path
    summary: dict = field(default_factory=dict, repr=False)

    def contingency(self, model_a: str, model_b: str):
        """The contingency table of two kept models (rows: ``model_a``'s clusters, columns:
        ``model_b``'s), from ``contingency/<a>__<b>.csv`` (either order)."""
        import pandas as pd

        folder = self.out / "contingency"
        path = folder / f"{model_a}__{model_b}.csv"
        if path.is_file():
            return pd.read_csv(path, index_col=0)
        path = folder / f"{model_b}__{model_a}.csv"
        if path.is_file():
            return pd.read_csv(path, index_col=0).T.rename_axis(model_a)
        raise InputError(f"{folder}: no contingency of {model_a} and {model_b}")

    def _repr_html_(self) -> str:
        import html as h

        return (f"<p><b>proposed:</b> {h.escape(self.why)}</p>"
                + self.proposal.to_html(float_format=lambda v: f"{v:.3f}"))


def read_comparison(out) -> Comparison:
    """The tables of a comparison already run (its ``--out`` folder).

    Parameters
    ----------
    out : str or path-like

    Returns
    -------
    Comparison
    """
    import pandas as pd

    out = Path(out)
    if not (out / "proposal.json").is_file():
        raise InputError(f"{out}: not the folder of a vclust compare run (no proposal.json)")
    proposal = json.loads((out / "proposal.json").read_text())
    runs = pd.read_csv(out / "runs.csv", dtype={"model_id": "string"})
    kept = runs.dropna(subset=["model_id"]).set_index("model_id")
    scores = pd.DataFrame.from_dict(proposal.get("scores", {}), orient="index")
    scores.index.name = "model_id"
    table = kept[["descriptor", "algorithm", "k"]].join(scores, how="right")
    table = table.sort_values(["mean_rank", "k"], kind="stable").reset_index()
    summary = json.loads((out / "summary.json").read_text()) \
        if (out / "summary.json").is_file() else {}
    return Comparison(runs=runs, agreement=pd.read_csv(out / "agreement.csv"),
                      cross_metrics=pd.read_csv(out / "cross_metrics.csv"), proposal=table,
                      proposed=proposal.get("model_id", ""), why=proposal.get("why", ""),
                      rule=proposal.get("rule", ""), out=out, summary=summary)



def labels(labels_dir, *, registry=None, model=None, names=None, columns=None):
    """The labels of ONE model as a DataFrame, one row per image in row order.

    A labels folder holds every model that labelled it (``compare`` keeps one per spec and
    algorithm): this reads only the model meant, the registry's current one by default.

    Parameters
    ----------
    labels_dir : str or path-like
    registry : str or path-like, optional
        For its current model (the default model).
    model : str or Model, optional
        A model id (or folder, or loaded model); default: the registry's current model, else
        the only model labelled.
    names : str or path-like, optional
        The analysts' names CSV: adds ``cluster_name`` and ``cluster_note``.
    columns : list of str, optional
        The label columns to read besides ``row`` and ``cluster`` (default all of
        ``vclust.storage.labels.COLUMNS``: the README's "Labels" lists them).

    Returns
    -------
    pandas.DataFrame
        The label columns, ``batch``, and the names' columns when ``names`` is given.
    """
    from ..storage.labels import read_labels

    model_id = model_id_of(labels_dir, registry, model)
    cols = None if columns is None else list(dict.fromkeys(["row", "cluster", *columns]))
    frame = read_labels(str(labels_dir), model=model_id, columns=cols)
    frame = frame.drop(columns=["model"]).sort_values("row", ignore_index=True)
    if names is not None:
        named = names_of(names, np.unique(frame["cluster"].to_numpy()).tolist())
        frame["cluster_name"] = frame["cluster"].map(lambda c: named.get(int(c), ("", ""))[0])
        frame["cluster_note"] = frame["cluster"].map(lambda c: named.get(int(c), ("", ""))[1])
    if columns is not None:
        keep = cols + ["batch"] + [c for c in ("cluster_name", "cluster_note")
                                            if c in frame]
        frame = frame[keep]
    frame.attrs["model_id"] = model_id
    return frame


def models(registry):
    """The models of a registry, one row each, oldest first: which is current, when it was
    made, its descriptor sets (the spec), algorithm and k.

    Parameters
    ----------
    registry : str or path-like

    Returns
    -------
    pandas.DataFrame
        Indexed by model id: current, created, descriptor, algorithm, k.
    """
    import pandas as pd

    from ..model.registry import Registry

    reg = Registry(str(registry))
    current = reg.current()
    rows = []
    for model_id in reg.list():
        manifest = json.loads((reg.path(model_id) / "manifest.json").read_text())
        fit = manifest.get("fit") or {}
        rows.append({"model_id": model_id, "current": model_id == current,
                     "created": manifest.get("created"),
                     "descriptor": fit.get("spec") or "+".join(manifest.get("descriptors", [])),
                     "algorithm": fit.get("algorithm"), "k": manifest.get("chosen_k")})
    cols = ["model_id", "current", "created", "descriptor", "algorithm", "k"]
    return pd.DataFrame(rows, columns=cols).set_index("model_id")


def partitions(*, registry=None, model=None):
    """The partitions a fit tried: one row per k (and algorithm) with Calinski-Harabasz,
    Davies-Bouldin, silhouette and the within-cluster sum of squares; ``chosen`` marks the k
    kept (the table ``vclust fit`` prints).

    Parameters
    ----------
    registry : str or path-like, optional
    model : str or Model, optional
        Default: the registry's current model.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    m = load_model(registry, model)
    table = pd.DataFrame(m.info.get("metrics", []))
    if len(table) and "k" in table:
        table["chosen"] = table["k"] == m.info.get("chosen_k")
    return table


def cluster_table(cards) -> "object":
    import pandas as pd

    cols = ["cluster", "name", "note", "size", "share", "outliers", "outlier_share",
            "mean_distance", "identity_consistency"]
    rows = [{"cluster": c["id"], **{k: c[k] for k in cols[1:]}} for c in cards]
    return pd.DataFrame(rows, columns=cols).set_index("cluster")


def consistency(frame, identity: str):
    from ..numerics.metrics import identity_consistency
    from ..report import content

    groups = content.identity_of(frame["image_id"].to_numpy().astype(str), identity)
    if groups is None:
        return None
    found = identity_consistency(frame["cluster"].to_numpy(), groups)
    return None if found["overall"] is None else found


def clusters(labels_dir, *, registry=None, model=None, names=None, identity: str = "parent"):
    """A model's cluster table, from its labels: the report's figures of each cluster.

    Parameters
    ----------
    labels_dir : str or path-like
    registry : str or path-like, optional
    model : str or Model, optional
        Default: the registry's current model, else the only model labelled.
    names : str or path-like, optional
        The analysts' names CSV.
    identity : {"parent", "none"}, default "parent"
        The identity of an image for the identity consistency (``vclust report --identity``).

    Returns
    -------
    pandas.DataFrame
        Indexed by cluster: name, note, size, share, outliers, outlier_share, mean_distance,
        identity_consistency (the clusters that label rows).
    """
    from ..report import content

    frame = labels(labels_dir, registry=registry, model=model,
                   columns=["image_id", "distance", "is_outlier", "outlier_reason"])
    present = content.present_clusters(frame)
    named = names_of(names, present)
    cards = content.cluster_cards(frame, present, 0, {}, np.empty(0, np.int64), named,
                                  consistency(frame, identity))
    return cluster_table(cards)

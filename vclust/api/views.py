"""A model looked at inline in Jupyter: its cluster table, a card per cluster, the outlier
galleries and the map (vclust.api.view)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..jobs import params as P
from .common import load_model, names_of, options_of
from .tables import cluster_table, labels


class ClusterCard:
    """One cluster's card, shown inline in Jupyter (``_repr_html_``): its figures and its
    nearest, random and border images, as in the report. ``data``: the card as the report's
    ``report.json`` holds it."""

    def __init__(self, data: dict, source=None, names: dict | None = None):
        self.data, self._source, self._names = data, source, names or {}

    @property
    def image_ids(self) -> dict:
        """{group: [image id, ...]} for the nearest, random and border groups."""
        return {g: [i["id"] for i in items] for g, items in self.data["groups"].items()}

    def _repr_html_(self) -> str:
        from ..report.inline import card_html, thumbnails

        ids = [i for g in self.image_ids.values() for i in g]
        return card_html(self.data, thumbnails(self._source, ids), self._names)

    def __repr__(self) -> str:
        return f"<ClusterCard {self.data['id']} ({self.data['size']} images)>"


class Gallery:
    """The outlier galleries, a row of images per reason, worst first (``_repr_html_``)."""

    def __init__(self, galleries: list[dict], source=None):
        self.data, self._source = galleries, source

    def _repr_html_(self) -> str:
        from ..report.inline import gallery_html, thumbnails

        ids = [i["id"] for g in self.data for i in g["shown"]]
        return gallery_html(self.data, thumbnails(self._source, ids))

    def __repr__(self) -> str:
        return "<Gallery " + ", ".join(f"{g['reason']}: {g['count']}" for g in self.data) + ">"


class ModelView:
    """A model and its labels, as the report reads them: the cluster table, each cluster's card,
    the outlier galleries and the map (made by :func:`view`).

    Attributes
    ----------
    model : vclust.model.bundle.Model
    frame : pandas.DataFrame
        The model's labels, one row per image in row order (:func:`labels`).
    sample : numpy.ndarray
        The store rows of the map sample (every outlier in it, up to ``sample``).
    z : numpy.ndarray
        The sample's rows reduced as the model reduces them.
    cards : list of dict
        The cards as the report's ``report.json`` holds them.
    """

    def __init__(self, store, labels_dir, *, registry=None, model=None, images=None,
                 names=None, sample: int = 50_000, seed: int = 0, identity: str = "parent"):
        from ..report import cluster_cards_of, content
        from ..storage.images import ImageSource
        from ..storage.store import Store

        p = options_of(P.ReportParams, out=".", images=None if images is None else str(images),
                       names=None if names is None else str(names), sample=sample, seed=seed,
                       identity=identity)
        self.model = load_model(registry, model)
        self.params = p
        self.store = Store.open(str(store))
        frame = labels(labels_dir, model=self.model)
        self.frame = frame
        present = content.present_clusters(frame)
        self.names = names_of(p.names, present)
        self.source = ImageSource(p.images) if p.images else None
        # the map sample, reduced as the model reduces rows (the report's sample and seed)
        self.sample = content.map_sample(frame, p.sample, p.seed)
        z = self.model.reduce({d: self.store.descriptors(d)[self.sample]
                               for d in self.model.descriptors}).compute()
        self.z = np.asarray(z, dtype=np.float32)
        self.sample_frame = frame.iloc[np.searchsorted(frame["row"].to_numpy(), self.sample)]
        # the report's own cards: the same strips (flagged rows left out of nearest and border)
        self.cards, _ = cluster_cards_of(frame, self.model, self.z,
                                         self.sample_frame["cluster"].to_numpy(),
                                         self.sample_frame["is_outlier"].to_numpy(bool),
                                         self.sample, self.names, p)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def clusters(self):
        """The cluster table (see :func:`clusters`)."""
        return cluster_table(self.cards)

    def card(self, cluster: int) -> ClusterCard:
        """The card of ``cluster``: shown inline when it is a cell's value."""
        for c in self.cards:
            if c["id"] == int(cluster):
                return ClusterCard(c, self.source, {k: v[0] for k, v in self.names.items()})
        raise InputError(f"model {self.model_id} has no cluster {cluster} in its labels; its "
                         f"clusters: {', '.join(str(c['id']) for c in self.cards)}")

    def outliers(self, n: int = 24) -> Gallery:
        """The flagged rows, a gallery per reason worst first, ``n`` shown in all (the report's
        outlier galleries, ordered by the stored score's z)."""
        from ..numerics.pixels import PIXEL_REASONS
        from ..report import content

        return Gallery(content.outlier_galleries(self.frame, n, exclude=PIXEL_REASONS),
                       self.source)

    def map(self, method: str = "auto"):
        """The map of the sample rows in 2D as a Plotly figure, coloured by cluster.

        Parameters
        ----------
        method : {"auto", "umap", "tsne", "pca"}, default "auto"
            As ``vclust report --map-method`` (docs/maps.md).

        Returns
        -------
        plotly.graph_objects.Figure
        """
        from ..numerics.maps import choose_method, embed
        from ..report.inline import map_figure

        p = options_of(P.ReportParams, out=".", map_method=method)
        chosen = choose_method(p.map_method, len(self.z))
        xy = embed(self.z, 2, method=chosen, random_state=self.params.seed)
        return map_figure(xy, self.sample_frame, {k: v[0] for k, v in self.names.items()},
                          f"model {self.model_id}: {chosen.upper()} of {len(xy):,} of "
                          f"{len(self.frame):,} images")

    def __repr__(self) -> str:
        return f"<ModelView {self.model_id}: {len(self.frame):,} rows, {len(self.cards)} clusters>"


def view(store, labels_dir, *, registry=None, model=None, images=None, names=None,
         sample: int = 50_000, seed: int = 0, identity: str = "parent") -> ModelView:
    """Open a model and its labels for looking at: its cluster table, each cluster's card
    (``.card(k)``), the outliers (``.outliers()``) and the map (``.map()``), inline in Jupyter.

    Parameters
    ----------
    store : str or path-like
    labels_dir : str or path-like
    registry : str or path-like, optional
    model : str or Model, optional
        A model id in ``registry`` (default: its current model), a model folder or a Model.
    images : str or path-like, optional
        ``veriwild.zip`` or a folder: the images, read in place (without it, grey boxes).
    names : str or path-like, optional
        The analysts' names CSV.
    sample, seed : int
        The map sample and the seed of the random and border images: with the report's
        ``--sample`` and ``--seed`` the cards hold the report's images.
    identity : {"parent", "none"}, default "parent"

    Returns
    -------
    ModelView
    """
    return ModelView(store, labels_dir, registry=registry, model=model, images=images,
                     names=names, sample=sample, seed=seed, identity=identity)

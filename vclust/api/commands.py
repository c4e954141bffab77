"""The commands as functions (vclust.api): the same options, the same steps."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..jobs import params as P
from .common import compute, load_model, model_id_of, options_of, say
from .tables import Comparison, read_comparison


def synth(out, *, rows: int = 2000, seed: int = 0) -> dict:
    """Write a synthetic case laid out like the real delivery (``vclust synth``).

    Parameters
    ----------
    out : str or path-like
        Folder for the case: ``descriptors/*.pickle``, ``images_paths.csv``, ``truth.csv`` and
        ``veriwild.zip``.
    rows : int, default 2000
        Images.
    seed : int, default 0

    Returns
    -------
    dict
        The case's summary (``images``: the zip's path).
    """
    from ..synth import generate_case

    p = options_of(P.SynthParams, out=str(out), rows=rows, seed=seed)
    return generate_case(p.out, n_rows=p.rows, seed=p.seed,
                         progress=lambda done, total: say(f"synth: {done}/{total} rows"))


def info(store) -> dict:
    """What a store holds (``vclust info --json``): rows, descriptor sets and their widths,
    batches, chunking, compression, bytes on disk.

    Parameters
    ----------
    store : str or path-like

    Returns
    -------
    dict
    """
    from ..storage.store import Store

    return Store.open(str(store)).info()


def ingest(store, sources, *, client=None, **options) -> dict:
    """Append descriptor files or a case folder to a store as one batch (``vclust ingest``).

    Parameters
    ----------
    store : str or path-like
        The Zarr store (a path or an ``s3://`` URL), created when missing.
    sources : str or list of str
        Descriptor files or case folders.
    client : distributed.Client, optional
        Where to run (default: the client in use, else as the command line).
    **options
        ``vclust ingest``'s options by name (vclust.jobs.params.IngestParams): ``batch``,
        ``name``, ``ids``, ``chunk_rows``, ``compression``, ``on_invalid``, ``trust_pickle``.

    Returns
    -------
    dict
        The batch's summary (``batch``, ``rows``, ``dropped``, ``descriptors``, ``status``).
    """
    from ..jobs import steps

    sources = [str(sources)] if isinstance(sources, (str, Path)) else [str(s) for s in sources]
    p = options_of(P.IngestParams, sources=sources, **options)
    steps.check_sources(p)
    with compute(client):
        return steps.ingest(str(store), p, say=say)


def pixels(store, images, *, client=None, **options) -> dict:
    """Pixel statistics of batches, from the images read in place (``vclust pixels``).

    Parameters
    ----------
    store : str or path-like
    images : str or path-like
        ``veriwild.zip`` or a folder.
    client : distributed.Client, optional
    **options
        ``batches`` (list of ids) or ``all=True``; ``analysis_size``, ``block_rows``.

    Returns
    -------
    dict
    """
    from ..jobs import steps

    p = options_of(P.PixelsParams, images=str(images), **options)
    steps.check_pixels(str(store), p)
    with compute(client):
        return steps.pixels(str(store), p, say=say)


def fit(store, descriptor: str, *, registry=None, model_dir=None, client=None, **options):
    """Fit preprocessing, clusters and outlier scoring on the store's rows (``vclust fit``).

    Parameters
    ----------
    store : str or path-like
    descriptor : str
        A set (``"osnet"``) or a mixture (``"osnet+vdc_color*2"``).
    registry : str or path-like, optional
        Register the model there and make it current. Exactly one of ``registry`` and
        ``model_dir``.
    model_dir : str or path-like, optional
        Write the model to this new folder.
    client : distributed.Client, optional
    **options
        ``vclust fit``'s options by name (vclust.jobs.params.FitParams): ``k`` or ``k_range``
        (``"8:24"``), ``algorithm``, ``pca_variance``, ``scaling``, ``sample``, ``seed``,
        ``outlier_z`` or ``contamination``.

    Returns
    -------
    vclust.model.bundle.Model
        The fitted model; ``model_id`` its id, ``path`` where it was saved.
    """
    from ..jobs import steps
    from ..storage.fs import as_path

    p = options_of(P.FitParams, descriptor=descriptor, **options)
    if (model_dir is None) == (registry is None):
        raise InputError("pass exactly one of model_dir or registry")
    if model_dir is not None and as_path(str(model_dir)).exists():
        raise InputError(f"{model_dir}: exists; models are never overwritten, pick a new "
                         "model_dir")
    with compute(client, here=steps.fit_here(str(store), p)):
        model = steps.fit(str(store), p, say=say)
    path, model_id = steps.save_model(model, None if model_dir is None else str(model_dir),
                                      None if registry is None else str(registry))
    model.path, model.model_id = path, model_id
    say(f"model {model_id} saved to {path}")
    return model



def label(store, labels_dir, *, registry=None, model=None, client=None, **options) -> dict:
    """Apply a model to batches of the store, writing Parquet labels (``vclust label``).

    Parameters
    ----------
    store : str or path-like
    labels_dir : str or path-like
        The labels dataset (``model=<id>/batch=<id>/``).
    registry : str or path-like, optional
        The registry holding ``model`` (default: its current model).
    model : str or Model, optional
        A model id in ``registry``, a model folder, or a loaded model.
    client : distributed.Client, optional
    **options
        ``vclust label``'s options by name (vclust.jobs.params.LabelParams): ``batches``
        (list of ids) or ``all=True``; ``pixel_z``, ``no_pixels``, the pixel bounds.

    Returns
    -------
    dict
        ``model`` (its id) and ``labelled`` (the batches and their rows).
    """
    from ..jobs import steps

    p = options_of(P.LabelParams, **options)
    steps.check_labels_out(str(labels_dir))
    m = load_model(registry, model)
    with compute(client, here=steps.label_here(str(store), m, p.batches, p.all),
                 command="label"):
        return steps.label(str(store), m, str(labels_dir), batches=p.batches, all_batches=p.all,
                           say=say, params=p)




def export(labels_dir, csv, *, registry=None, model=None, names=None) -> int:
    """The CSV of one model's labels (``vclust export``: the same columns), one row per image in
    row order, ``cluster_name`` too when ``names`` is given.

    Parameters
    ----------
    labels_dir : str or path-like
    csv : str or path-like
        The file to write (written whole, then renamed into place).
    registry : str or path-like, optional
        For its current model (default when ``model`` is not given).
    model : str or Model, optional
        The model id (default: the registry's current model, else the only model labelled).
    names : str or path-like, optional
        The analysts' names CSV (``cluster,name[,note]``): adds ``cluster_name``.

    Returns
    -------
    int
        Rows written.
    """
    from ..storage.export import export_csv

    p = options_of(P.ExportParams, csv=str(csv), names=None if names is None else str(names))
    model_id = model_id_of(labels_dir, registry, model) if (registry or model) else None
    n = export_csv(str(labels_dir), p.csv, model=model_id, names=p.names)
    say(f"wrote {n} rows to {p.csv}")
    return n


def promote(registry, model_id: str, *, labels_dir=None, names=None) -> dict:
    """Make a registered model current, its clusters numbered to continue the current model's
    (``vclust promote``).

    Parameters
    ----------
    registry : str or path-like
    model_id : str
    labels_dir : str or path-like, optional
        Labels of both models, needed when the model was not numbered against the current
        one (``compare`` numbers its models so).
    names : str or path-like, optional
        The names CSV, rewritten to follow the promoted model's ids (the old file kept as
        ``.bak``).

    Returns
    -------
    dict
        ``model`` (the id now current), ``previous``, ``renumbered``, ``mapping``[, ``names``].
    """
    from ..model.succession import promote as promote_model

    p = options_of(P.PromoteParams, model_id=str(model_id),
                   names=None if names is None else str(names))
    return promote_model(str(registry), p.model_id,
                         labels_dir=None if labels_dir is None else str(labels_dir),
                         names=p.names, say=say)



def compare(store, descriptors, *, registry, labels_dir, out, client=None,
            **options) -> Comparison:
    """Descriptor sets, mixtures and algorithms side by side (``vclust compare``): every k
    fitted, the best per spec and algorithm registered (not current) and labelling every row,
    the agreement tables and the proposal.

    Parameters
    ----------
    store : str or path-like
    descriptors : str or list of str
        Specs: sets and mixtures (``"osnet+vdc_type*2"``).
    registry, labels_dir, out : str or path-like
        Where the kept models, their labels and the tables (and ``index.html``) go.
    client : distributed.Client, optional
    **options
        ``vclust compare``'s options by name (vclust.jobs.params.CompareParams):
        ``algorithm`` ("kmeans,gmm"), ``k_range`` ("6:16"), ``fit_sample``, ``seed``,
        ``map_sample``, ``map_method``, ``identity``, ...

    Returns
    -------
    Comparison
    """
    from ..jobs.compare import check, compare as run

    descriptors = [descriptors] if isinstance(descriptors, str) else list(descriptors)
    p = options_of(P.CompareParams, descriptors=descriptors, out=str(out), **options)
    check(str(store), p, str(registry), str(labels_dir))
    with compute(client, command="compare", map_method=p.map_method):
        run(str(store), p, str(registry), str(labels_dir), say=say)
    return read_comparison(p.out)

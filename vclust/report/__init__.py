"""The analysts' report: every cluster and every outlier, with their images, on an interactive map.

``write_report`` writes into one folder that opens from disk with no server and no network:

    index.html        overview (partitions tried, clusters), the 2D and 3D map, a card per
                      cluster with its images, a gallery per outlier reason, the pixel
                      galleries (broken, bright, dark, blurry, uniform) and the near-duplicate
                      groups
    near_duplicates.csv  group,row,image_id of every near-duplicate group (vclust.report.duplicates)
    data.js           the same content for the page's script, and the map's points
    report.json       the same content for programs (no map coordinates)
    assets/           plotly.min.js (from the plotly package), report.js, report.css
    thumbs/           one small JPEG per image shown, written once
    map.png           the 2D map with a categorical legend; clusters.md with montages/, for
                      readers without a browser

What each part shows is computed in ``content``; the page in ``page``; the static pictures in
``static``. Images are read in place from a zip or a folder (vclust.storage.images); without one the
report has no pictures of images and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import content, evidence

THUMB_SIZE = (128, 96)


def _quiet(_msg):
    pass


def open_inputs(model, params):
    """The cheap checks, before any cluster starts: the names file against the model's clusters,
    the image source (a zip that is not a zip, a missing folder), the output folder. Returns
    (names, image source or None)."""
    from ..storage.images import ImageSource
    from ..storage.names import read_names

    names = read_names(params.names, int(model.clusterer.n_clusters_)) if params.names else {}
    source = ImageSource(params.images) if params.images else None
    out = Path(params.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; expected a folder for the report")
    return names, source


def worker_submit():
    """``submit(fn, *args)`` onto the Dask workers when a client is connected, else None: the
    map layouts (one thread each in umap-learn) then run side by side in worker processes."""
    from ..numerics.blocks import distributed_client

    client = distributed_client()
    if client is None or not client.scheduler_info().get("workers"):
        return None

    def submit(fn, *args):
        # arrays go to the workers once, as data, not inside the task graph
        args = [client.scatter(a) if isinstance(a, np.ndarray) and a.nbytes > 1_000_000 else a
                for a in args]
        return client.submit(fn, *args, pure=False)

    return submit


#: processes the map layouts run in when no cluster is connected, from SIDE_ROWS map rows:
#: below, the layouts take less than a process's start (about 2 s, umap-learn imported)
LAYOUT_PROCESSES = 2
SIDE_ROWS = 5_000


@contextlib.contextmanager
def layout_submit():
    """``submit(fn, *args)`` for the map layouts, for the time of the ``with``: onto the Dask
    workers when a client is connected; else onto LAYOUT_PROCESSES side processes of this
    machine (``vclust.report.side``). umap-learn with a seed runs a layout on one thread: the
    2D and 3D layouts of 50,000 rows took 36.4 s one after the other in one process, 19.1 s in
    two (the same coordinates; benchmarks/RESULTS.md). None on one core."""
    submit = worker_submit()
    if submit is not None or (os.cpu_count() or 1) < 2:
        yield submit
        return
    from .side import side_submit

    with side_submit(LAYOUT_PROCESSES) as side:
        yield side


#: rows whose combined z is asked of the outlier index at most (a seeded draw beyond): on the
#: 416k case 17,479 rows' scores round to 1 (glare and empty frames), and the gallery shows 200
EXACT_Z_ROWS = 4_000
Z_DIGITS = 14.0  # above this z the float32 score has lost its digits (1 - score < about 1e-5)


def _with_z(frame, model, store, say, seed, known=None):
    """``frame`` with ``z``, the combined z of each row's outlier score: from the stored score
    where it has the digits, asked of the outlier index where the float32 score rounded to 1
    (for a seeded draw of EXACT_Z_ROWS of them when there are more: the others get NaN, known
    only to lie above Z_DIGITS, and rank after them)."""
    z = content.z_of_score(frame["outlier_score"].to_numpy())
    lost = np.flatnonzero(~np.isfinite(z) | (z > Z_DIGITS))
    if len(lost):
        ask = lost
        if len(lost) > EXACT_Z_ROWS:
            rng = np.random.default_rng([seed, 3])
            ask = np.sort(rng.choice(lost, EXACT_Z_ROWS, replace=False))
        rows = frame["row"].to_numpy()[ask]
        exact = evidence.row_evidence(model, store, frame, rows, exact_z_rows=rows,
                                      known=known)["z"]
        z[lost] = np.nan
        z[ask] = [exact[int(r)] for r in rows]
        say(f"report: the combined z of {len(ask):,} of the {len(lost):,} rows whose score "
            "rounds to 1, asked of the outlier index")
    return frame.assign(z=z)


def _map_data(xy, xyz, s_frame, s_z, thumbs) -> dict:
    """The map's points for the page's script (coordinates, cluster, outlier flag and reason,
    z, id, thumbnail)."""
    s_ids = s_frame["image_id"].to_numpy().astype(str)
    thumb_names = sorted(set(thumbs.values()))
    thumb_index = {n: i for i, n in enumerate(thumb_names)}
    reasons = (s_frame["outlier_reason"].fillna("").to_numpy().astype(str)
               if "outlier_reason" in s_frame else None)
    return {
        "x": np.round(xy[:, 0], 4).tolist(), "y": np.round(xy[:, 1], 4).tolist(),
        "x3": np.round(xyz[:, 0], 4).tolist(), "y3": np.round(xyz[:, 1], 4).tolist(),
        "z3": np.round(xyz[:, 2], 4).tolist(),
        "cluster": s_frame["cluster"].to_numpy().astype(int).tolist(),
        "outlier": s_frame["is_outlier"].to_numpy().astype(int).tolist(),
        "score": np.round(s_frame["outlier_score"].to_numpy().astype(float), 4).tolist(),
        "z": np.round(np.asarray(s_z, dtype=float), 2).tolist(),
        "id": s_ids.tolist(),
        "reason": reasons.tolist() if reasons is not None else None,
        "thumbs": ["thumbs/" + n for n in thumb_names],
        "thumb": [thumb_index.get(thumbs.get(i), -1) for i in s_ids],
    }


def _image_rows(frame, near, thumbs, wanted) -> dict:
    """Per image the page has (shown, a neighbour, or a map thumbnail): ``[cluster, outlier
    reason or "", z, thumbnail file or "", [[neighbour id, distance], ...]]`` (neighbours for
    the shown images only), for the enlarged view."""
    rows = frame["row"].to_numpy()
    ids = frame["image_id"].to_numpy().astype(str)
    keep = np.flatnonzero(np.isin(ids, np.asarray(sorted(wanted), dtype=str)))
    why = content._reason_of(frame)
    out = {ids[i]: [int(frame["cluster"].iat[i]), str(why[i]), round(float(frame["z"].iat[i]), 2),
                    thumbs.get(ids[i], ""), []] for i in keep}
    pos = np.searchsorted(rows, near["rows"])
    for p, nn, dd in zip(pos, near["neighbours"], near["distances"]):
        at = np.searchsorted(rows, nn)
        ok = (at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == nn)
        out.setdefault(ids[p], [int(frame["cluster"].iat[p]), str(why[p]),
                                round(float(frame["z"].iat[p]), 2), thumbs.get(ids[p], ""), []])
        out[ids[p]][4] = [[ids[a], round(float(d), 4)] for a, d, o in zip(at, dd, ok) if o]
    return out


def cluster_cards_of(frame, model, z, s_labels, s_flags, sample, names, params):
    """(the cluster cards (content.cluster_cards) of the clusters that label rows, with their
    identity consistency and, given a truth.csv, their known attributes; the identity
    consistency over every row, or None)."""
    import pandas as pd

    from ..numerics.metrics import identity_consistency

    present = content.present_clusters(frame)
    borders = content.border_rows(z, s_labels, model.clusterer.cluster_centers_,
                                  content.IMAGES_PER_GROUP, present, skip=s_flags)
    consistency = None
    groups = content.identity_of(frame["image_id"].to_numpy(), params.identity)
    if groups is not None:
        consistency = identity_consistency(frame["cluster"].to_numpy(), groups)
        if consistency["overall"] is None:
            consistency = None  # ids carry no identity (no folder holds two images)
    cards = content.cluster_cards(frame, present, params.seed, borders, sample, names,
                                  consistency)
    if params.truth and Path(params.truth).exists():
        truth = pd.read_csv(params.truth, dtype={"path": str}, keep_default_na=False)
        truth["path"] = truth["path"].str.replace("\\", "/", regex=False)
        readings = content.truth_readings(frame, truth)
        for c in cards:
            c["reading"] = readings.get(c["id"], "")
    return cards, consistency


def _galleries(frame, model, store, out, params, say):
    """(outlier galleries, pixel galleries, pixel statistics or None, near-duplicates)."""
    from .duplicates import near_duplicates, summary as dup_summary, tight_distance
    from ..numerics.pixels import COLUMNS, PIXEL_REASONS
    from ..storage.pixels import batches_with_pixels, read

    galleries = content.outlier_galleries(frame, params.outliers, exclude=PIXEL_REASONS)
    stats = read(store.path, 0, store.n_rows, COLUMNS) if batches_with_pixels(store) else None
    pixel_galleries = content.pixel_galleries(frame, stats, params.pixel_images)
    tight = tight_distance(model, params.duplicate_ratio)
    # outliers are left out: glare and empty frames are alike by nature (their own galleries
    # show them), so among them "near-duplicate" says nothing (the demo's groups were all such)
    dup_groups = near_duplicates(frame[~frame["is_outlier"].to_numpy(bool)], tight)
    dup_groups.to_csv(out / "near_duplicates.csv", index=False)
    dups = {**dup_summary(dup_groups, len(frame), len(model.outliers.ref_rows_), tight,
                          params.duplicate_ratio),
            "table": "near_duplicates.csv",
            "shown": content.duplicate_gallery(dup_groups, {}, params.pixel_images)}
    say(f"report: {dups['groups']} near-duplicate groups of {dups['rows']} rows "
        f"({dups['share']:.2%}) within distance {tight:.3g}")
    return galleries, pixel_galleries, stats, dups


def write_report(store_path, model, labels_dir, params, say=_quiet, inputs=None) -> dict:
    """Write the report of ``model`` (its labels in ``labels_dir``) to ``params.out``.

    ``params`` is a ``vclust.params.ReportParams``; ``inputs`` what ``open_inputs`` returned,
    when the caller checked them already. Returns the report dict (report.json).
    """
    import dask

    from ..numerics.maps import choose_method, start_2d_3d
    from ..storage.labels import read_labels
    from ..storage.store import Store
    from .page import write_page

    t0 = time.perf_counter()
    names, source = inputs or open_inputs(model, params)
    out = Path(params.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store.open(store_path)

    frame = read_labels(labels_dir, model=model.model_id).sort_values("row", ignore_index=True)
    say(f"report: {len(frame):,} labelled rows of model {model.model_id}")

    # the map sample, reduced as the model reduces rows; its layouts start as soon as it is
    # (in side processes, or the cluster's workers) and run while the rest is made here
    sample = content.map_sample(frame, params.sample, params.seed)
    method = choose_method(params.map_method, len(sample))
    side = method == "umap" and len(sample) >= SIDE_ROWS
    with layout_submit() if side else contextlib.nullcontext(worker_submit()) as submit:
        raw = {d: store.descriptors(d)[sample] for d in model.descriptors}
        z, raw = dask.compute(model.reduce(raw), raw)  # one read: the rows kept for the evidence
        z = np.asarray(z, dtype=np.float32)
        say(f"report: {len(sample):,} map rows read and reduced")
        t_map = time.perf_counter()
        finish = start_2d_3d(z, method=method, random_state=params.seed, submit=submit)
        what = f"report: {method} map of {len(z):,} rows (2D and 3D)"
        beside = submit is not None and method == "umap"  # what start_2d_3d sends elsewhere
        if not beside:  # made here, now
            maps, map_seconds = _wait_maps(finish, say, what, t_map), time.perf_counter() - t_map
        else:
            say(f"{what} started beside the rest")
        known = evidence.Rows(sample, raw, z)
        pos = np.searchsorted(frame["row"].to_numpy(), sample)
        s_frame = frame.iloc[pos]
        s_labels = s_frame["cluster"].to_numpy()
        cards, consistency = cluster_cards_of(frame, model, z, s_labels,
                                              s_frame["is_outlier"].to_numpy(bool), sample,
                                              names, params)
        frame = _with_z(frame, model, store, say, params.seed, known)
        galleries, pixel_galleries, stats, dups = _galleries(frame, model, store, out, params,
                                                             say)
        # images: every card and gallery image, their nearest rows (shown when one is
        # enlarged), then a seeded share of the map's points for hover and selection
        shown_items = [i for c in cards for g in c["groups"].values() for i in g]
        shown_items += [i for g in galleries for i in g["shown"]]
        shown_items += [i for g in pixel_galleries for i in g["shown"]]
        shown_items += [i for g in dups["shown"] for i in g["rows"]]
        shown = [i["id"] for i in shown_items]
        near = evidence.row_evidence(model, store, frame, [i["row"] for i in shown_items],
                                     known=known)
        del known, raw
        ids_of = dict(zip(frame["row"].to_numpy().tolist(), frame["image_id"].to_numpy()))
        near_ids = [str(ids_of.get(int(r), "")) for r in near["neighbours"].ravel()]
        say(f"report: the {len(near['rows']):,} shown rows' nearest rows from the outlier index")
        s_ids = s_frame["image_id"].to_numpy().astype(str)
        rng = np.random.default_rng([params.seed, 2])
        hover_extra = s_ids[rng.permutation(len(s_ids))[:params.hover_images]]
        wanted = list(dict.fromkeys(shown + [i for i in near_ids if i] + list(hover_extra)))
        thumbs, img_counts = _thumbnails(source, wanted, out, say)
        if beside:  # its time: from its start until both layouts are back
            maps, map_seconds = _wait_maps(finish, say, what, t_map), time.perf_counter() - t_map
    say(f"report: {method} map of {len(z):,} rows in {map_seconds:.1f} s")
    xy, xyz = maps

    report = _report_dict(model, frame, cards, consistency, galleries, pixel_galleries, stats,
                          dups, params, img_counts, method, len(z), map_seconds, s_ids, thumbs)
    map_data = _map_data(xy, xyz, s_frame, frame["z"].to_numpy()[pos], thumbs)
    map_data["rows"] = _image_rows(frame, near, thumbs, set(wanted))
    write_page(out, report, map_data, thumbs)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _write_static(out, report, model, xy, s_labels, s_frame, len(z), len(frame), method,
                  source, shown, thumbs)
    say(f"report: {out / 'index.html'} in {time.perf_counter() - t0:.1f} s")
    return report


def _wait_maps(finish, say, what, since):
    """``finish()`` of the map layouts, saying the time since they began while it waits: a
    layout is one call with no parts to count."""
    from .heartbeat import Heartbeat

    with Heartbeat(say, f"{what} running", since=since):
        return finish()


def _thumbnails(source, wanted, out, say):
    """The thumbnails of ``wanted`` (image ids) under ``out/thumbs``: ({id: file}, counts)."""
    from ..storage.images import write_thumbnails

    if source is None:
        return {}, {"missing": 0, "unreadable": 0, "thumbnails": 0}
    result = write_thumbnails(source, wanted, out / "thumbs", size=THUMB_SIZE)
    thumbs = {k: v for k, v in result["thumbs"].items() if v}
    say(f"report: {len(thumbs):,} thumbnails ({result['missing']} missing, "
        f"{result['unreadable']} unreadable)")
    return thumbs, {"missing": result["missing"], "unreadable": result["unreadable"],
                    "thumbnails": len(thumbs)}


def _report_dict(model, frame, cards, consistency, galleries, pixel_galleries, stats, dups,
                 params, img_counts, method, n_points, map_seconds, s_ids, thumbs) -> dict:
    """report.json: the overview, the cards, the galleries and how the map was made."""
    from .. import __version__
    from ..numerics.pixels import PIXEL_REASONS

    flags = frame["is_outlier"].to_numpy()
    info = model.info
    scorer = model.outliers
    report = {
        "format": "vclust-report", "version": 2, "vclust": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"id": model.model_id, "descriptors": list(model.descriptors),
                  "algorithm": info.get("fit", {}).get("algorithm", ""), "k": len(cards),
                  "model_k": int(model.clusterer.n_clusters_), "chosen_k": info.get("chosen_k"),
                  "metrics": info.get("metrics", [])},
        "rows": int(len(frame)),
        "identity": None if consistency is None else {
            "level": params.identity, "overall": round(consistency["overall"], 4),
            "groups": consistency["groups"], "rows": consistency["rows"]},
        "images": {"source": str(params.images) if params.images else None, **img_counts},
        "clusters": cards,
        "outliers": {"count": int(flags.sum()), "share": round(float(flags.mean()), 6),
                     "threshold_z": round(float(getattr(scorer, "threshold_z_", np.nan)), 3),
                     "galleries": galleries},
        "pixels": {"rows_with_stats": int(stats["have"][frame["row"].to_numpy()].sum())
                   if stats is not None else 0, "galleries": pixel_galleries,
                   "reasons": list(PIXEL_REASONS)},
        "near_duplicates": dups,
        "map": {"method": method, "points": int(n_points), "sample": params.sample,
                "seed": params.seed, "seconds": round(map_seconds, 2),
                "hover_images": int(sum(1 for i in s_ids if i in thumbs))},
    }
    return report


def _write_static(out, report, model, xy, s_labels, s_frame, n_points, n_rows, method, source,
                  shown, thumbs):
    """map.png and clusters.md (a montage per cluster) beside the page."""
    from .static import clusters_md, map_png

    map_png(out / "map.png", xy, s_labels, s_frame["is_outlier"].to_numpy(),
            {c["id"]: c["name"] for c in report["clusters"]},
            f"model {model.model_id}: {method.upper()} of {n_points:,} of {n_rows:,} images")
    cache = {}
    if source is not None:
        from PIL import Image

        for i in shown:
            name = thumbs.get(i)
            cache[i] = Image.open(out / "thumbs" / name).convert("RGB") if name else None
    clusters_md(out, report, source, cache)

"""The saved state of an OutlierScorer (vclust.numerics.outliers): parameters and arrays, no
pickle. A scorer saved before a later term was added loads without that term's arrays and
scores as it did then."""

from __future__ import annotations

import numpy as np

from .refindex import ReferenceIndex

#: the fitted arrays of a scorer, saved under their names without the trailing underscore
ARRAYS = ("kdist_", "lrd_", "cluster_median_", "cluster_log_mad_", "cluster_share_",
          "cluster_tight_", "cluster_degenerate_", "knn_norm_", "lof_norm_", "tight_norm_",
          "tight_own_norm_", "cluster_own_centre_", "cluster_own_median_",
          "cluster_own_mad_", "cluster_own_used_", "origin_", "faint_norm_", "far_log_",
          "group_norm_", "ref_lift_")
#: arrays a scorer saved before the group and centre terms ran in both spaces lacks (it scores
#: as it did then: those parts in the clustering rows only), and before the faint part of the
#: centre term (origin_, faint_norm_: it scores without it), and before the group part of the
#: isolated term (far_log_, group_norm_) and the neighbours' part of the tight term (ref_lift_)
OPTIONAL = ("tight_own_norm_", "cluster_own_centre_", "cluster_own_median_",
            "cluster_own_mad_", "cluster_own_used_", "origin_", "faint_norm_", "far_log_",
            "group_norm_", "ref_lift_")


def to_state(scorer):
    """(params, arrays) of a fitted scorer."""
    params = scorer.get_params()
    index_params, index_arrays = scorer.ref_index_.state()
    params.update(threshold_=scorer.threshold_, threshold_z_=scorer.threshold_z_,
                  fit_outlier_rate_=scorer.fit_outlier_rate_, tight_rank_=scorer.tight_rank_,
                  index=index_params, projection=None)
    # a scorer loaded from an older state lacks some OPTIONAL arrays: saved again without them
    arrays = {k.rstrip("_"): getattr(scorer, k) for k in ARRAYS
              if k not in OPTIONAL or getattr(scorer, k, None) is not None}
    arrays.update(reference=scorer.reference_, ref_rows=scorer.ref_rows_)
    arrays.update({f"index/{k}": v for k, v in index_arrays.items()})
    if scorer.projection_ is not None:
        from .preprocess import MixturePreprocessor

        p, a = scorer.projection_.to_state()
        params["projection"] = {"mixture": isinstance(scorer.projection_, MixturePreprocessor),
                                "params": p}
        arrays["reference_z"] = scorer.reference_z_
        arrays.update({f"projection/{k}": v for k, v in a.items()})
    return params, arrays


def from_state(cls, params, arrays):
    """A scorer of class ``cls`` from ``to_state``'s (params, arrays)."""
    from .preprocess import MixturePreprocessor, Preprocessor

    obj = cls(**{k: params[k] for k in cls._param_names() if k in params})  # older: no threshold_rows
    obj.threshold_, obj.threshold_z_ = params["threshold_"], params["threshold_z_"]
    obj.fit_outlier_rate_ = params["fit_outlier_rate_"]
    obj.tight_rank_ = int(params["tight_rank_"])
    for k in ARRAYS:
        if k.rstrip("_") in arrays:
            setattr(obj, k, np.asarray(arrays[k.rstrip("_")]))
        elif k not in OPTIONAL:
            raise KeyError(f"outlier scorer state without {k.rstrip('_')!r}")
    obj.cluster_degenerate_ = obj.cluster_degenerate_.astype(bool)
    if getattr(obj, "cluster_own_used_", None) is not None:
        obj.cluster_own_used_ = obj.cluster_own_used_.astype(bool)
    proj = params.get("projection")
    obj.projection_, obj.reference_z_ = None, None
    if proj is not None:
        sub = {k[len("projection/"):]: v for k, v in arrays.items() if k.startswith("projection/")}
        kind = MixturePreprocessor if proj["mixture"] else Preprocessor
        obj.projection_ = kind.from_state(proj["params"], sub)
        obj.reference_z_ = np.ascontiguousarray(arrays["reference_z"], dtype=np.float32)
    index_arrays = {k[len("index/"):]: v for k, v in arrays.items() if k.startswith("index/")}
    obj.ref_index_ = ReferenceIndex.from_state(
        arrays["reference"], arrays["ref_rows"], params["index"], index_arrays,
        obj.index_neighbors, obj.random_state)
    return obj

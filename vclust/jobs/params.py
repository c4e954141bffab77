"""The parameter table: every option of every command and job step, declared once.

Each step's options are one pydantic model: type, default, range and help text in one
declaration. The command line is built from these models (``add_options``) and a job spec's
sections are these models, so ``vclust fit ...`` and a ``fit:`` section of a job spec validate
the same way and reach the same function with the same object::

    vclust fit STORE --seed 3 --chunk-rows ...   ->  FitParams(seed=3)  ->  jobs.fit(store, params)
    fit: {seed: 3}   (jobs/*.yaml)               ->  FitParams(seed=3)  ->  jobs.fit(store, params)

What is not an option of a step (the store, the model or registry a command reads or writes,
the cluster to run on) is declared once in vclust.cli or, for job specs, in ``runner.JobSpec``.
Library defaults that the numerics own (the PCA variance, the outlier threshold, the drift
thresholds) are read from their modules, not restated.
"""

from __future__ import annotations

import argparse
import typing
from typing import Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import InputError
from ..numerics import ALGORITHMS, FIT_SAMPLE, DEFAULT_MAD_Z, DEFAULT_PCA_VARIANCE
from ..numerics.drift import DEFAULT_THRESHOLDS
from ..numerics.pixels import ABSOLUTE as PIXEL_ABSOLUTE
from ..numerics.pixels import ANALYSIS_SIZE, DEFAULT_PIXEL_Z
from ..report.duplicates import DEFAULT_RATIO as DUPLICATE_RATIO
from ..storage.pixels import BLOCK_ROWS as PIXEL_BLOCK_ROWS
from ..storage.store import COMPRESSIONS, DEFAULT_CHUNK_ROWS

SCALINGS = ("l2", "standardize", "l2+standardize", "none")
DEFAULT_K = 12


def option(default=..., help: str = "", *, flag: str | None = None, metavar: str | None = None,
           positional: bool = False, cli: bool = True, **constraints):
    """A step option: pydantic ``Field`` plus how the command line shows it.

    ``flag`` overrides the flag derived from the name (``k_range`` -> ``--k-range``);
    ``positional`` makes it a positional argument; ``cli=False`` keeps it out of the command
    line (a job-spec-only option).
    """
    extra = {"flag": flag, "metavar": metavar, "positional": positional, "cli": cli}
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def seed_option():
    return option(0, "random seed: the same inputs and seed give the same output")


def parse_spec(spec: str) -> dict[str, float]:
    """A descriptor spec ``NAME[*W][+NAME[*W]...]`` -> {name: weight}, in order.

    ``osnet+vdc_color*2``: a mixture of osnet and vdc_color in which vdc_color carries twice the
    total variance of osnet (each set reduced, scaled to equal total variance, then by the
    square root of its weight, so a weight is the set's share of squared distances, relative).
    A weight is a positive finite number; left out it is 1. Raises ValueError with the reason.
    """
    import math

    parts = [s.strip() for s in str(spec).split("+")]
    out: dict[str, float] = {}
    for part in parts:
        name, star, w = part.partition("*")
        name = name.strip()
        if not name:
            raise ValueError(f"must look like NAME or NAME+NAME[*W]; got '{spec}'")
        weight = 1.0
        if star:
            try:
                weight = float(w)
            except ValueError:
                weight = float("nan")
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"weight '{w.strip()}' of {name} must be a positive number; "
                                 f"got '{spec}'")
        if name in out:
            raise ValueError(f"names {name} twice; got '{spec}'")
        out[name] = weight
    return out


def canonical_spec(spec: str) -> str:
    """The spec written one way: ``osnet + vdc_color*2.0`` -> ``osnet+vdc_color*2``."""
    return "+".join(n if w == 1 else f"{n}*{w:g}" for n, w in parse_spec(spec).items())


class Params(BaseModel):
    """Base of every step's options: unknown keys are refused, naming the key."""

    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- the steps


class SynthParams(Params):
    out: str = option(..., "folder for the generated case", positional=True, metavar="OUT_DIR")
    rows: int = option(2000, "images", ge=10, metavar="N")
    seed: int = seed_option()


class IngestParams(Params):
    sources: list[str] = option(..., "descriptor file (.pickle .npy .npz .parquet .csv) or a "
                                "case folder (descriptors/*.pickle + images_paths.csv)",
                                positional=True, metavar="SOURCE", min_length=1)
    name: Optional[str] = option(None, "descriptor set name (one file only; default: the "
                                 "file's stem)")
    ids: Optional[str] = option(None, "image ids, one row per descriptor row (column "
                                "paths/path/id; default: the case's images_paths.csv or "
                                "generated)", metavar="CSV")
    batch: Optional[str] = option(None, "batch id (default: a UTC timestamp)", metavar="ID")
    chunk_rows: int = option(DEFAULT_CHUNK_ROWS, "rows per Zarr chunk when the store is created",
                             ge=1, metavar="N")
    compression: Optional[Literal[COMPRESSIONS]] = option(
        None, "descriptor chunk compression when the store is created (default none: "
        "descriptors compress little and reads are faster; lz4 or zstd for slow shared storage)")
    on_invalid: Literal["error", "drop"] = option(
        "error", "rows with NaN/Inf: refuse the batch, or drop them and record their ids")
    trust_pickle: bool = option(False, "unpickle without restrictions (only for files you trust)")


class FitParams(Params):
    descriptor: str = option(..., "descriptor set, or a mixture NAME+NAME: each set reduced, "
                             "weighted to equal total variance, concatenated; NAME*W gives a set "
                             "W times the variance of the others (README: mixture weights)",
                             metavar="NAME[*W][+NAME[*W]...]")
    k: Optional[int] = option(None, f"number of clusters (default {DEFAULT_K})", ge=2)
    k_range: Optional[str] = option(None, "fit every k in A..B, score each by Calinski-Harabasz,"
                                    " Davies-Bouldin and silhouette, keep the best (README: "
                                    "choosing k)", metavar="A:B")
    algorithm: Literal[ALGORITHMS] = option("kmeans", "clustering algorithm")
    pca_variance: float = option(DEFAULT_PCA_VARIANCE, "share of variance the PCA keeps "
                                 "(docs/preprocessing.md)", gt=0, le=1, metavar="SHARE")
    scaling: Literal[SCALINGS] = option("l2", "row/column scaling before the PCA")
    sample: Optional[int] = option(None, "fit on a seeded sample of N rows (labels still cover "
                                   "every row)", ge=2, metavar="N")
    seed: int = seed_option()
    outlier_z: float = option(DEFAULT_MAD_Z, "is_outlier: combined outlier z above median + Z "
                              "MAD over the fit rows", gt=0, metavar="Z")
    contamination: Optional[float] = option(None, "is_outlier: the SHARE most anomalous fit rows"
                                            " instead (e.g. 0.02); not with --outlier-z",
                                            gt=0, lt=0.5, metavar="SHARE")

    @model_validator(mode="before")
    @classmethod
    def _one_of(cls, data):
        if isinstance(data, dict):
            for a, b in (("k", "k_range"), ("outlier_z", "contamination")):
                if data.get(a) is not None and data.get(b) is not None:
                    raise ValueError(f"pass either {flag_of(a)} or {flag_of(b)}, not both")
        return data

    @field_validator("descriptor")
    @classmethod
    def _descriptor(cls, v):
        return canonical_spec(v)

    @field_validator("k_range")
    @classmethod
    def _k_range(cls, v):
        if v is None:
            return v
        try:
            a, b = (int(x) for x in str(v).split(":"))
        except ValueError:
            a = b = 0
        if not 2 <= a <= b:
            raise ValueError(f"must look like A:B with 2 <= A <= B; got '{v}'")
        return f"{a}:{b}"

    @property
    def descriptors(self) -> list[str]:
        """The descriptor sets, in order."""
        return list(parse_spec(self.descriptor))

    @property
    def weights(self) -> dict[str, float]:
        """Each set's weight in a mixture (share of the total variance, relative; 1 unless
        ``NAME*W`` says otherwise)."""
        return parse_spec(self.descriptor)

    @property
    def ks(self) -> list[int]:
        """Every k to fit."""
        if self.k_range is None:
            return [self.k if self.k is not None else DEFAULT_K]
        return k_values(self.k_range)

    @property
    def outlier_options(self) -> dict:
        """The OutlierScorer threshold options."""
        if self.contamination is not None:
            return {"threshold": "contamination", "contamination": self.contamination}
        return {"threshold": "mad", "mad_z": self.outlier_z}


class PixelsParams(Params):
    """``vclust pixels``: per-row pixel statistics from the images (vclust.jobs.pixels)."""

    images: str = option(..., "the images, read in place: veriwild.zip or a folder (ids matched "
                         "as path suffixes)", metavar="ZIP_OR_DIR")
    batches: Optional[list[str]] = option(None, "batches to measure (job spec default: the batch "
                                          "just ingested, else all)", flag="--batch",
                                          metavar="ID")
    all: bool = option(False, "measure every batch (those already measured are kept)")
    analysis_size: int = option(ANALYSIS_SIZE, "JPEGs more than twice this on their longer side "
                                "are decoded reduced (draft mode), never below it", ge=32,
                                metavar="PX")
    block_rows: int = option(PIXEL_BLOCK_ROWS, "rows per task (each task reads and decodes its rows' images "
                             "on a worker)", ge=1, metavar="N")

    @model_validator(mode="after")
    def _not_both(self):
        if self.all and self.batches:
            raise ValueError("pass either --batch or --all, not both")
        return self


class LabelParams(Params):
    batches: Optional[list[str]] = option(None, "batches to label (job spec default: the batch "
                                          "just ingested, else all)", flag="--batch",
                                          metavar="ID")
    all: bool = option(False, "label every batch")
    pixel_z: float = option(DEFAULT_PIXEL_Z, "pixel reasons: a bound that would flag most of "
                            "the measured rows moves to their median -/+ Z MAD (README: pixel "
                            "evidence)", gt=0, metavar="Z")
    uniform_contrast: Optional[float] = option(
        None, "pixel reason uniform: contrast of the 8x8-block means over (brightness + 2) at "
        f"most this (default {PIXEL_ABSOLUTE['uniform']:g})", ge=0, metavar="RATIO")
    overexposed_share: Optional[float] = option(
        None, "pixel reason overexposed: share of colour values at 255 at least this (default "
        f"{PIXEL_ABSOLUTE['overexposed']:g})", gt=0, le=1, metavar="SHARE")
    underexposed_brightness: Optional[float] = option(
        None, "pixel reason underexposed: the 99th percentile of the luma at most this "
        f"(default {PIXEL_ABSOLUTE['underexposed']:g})", ge=0, le=255, metavar="LUMA")
    blurry_sharpness: Optional[float] = option(
        None, "pixel reason blurry: log of fine over coarse edge energy at most this (default "
        f"{PIXEL_ABSOLUTE['blurry']:g})", metavar="LOG")
    no_pixels: bool = option(False, "leave the pixel statistics out of the outlier output")

    @model_validator(mode="after")
    def _not_both(self):
        if self.all and self.batches:
            raise ValueError("pass either --batch or --all, not both")
        return self

    @property
    def pixel_overrides(self) -> dict:
        """Pixel reason bounds fixed by the user (vclust.numerics.pixels.fit_thresholds)."""
        given = {"uniform": self.uniform_contrast, "overexposed": self.overexposed_share,
                 "underexposed": self.underexposed_brightness, "blurry": self.blurry_sharpness}
        return {k: v for k, v in given.items() if v is not None}


class DriftParams(Params):
    report_dir: str = option(..., "folder for drift reports (model=<id>/batch=<id>/)")
    psi: float = option(DEFAULT_THRESHOLDS["psi"], "alert above this population stability "
                        "index of the cluster shares", gt=0)
    outlier_rate_ratio: float = option(DEFAULT_THRESHOLDS["outlier_rate_ratio"], "alert above "
                                       "this batch outlier rate / fit outlier rate", gt=0)
    mean_distance_ratio: float = option(DEFAULT_THRESHOLDS["mean_distance_ratio"], "alert above "
                                        "this batch mean distance / fit mean distance", gt=0)

    @property
    def thresholds(self) -> dict:
        return {k: getattr(self, k) for k in DEFAULT_THRESHOLDS}


class ExportParams(Params):
    csv: str = option(..., "CSV file to write", metavar="OUT.csv")
    names: Optional[str] = option(None, "analysts' cluster names, a CSV cluster,name[,note]: adds "
                                  "a cluster_name column", metavar="NAMES.csv")


class ReportParams(Params):
    out: str = option(..., "folder for the report (index.html opens from disk, offline)",
                      metavar="DIR")
    images: Optional[str] = option(None, "the images, read in place: veriwild.zip or a folder "
                                   "(ids matched as path suffixes); without it, no pictures",
                                   metavar="ZIP_OR_DIR")
    names: Optional[str] = option(None, "analysts' cluster names, a CSV cluster,name[,note]",
                                  metavar="NAMES.csv")
    sample: int = option(50_000, "rows on the map: a seeded sample with every outlier in it",
                         ge=10, metavar="N")
    seed: int = seed_option()
    outliers: int = option(200, "outlier images shown, shared out between the reasons", ge=0,
                           metavar="N")
    hover_images: int = option(2_000, "map points that also get a thumbnail for hovering "
                               "(beside the cards' and galleries' images)", ge=0, metavar="N")
    map_method: Literal["auto", "umap", "tsne", "pca"] = option(
        "auto", "how the map is drawn (auto: see docs/maps.md)")
    identity: Literal["parent", "none"] = option(
        "parent", "identity of an image for the identity consistency: its parent folder (in "
        "VeRi-Wild the vehicle), or none")
    truth: Optional[str] = option(None, "truth.csv of a synthetic case, to read the clusters "
                                  "against", metavar="CSV")
    duplicate_ratio: float = option(DUPLICATE_RATIO, "near-duplicates: rows whose nearest reference row lies "
                                    "within RATIO times the model's typical neighbour distance "
                                    "(README: near-duplicates)", gt=0, metavar="RATIO")
    pixel_images: int = option(24, "images shown per pixel gallery (broken, bright, dark, "
                               "blurry, uniform) and near-duplicate groups shown", ge=0,
                               metavar="N")


def k_values(k_range: str) -> list[int]:
    """Every k of a validated ``A:B``."""
    a, b = (int(x) for x in k_range.split(":"))
    return list(range(a, b + 1))


def _same_as(model: type[Params], name: str):
    """An option declared in another step, reused as it is declared there (one declaration)."""
    import copy

    return copy.deepcopy(model.model_fields[name])


class CompareParams(Params):
    """``vclust compare``: every spec x algorithm x k on shared reduced rows (vclust.jobs.compare)."""

    descriptors: list[str] = option(..., "a descriptor set or mixture to compare (repeat the flag"
                                    " or give several); NAME[*W][+NAME[*W]...] as for fit",
                                    flag="--descriptor", metavar="SPEC", min_length=1)
    algorithm: str = option("kmeans", "algorithms to compare, comma-separated (of: "
                            + ", ".join(ALGORITHMS) + ")", metavar="A[,B...]")
    k_range: str = option("6:16", "every k in A..B is fitted for every spec and algorithm; the "
                          "best by the k rule is kept (README: choosing k)", metavar="A:B")
    out: str = option(..., "folder for runs.csv, agreement.csv, contingency/, cross_metrics.csv,"
                      " proposal.json and index.html", metavar="DIR")
    pca_variance: float = _same_as(FitParams, "pca_variance")
    scaling: Literal[SCALINGS] = _same_as(FitParams, "scaling")
    fit_sample: int = option(FIT_SAMPLE, "rows of the seeded sample that gmm, agglomerative, "
                             "hdbscan, minibatch and bisecting are fitted on (kmeans uses every "
                             "row)", ge=100, metavar="N")
    seed: int = seed_option()
    outlier_z: float = _same_as(FitParams, "outlier_z")
    contamination: Optional[float] = _same_as(FitParams, "contamination")
    identity: Literal["parent", "none"] = _same_as(ReportParams, "identity")
    map_sample: int = option(5_000, "rows drawn on the page's maps (the same rows for every "
                             "model)", ge=10, metavar="N")
    map_method: Literal["auto", "umap", "tsne", "pca"] = _same_as(ReportParams, "map_method")
    images: Optional[str] = _same_as(ReportParams, "images")  # the page's cell images

    @model_validator(mode="before")
    @classmethod
    def _one_threshold(cls, data):
        if isinstance(data, dict) and data.get("outlier_z") is not None \
                and data.get("contamination") is not None:
            raise ValueError("pass either --outlier-z or --contamination, not both")
        return data

    @field_validator("descriptors")
    @classmethod
    def _specs(cls, v):
        specs = [canonical_spec(s) for s in v]
        if len(set(specs)) != len(specs):
            raise ValueError(f"names a spec twice; got '{' '.join(v)}'")
        return specs

    @field_validator("algorithm")
    @classmethod
    def _algorithms(cls, v):
        names = [a.strip() for a in str(v).split(",") if a.strip()]
        bad = [a for a in names if a not in ALGORITHMS]
        if not names or bad or len(set(names)) != len(names):
            raise ValueError(f"must be algorithms of {', '.join(ALGORITHMS)}, comma-separated, "
                             f"each once; got '{v}'")
        return ",".join(names)

    _k_range = field_validator("k_range")(FitParams._k_range.__func__)

    @property
    def algorithms(self) -> list[str]:
        return self.algorithm.split(",")

    ks = property(lambda self: k_values(self.k_range), doc="Every k to fit.")
    outlier_options = FitParams.outlier_options


class PromoteParams(Params):
    """``vclust promote``: make a registered model current, its clusters numbered to continue the
    current model's (vclust.model.succession)."""

    model_id: str = option(..., "the model to make current", positional=True, metavar="MODEL_ID")
    names: Optional[str] = option(None, "the analysts' names CSV (cluster,name[,note]): rewritten "
                                  "to follow the promoted model's ids (retired clusters dropped, "
                                  "new ones listed empty; the old file kept as .bak)",
                                  metavar="NAMES.csv")


class DemoParams(Params):
    rows: int = option(20_000, "images in the sample case", ge=10, metavar="N")
    out: str = option("demo-out", "output folder", metavar="DIR")
    seed: int = seed_option()


# --------------------------------------------------------------------------- command line


def flag_of(name: str, model: type[Params] | None = None) -> str:
    """The command-line flag of an option (``k_range`` -> ``--k-range``)."""
    extra = (model.model_fields[name].json_schema_extra or {}) if model is not None else {}
    return extra.get("flag") or "--" + name.replace("_", "-")


def _help(field) -> str:
    text = field.description or ""
    if not field.is_required() and field.default is not None and field.default is not False \
            and "default" not in text:
        text += f" (default {field.default})"
    return text


def add_options(parser: argparse.ArgumentParser, model: type[Params], *, group: str | None = None):
    """Add ``model``'s options to ``parser``. Options left out on the command line are absent
    from the parsed namespace, so the model's own defaults apply (``params_from_args``)."""
    target = parser.add_argument_group(group) if group else parser
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra or {}
        if not extra.get("cli", True):
            continue
        ann = field.annotation
        args = typing.get_args(ann)
        if typing.get_origin(ann) is typing.Union:  # Optional[X]
            ann = next(a for a in args if a is not type(None))
            args = typing.get_args(ann)
        kw = {"help": _help(field), "default": argparse.SUPPRESS}
        if ann is bool:
            kw["action"] = "store_true"
        elif typing.get_origin(ann) is Literal:
            kw["choices"] = args
        elif typing.get_origin(ann) is list:
            kw["nargs"] = "+"
            kw["action"] = "extend"  # --flag a b and --flag a --flag b both give [a, b]
        elif ann in (int, float):
            kw["type"] = ann
        if extra.get("metavar") and "choices" not in kw and ann is not bool:
            kw["metavar"] = extra["metavar"]
        if extra.get("positional"):
            kw.pop("default")
            target.add_argument(name, **kw)
        else:
            target.add_argument(flag_of(name, model), dest=name, required=field.is_required(),
                                **kw)


def params_from_args(model: type[Params], args: argparse.Namespace) -> Params:
    """Validate the parsed options against ``model``; a bad value is one InputError line that
    names the flag."""
    given = {n: getattr(args, n) for n in model.model_fields if hasattr(args, n)}
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        raise InputError(format_option_error(exc, model)) from None


def format_option_error(exc: ValidationError, model: type[Params]) -> str:
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:
        return msg
    name = str(err["loc"][0])
    flag = flag_of(name, model) if name in model.model_fields else name
    if "got" in msg:  # a validator's own message: "must look like A:B ...; got '9:4'"
        return f"{flag} {msg}"
    return f"{flag}: {msg.lower()} (got {err.get('input')!r})"

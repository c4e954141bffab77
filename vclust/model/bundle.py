"""Model bundle: a directory with manifest.json and .npy arrays (no pickle), applied to any rows.

A model chains three fitted parts, each with ``to_state() -> (params, arrays)`` and
``from_state(params, arrays)``:

    preprocess   Preprocessor (one descriptor set) or MixturePreprocessor (several)
    clusterer    a FittedClusterer from vclust.numerics.algorithms (KMeans or a sample-fit algorithm)
    outliers     OutlierScorer

``Model.apply`` maps them over row blocks of the store: the same rows give the same labels,
whatever the chunking or the workers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..storage import fs as F
from .versions import check_versions, library_versions

log = logging.getLogger(__name__)

FORMAT = "vclust-model"
VERSION = 3  # 3: outlier score gated on kNN, its own projection, reasons (v2: centre term on log
#   distances); an older model must be refitted
PARTS = ("preprocess", "clusterer", "outliers")


def _to_jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def _load_array(path: Path, fname: str) -> np.ndarray:
    f = path / fname
    try:
        if isinstance(f, F.RemotePath):
            import io

            return np.load(io.BytesIO(f.read_bytes()), allow_pickle=False)
        return np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{f}: missing from the model dir (its manifest lists it); the model is "
                         "damaged: restore it from a copy or fit it again") from None
    except (ValueError, EOFError, OSError) as exc:
        raise InputError(f"{f}: unreadable or truncated ({' '.join(str(exc).split())[:120]}); "
                         "the model is damaged: restore it from a copy or fit it again") from None


def _check_shapes(path: Path, preprocess, clusterer, outliers, files_of: dict):
    """The parts fit together: the centres are (k, width of the preprocessing) and the outlier
    scorer holds one entry per cluster. A model whose arrays were swapped or edited is refused
    here, not in a worker's traceback."""
    width = int(preprocess.n_components_)
    centres = np.asarray(clusterer.cluster_centers_)
    name = files_of.get("clusterer", {}).get("arrays", {}).get("cluster_centers", "centres")
    if centres.ndim != 2 or centres.shape[0] < 1 or centres.shape[1] != width:
        raise InputError(f"{path / name}: centres of shape {centres.shape}, expected "
                         f"(k, {width}) to match the preprocessing; the model is damaged: "
                         "restore it from a copy or fit it again")
    k = centres.shape[0]
    for attr in ("cluster_median_", "cluster_log_mad_", "cluster_share_", "cluster_tight_",
                 "cluster_degenerate_"):
        value = getattr(outliers, attr, None)
        if value is not None and len(np.atleast_1d(value)) != k:
            fname = files_of.get("outliers", {}).get("arrays", {}).get(attr.rstrip("_"), attr)
            raise InputError(f"{path / fname}: {len(np.atleast_1d(value))} entries for {k} "
                             "clusters; the model is damaged: restore it from a copy or fit it "
                             "again")


def _load_part(part: str, params: dict, arrays: dict):
    if part == "preprocess":
        from ..numerics.preprocess import MixturePreprocessor, Preprocessor

        cls = MixturePreprocessor if params.get("kind") == "mixture" else Preprocessor
        return cls.from_state(params["state"], arrays)
    if part == "clusterer":
        from ..numerics.algorithms import load_clusterer

        return load_clusterer(params, arrays)
    if part == "outliers":
        from ..numerics.outliers import OutlierScorer

        return OutlierScorer.from_state(params, arrays)
    raise AssertionError(part)


def _manifest_schema():
    """The pydantic schema of manifest.json: what ``Model.load`` relies on, typed (other keys,
    the fit's record, are kept as they are)."""
    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

    class Part(BaseModel):
        params: dict
        arrays: dict[StrictStr, StrictStr]

    class Manifest(BaseModel):
        model_config = ConfigDict(extra="allow")
        format: StrictStr
        version: StrictInt
        model_id: StrictStr | None = None
        descriptors: list[StrictStr] = Field(min_length=1)
        parts: dict[str, Part]

    return Manifest


def read_manifest(path) -> dict:
    """A model dir's manifest.json, checked against its schema (``_manifest_schema``): a
    manifest that is not JSON, not an object, of another format or version, or whose keys
    have the wrong type (``"version": "1"``, no ``descriptors``, a part missing) is refused
    with one line (InputError), never a traceback."""
    from pydantic import ValidationError

    mf = path / "manifest.json"
    if not mf.is_file():
        raise InputError(f"{path}: not a vclust model dir (no manifest.json)")
    try:
        manifest = json.loads(mf.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{mf}: unreadable manifest ({' '.join(str(exc).split())[:120]})") \
            from None
    if not isinstance(manifest, dict):
        raise InputError(f"{mf}: not a vclust model manifest (a JSON {type(manifest).__name__}, "
                         "expected an object)")
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not a vclust model (format={manifest.get('format')!r})")
    try:
        _manifest_schema().model_validate(manifest)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise InputError(f"{mf}: key '{key}': {err['msg']} (got {err.get('input')!r:.80}); the "
                         "model is damaged: restore it from a copy or fit it again") from None
    missing = [p for p in PARTS if p not in manifest["parts"]]
    if missing:
        raise InputError(f"{mf}: lists no part '{missing[0]}'; the model is damaged: restore "
                         "it from a copy or fit it again")
    if manifest["version"] > VERSION:
        raise InputError(f"{path}: model version {manifest['version']} is newer than this vclust")
    if manifest["version"] < VERSION:
        raise InputError(f"{path}: model version {manifest['version']} predates this vclust "
                         f"(version {VERSION}); fit it again with vclust fit")
    return manifest


@dataclass
class Model:
    """A fitted model: descriptor sets, the three parts, and what the fit learned about its data."""

    descriptors: list[str]
    preprocess: object
    clusterer: object
    outliers: object
    info: dict = field(default_factory=dict)  # metrics table, chosen k, profile, fingerprint...
    model_id: str | None = None
    path: Path | None = None

    # ------------------------------------------------------------------ persistence

    def _part_states(self):
        from ..numerics.preprocess import MixturePreprocessor

        pre_params, pre_arrays = self.preprocess.to_state()
        kind = "mixture" if isinstance(self.preprocess, MixturePreprocessor) else "single"
        yield "preprocess", {"kind": kind, "state": pre_params}, pre_arrays
        yield "clusterer", *self.clusterer.to_state()
        yield "outliers", *self.outliers.to_state()

    def save(self, path) -> Path:
        """Write the bundle to ``path`` (written beside it, then renamed into place)."""
        path = F.as_path(path)
        if path.exists():
            raise InputError(f"{path}: exists; models are never overwritten, pick a new --model path")
        if isinstance(path, F.RemotePath):
            return self._save_remote(path)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            manifest = self._write_parts(tmp, path.name)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = path
        self.model_id = manifest["model_id"]
        return path

    def _write_parts(self, folder, name: str) -> dict:
        """Write every array of the parts into ``folder``; return the manifest (not written)."""
        manifest = {
            "format": FORMAT, "version": VERSION, "model_id": self.model_id or name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "descriptors": list(self.descriptors), "libraries": library_versions(),
            "parts": {}, **_to_jsonable(self.info),
        }
        for part, params, arrays in self._part_states():
            files = {}
            for key, arr in arrays.items():
                fname = f"{part}.{key.replace('/', '.')}.npy"
                if isinstance(folder, F.RemotePath):
                    import io

                    buf = io.BytesIO()
                    np.save(buf, np.asarray(arr), allow_pickle=False)
                    (folder / fname).write_bytes(buf.getvalue())
                else:
                    np.save(folder / fname, np.asarray(arr), allow_pickle=False)
                files[key] = fname
            manifest["parts"][part] = {"params": _to_jsonable(params), "arrays": files}
        return manifest

    def _save_remote(self, path) -> "F.RemotePath":
        """On an object store: the arrays, then ``manifest.json`` last, the commit record (a
        model dir without one is not a model: ``load`` refuses it, the registry ignores it)."""
        manifest = self._write_parts(path, path.name)
        (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
        self.path = path
        self.model_id = manifest["model_id"]
        return path

    @classmethod
    def load(cls, path) -> "Model":
        """The model in ``path``; its manifest checked first (``read_manifest``)."""
        path = F.as_path(str(path))
        manifest = read_manifest(path)
        parts = {}
        for part in PARTS:
            spec = manifest["parts"][part]
            files = dict(spec["arrays"])
            arrays = {k: _load_array(path, f) for k, f in files.items()}
            try:
                parts[part] = _load_part(part, spec["params"], arrays)
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise InputError(f"{path}: part '{part}' does not load "
                                 f"({' '.join(str(exc).split())[:160]}); the model is damaged: "
                                 "restore it from a copy or fit it again") from None
        _check_shapes(path, files_of=manifest["parts"], **parts)
        check_versions(manifest.get("libraries"), path)
        info = {k: v for k, v in manifest.items()
                if k not in ("parts", "descriptors", "format", "version", "model_id")}
        return cls(manifest["descriptors"], parts["preprocess"], parts["clusterer"],
                   parts["outliers"], info, manifest.get("model_id"), path)

    # ------------------------------------------------------------------ applying

    def reduce(self, sets: dict):
        """The reduced rows (dask) from ``{name: dask array}`` of the model's descriptor sets."""
        missing = [d for d in self.descriptors if d not in sets]
        if missing:
            raise InputError(f"the model needs descriptor sets {missing}; the store lacks them")
        if len(self.descriptors) == 1:
            return self.preprocess.transform(sets[self.descriptors[0]])
        return self.preprocess.transform({d: sets[d] for d in self.descriptors})

    def assign(self, z):
        """(cluster, distance to its centre) of the reduced rows ``z``, lazy."""
        return assign(self.clusterer, z)

    def scoring_input(self, sets: dict):
        """What the outlier score reads besides the reduced rows: the rows as given (one set's
        array, or a dict of a mixture's)."""
        if len(self.descriptors) == 1:
            return sets[self.descriptors[0]]
        return {d: sets[d] for d in self.descriptors}

    def apply(self, sets: dict, row_offset: int = 0, reasons: bool = False,
              nearest: bool = False, all_reasons: bool = False):
        """(cluster int32, distance float32, outlier_score float32, is_outlier bool), all lazy
        dask arrays over the same rows as ``sets``, whose first row is the store's row
        ``row_offset`` (the outlier score skips a row's own entry in the reference by that id).
        With ``reasons``, a fifth array: the reason index (int8, into
        ``vclust.numerics.outliers.REASONS``; 0 for rows not flagged). With ``nearest``, two
        more: each row's nearest reference row other than itself and its distance
        (``OutlierScorer.score``). With ``all_reasons``, last: the mask of every reason that
        fired (uint8; ``vclust.numerics.outliers.reason_names``)."""
        z = self.reduce(sets)
        labels, dist = self.assign(z)
        out = self.outliers.score(z, labels, dist, row_offset=row_offset, reasons=reasons,
                                  raw=self.scoring_input(sets), nearest=nearest,
                                  all_reasons=all_reasons)
        if self.clusterer.name == "hdbscan":
            noise = self.clusterer.noise(z)
            n = 3 if reasons else 2  # (score, flag[, reason]), then the nearest-row arrays
            if all_reasons:  # the noise bit in every noise row's mask
                from ..numerics.outliers import NOISE, reason_bit

                out = (*out[:-1], out[-1] | (noise * reason_bit(NOISE)).astype(np.uint8))
            out = (*with_noise(noise, *out[:n]), *out[n:])
        return (labels, dist, *out)


def with_noise(noise, score, flag, reason=None):
    """HDBSCAN's noise rows flagged as outliers, as evidence: reason ``noise`` where the score
    did not flag the row itself (a row the score flagged keeps the score's reason).
    Works on numpy or dask arrays alike."""
    from ..numerics.outliers import NOISE

    if reason is not None:
        reason = (reason + (noise & ~flag) * NOISE).astype(np.int8)  # unflagged rows: reason 0
    flag = flag | noise
    return (score, flag) if reason is None else (score, flag, reason)


def _assign_block(block, clusterer):
    labels, dist = clusterer.predict_block(block)
    return np.column_stack([labels.astype(np.float64), dist.astype(np.float64)])


def assign(clusterer, z):
    """Cluster and distance to its centre for every row of the dask array ``z``, in one pass."""
    both = z.map_blocks(_assign_block, clusterer, dtype=np.float64, chunks=(z.chunks[0], (2,)))
    return both[:, 0].astype(np.int32), both[:, 1].astype(np.float32)

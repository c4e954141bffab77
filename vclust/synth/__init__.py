"""Synthetic case generator shaped like the real delivery.

    OUT_DIR/descriptors/efficientnet-b7.pickle  (n, 2560) float32
    OUT_DIR/descriptors/osnet.pickle             (n, 512)  float32
    OUT_DIR/descriptors/vdc_color.pickle         (n, 128)  float32
    OUT_DIR/descriptors/vdc_type.pickle          (n, 512)  float32
    OUT_DIR/images_paths.csv   header ``paths``, ``veriwild\\<camera>\\<vehicle>\\<image>.jpg``
    OUT_DIR/truth.csv          row, path, body_type, view, colour, vehicle_id, camera, outlier_kind
    OUT_DIR/veriwild.zip       one small JPEG per row drawn from its attributes, entries named
                               like the ids with forward slashes (vclust.synth.images); none
                               with ``images=False``

Every image has latent attributes with imbalanced frequencies (body type, front/rear view,
colour, vehicle identity shared by several images, camera). Each descriptor family sees them
with its own weights, through its own prototypes and projection, then a ReLU (so vectors are
non-negative with many exact zeros) and a per-image scale:

    vdc_color     mostly colour             vdc_type   body type and view
    osnet         identity: colour and body type at coarse scale (what a re-identification
                  model keys on), the vehicle at fine scale (its other images are its nearest
                  neighbours)
    efficientnet  a weak mix of everything + camera, noisier

Colour frequencies are imbalanced 5:1 (20% white down to 4% orange). The osnet set has a clear
optimum at k=10 (one cluster per colour): scikit-learn's KMeans agrees with itself across seeds
there, which is what lets the fit benchmark compare partitions at all. With a 1% tail, single-init
k-means lands in a different local optimum on every seed.

Outliers, the same rows in every family: isolated junk (a bad crop: the vehicle's own latent
pushed ``OUTLIER_OFFSET`` within-group spreads away in a random direction of its own, so far from
everything and from each other) and tight groups, "glare" and "empty" frames of one camera (20-200
rows each, a tight ball around a centre pushed as far from one vehicle's attributes: each other's
nearest neighbours, far from every cluster centre).

Rows are generated in fixed blocks of ``BLOCK`` rows from per-block seeded streams and written
straight into the pickles, so memory stays bounded and the output depends on the seed only, not on
``chunk_rows``.
"""

from __future__ import annotations

import io
import logging
import pickle
import pickletools
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BLOCK = 4096
LATENT = 48
FAMILIES = {  # name: (dims, weights of type, view, colour, vehicle, camera, noise)
    "efficientnet-b7": (2560, dict(type=0.8, view=0.6, colour=0.6, vehicle=0.5, camera=0.9, noise=1.1)),
    "osnet": (512, dict(type=0.7, view=0.4, colour=5.0, vehicle=0.6, camera=0.2, noise=0.3)),
    "vdc_color": (128, dict(type=0.25, view=0.1, colour=2.6, vehicle=0.3, camera=0.1, noise=0.45)),
    "vdc_type": (512, dict(type=2.4, view=1.6, colour=0.25, vehicle=0.3, camera=0.1, noise=0.45)),
}
BODY_TYPES = ["sedan", "suv", "hatchback", "van", "pickup", "truck", "bus", "other"]
BODY_P = [0.40, 0.22, 0.14, 0.09, 0.06, 0.05, 0.03, 0.01]
VIEWS = ["front", "rear"]
VIEW_P = [0.6, 0.4]
COLOURS = ["white", "black", "grey", "silver", "red", "blue", "brown", "yellow", "green", "orange"]
COLOUR_P = [0.20, 0.17, 0.14, 0.12, 0.10, 0.08, 0.06, 0.05, 0.04, 0.04]
N_CAMERAS = 150
# Outliers sit this many within-group spreads away from the vehicle they started from: far enough
# to be isolated (or, for groups, far from every cluster centre), near enough not to pull
# k-means centres away from the vehicles, as bad crops and washed-out frames do in real data.
OUTLIER_OFFSET = 2.5


# --------------------------------------------------------------------------- streaming pickles

_MARKER = b"vclust-synth-marker!"


class _Placeholder:
    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)


class _PlaceholderPickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, _Placeholder):
            from numpy._core.multiarray import _reconstruct

            return (_reconstruct, (np.ndarray, (0,), b"b"),
                    (1, obj.shape, obj.dtype, False, _MARKER))
        return NotImplemented


def _pickle_frame(shape, dtype) -> tuple[bytes, bytes]:
    """Pickle bytes before and after an array's raw data: what ``pickle.dumps(array, 4)`` writes
    for a C-contiguous array, with the data written by the caller as one BINBYTES8 payload."""
    buf = io.BytesIO()
    _PlaceholderPickler(buf, protocol=4).dump(_Placeholder(shape, dtype))
    raw = buf.getvalue()
    # Frames are optional for the unpickler; drop them so the payload can be spliced in.
    out = bytearray()
    pos = 0
    for op, _, at in pickletools.genops(raw):
        if op.name == "FRAME":
            out += raw[pos:at]
            pos = at + 9
    out += raw[pos:]
    raw = bytes(out)
    short = b"C" + bytes([len(_MARKER)]) + _MARKER
    i = raw.index(short)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return raw[:i] + b"\x8e" + nbytes.to_bytes(8, "little"), raw[i + len(short):]


# --------------------------------------------------------------------------- the latent world


class _World:
    """Everything drawn once from the seed: prototypes, projections, vehicles, outlier plan."""

    def __init__(self, n_rows, seed, outlier_share):
        rng = np.random.default_rng([seed, 0])
        self.n_vehicles = max(1, n_rows // 8)
        self.veh_type = rng.choice(len(BODY_TYPES), self.n_vehicles, p=BODY_P)
        self.veh_colour = rng.choice(len(COLOURS), self.n_vehicles, p=COLOUR_P)
        self.veh_home = rng.integers(0, N_CAMERAS, self.n_vehicles)
        self.fam = {}
        for f, (dims, w) in FAMILIES.items():
            r = np.random.default_rng([seed, 1, len(f), dims])
            self.fam[f] = dict(
                dims=dims, w=w,
                type=r.normal(0, 1, (len(BODY_TYPES), LATENT)),
                view=r.normal(0, 1, (len(BODY_TYPES), 2, LATENT)),
                colour=r.normal(0, 1, (len(COLOURS), LATENT)),
                camera=r.normal(0, 1, (N_CAMERAS, LATENT)),
                proj=(r.normal(0, 1, (LATENT, dims)) / np.sqrt(LATENT)).astype(np.float32),
                bias=r.normal(-0.3, 0.3, dims).astype(np.float32),
                veh_seed=int(r.integers(1 << 31)),
                # latent spread of a row around its dominant attribute's prototype
                spread=float(np.sqrt(LATENT * (sum(v * v for v in w.values()) - max(w.values()) ** 2))),
            )
        # outlier plan: which rows are in tight groups, and each group's centre per family
        n_group_rows = int(n_rows * outlier_share * 0.5)
        sizes = []
        while sum(sizes) < n_group_rows:
            sizes.append(int(rng.integers(20, 201)))
        if sizes:
            sizes[-1] -= sum(sizes) - n_group_rows
            sizes = [s for s in sizes if s > 0]
        members = rng.choice(n_rows, size=sum(sizes), replace=False) if sizes else np.empty(0, int)
        self.group_of = np.full(n_rows, -1, np.int32)
        start = 0
        for g, s in enumerate(sizes):
            self.group_of[members[start:start + s]] = g
            start += s
        self.group_kind = ["glare" if g % 2 == 0 else "empty" for g in range(len(sizes))]
        self.group_camera = rng.integers(0, N_CAMERAS, len(sizes))
        # a group's centre: the attributes of one vehicle seen at its camera, pushed away by an
        # offset common to the group (the glare, or the empty scene, of that camera)
        g_type = rng.choice(len(BODY_TYPES), len(sizes), p=BODY_P)
        g_view = rng.choice(2, len(sizes), p=VIEW_P)
        g_colour = rng.choice(len(COLOURS), len(sizes), p=COLOUR_P)
        self.group_centre = {}
        for f, fam in self.fam.items():
            w = fam["w"]
            base = (w["type"] * fam["type"][g_type] + w["view"] * fam["view"][g_type, g_view]
                    + w["colour"] * fam["colour"][g_colour]
                    + w["camera"] * fam["camera"][self.group_camera])
            self.group_centre[f] = base + _offsets(rng, len(sizes), fam["spread"])
        self.junk_p = outlier_share * 0.5

    def vehicle_latent(self, f, vehicles):
        """Identity vectors, computed per vehicle from its own seed (no n_vehicles x L table)."""
        fam = self.fam[f]
        out = np.empty((len(vehicles), LATENT))
        for i, v in enumerate(vehicles):
            out[i] = np.random.default_rng([fam["veh_seed"], int(v)]).normal(0, 1, LATENT)
        return out


def _offsets(rng, n, spread):
    """n random latent directions of length OUTLIER_OFFSET * spread."""
    v = rng.normal(0, 1, (n, LATENT))
    return v * (OUTLIER_OFFSET * spread / np.linalg.norm(v, axis=1, keepdims=True))


def _block(world: _World, seed: int, b: int, n_rows: int):
    """Rows [b*BLOCK, ...) : attributes and every family's vectors."""
    start = b * BLOCK
    n = min(BLOCK, n_rows - start)
    rng = np.random.default_rng([seed, 2, b])
    veh = rng.integers(0, world.n_vehicles, n)
    t, c = world.veh_type[veh], world.veh_colour[veh]
    view = rng.choice(2, n, p=VIEW_P)
    cam = np.where(rng.random(n) < 0.7, world.veh_home[veh], rng.integers(0, N_CAMERAS, n))
    group = world.group_of[start:start + n]
    junk = (rng.random(n) < world.junk_p) & (group < 0)
    scale = rng.lognormal(0, 0.15, n).astype(np.float32)
    kinds = np.array([""] * n, dtype=object)
    kinds[junk] = "junk"
    for i in np.flatnonzero(group >= 0):
        kinds[i] = world.group_kind[group[i]]
        cam[i] = world.group_camera[group[i]]
    uniq, inv = np.unique(veh, return_inverse=True)
    vectors = {}
    for f, fam in world.fam.items():
        w = fam["w"]
        vlat = world.vehicle_latent(f, uniq)[inv]
        z = (w["type"] * fam["type"][t] + w["view"] * fam["view"][t, view]
             + w["colour"] * fam["colour"][c] + w["vehicle"] * vlat
             + w["camera"] * fam["camera"][cam] + w["noise"] * rng.normal(0, 1, (n, LATENT)))
        gi = np.flatnonzero(group >= 0)
        if len(gi):  # near-identical frames: each other's nearest neighbours
            z[gi] = world.group_centre[f][group[gi]] + 0.05 * rng.normal(0, 1, (len(gi), LATENT))
        ji = np.flatnonzero(junk)
        if len(ji):  # a bad crop: the vehicle's own vector, distorted in a direction of its own
            z[ji] += _offsets(rng, len(ji), fam["spread"])
        x = np.maximum(z.astype(np.float32) @ fam["proj"] + fam["bias"], 0) * scale[:, None]
        vectors[f] = x.astype(np.float32, copy=False)
    attrs = dict(body_type=np.array(BODY_TYPES)[t], view=np.array(VIEWS)[view],
                 colour=np.array(COLOURS)[c], vehicle_id=veh + 1, camera=cam + 1,
                 outlier_kind=kinds)
    return vectors, attrs


def generate_case(out_dir, n_rows: int = 2000, seed: int = 0, *, chunk_rows: int = 20_000,
                  outlier_share: float = 0.03, progress=None, images: bool = True) -> dict:
    """Write a synthetic case to ``out_dir`` (see the module docstring). Returns a summary.

    ``chunk_rows`` only sets how often progress is reported; the output depends on ``seed``
    and ``n_rows`` alone. ``images`` also writes ``veriwild.zip`` (its path is the summary's
    ``"images"``); the descriptors are the same either way. A run that fails (a full disk, an
    interrupt) removes the files it was writing and the folders it made, and raises.
    """
    import pandas as pd

    if n_rows < 1:
        raise ValueError(f"n_rows must be positive; got {n_rows}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from ..errors import InputError

        raise InputError(f"{out}: is a file; the case is written to a folder, pick a folder path")
    # the folders this call makes, removed again (when left empty) if it fails
    made = [d for d in (*reversed((out / "descriptors").parents), out / "descriptors")
            if not d.exists()]
    (out / "descriptors").mkdir(parents=True, exist_ok=True)
    world = _World(n_rows, seed, outlier_share)
    files, tails = {}, {}
    for f, (dims, _) in FAMILIES.items():
        head, tails[f] = _pickle_frame((n_rows, dims), np.float32)
        files[f] = open(out / "descriptors" / f"{f}.pickle", "wb")
        files[f].write(head)
    paths_f = open(out / "images_paths.csv", "w", newline="")
    truth_f = open(out / "truth.csv", "w", newline="")
    paths_f.write("paths\n")
    counts = {"junk": 0, "glare": 0, "empty": 0}
    next_report = chunk_rows
    pictures = None
    if images:
        from .images import CaseImageWriter

        pictures = CaseImageWriter(out / "veriwild.zip", seed)
    try:
        for b in range(-(-n_rows // BLOCK)):
            vectors, attrs = _block(world, seed, b, n_rows)
            for f, x in vectors.items():
                files[f].write(np.ascontiguousarray(x).tobytes())
            rows = np.arange(b * BLOCK, b * BLOCK + len(attrs["view"]))
            paths = [f"veriwild\\{cam}\\{veh:05d}\\{r + 1:06d}.jpg"
                     for cam, veh, r in zip(attrs["camera"], attrs["vehicle_id"], rows)]
            paths_f.write("".join(p + "\n" for p in paths))
            ids = [p.replace("\\", "/") for p in paths]
            frame = pd.DataFrame({"row": rows, "path": ids, **attrs})
            frame.to_csv(truth_f, header=(b == 0), index=False)
            if pictures is not None:
                pictures.add_block(ids, attrs, b)
            for k in counts:
                counts[k] += int((attrs["outlier_kind"] == k).sum())
            done = int(rows[-1]) + 1
            if progress and (done >= next_report or done == n_rows):
                progress(done, n_rows)
                next_report += chunk_rows
        if pictures is not None:
            pictures.close()
        for f, fh in files.items():
            fh.write(tails[f])
        for fh in (*files.values(), paths_f, truth_f):
            fh.close()  # the last buffered bytes: a full disk can fail here too
    except BaseException:
        # a half-written case is of no use and may fill the disk: what this call was writing
        # goes (a disk full, a Ctrl-C; the error itself is the caller's to report)
        if pictures is not None:
            pictures.abort()  # an unfinished zip is removed (no-op once closed)
        for fh in (*files.values(), paths_f, truth_f):
            try:
                fh.close()
            except OSError:
                pass
            Path(fh.name).unlink(missing_ok=True)
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass  # not empty: something else is in it
        raise
    log.info("synthetic case of %d rows written to %s", n_rows, out)
    summary = {"out_dir": str(out), "rows": n_rows, "seed": seed,
               "descriptors": {f: d for f, (d, _) in FAMILIES.items()}, "outliers": counts}
    if pictures is not None:
        summary["images"] = str(pictures.path)
    return summary


def read_truth(out_dir):
    """truth.csv of a synthetic case (paths with forward slashes, outlier_kind "" for inliers)."""
    import pandas as pd

    frame = pd.read_csv(Path(out_dir) / "truth.csv", keep_default_na=False,
                        dtype={"outlier_kind": str, "path": str})
    return frame

"""Pixel statistics of one decoded image, and the pixel reasons they give a row.

Per image (``image_stats``, on the RGB picture as decoded, at most ``ANALYSIS_SIZE`` on its
longer side when the decoder can reduce it):

    brightness      mean luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B, rounded to whole levels
                    as Pillow's ``convert("L")`` rounds it), 0..255
    contrast        standard deviation of the luma: the spread of brightness
    overexposed     share of pixels with luma >= 245 (white, blown-out highlights)
    underexposed    share of pixels with luma <= 20 (crushed shadows)
    sharpness       variance of the 4-neighbour Laplacian of the luma (edge energy)
    colourfulness   Hasler and Suesstrunk's M: sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 +
                    mean_yb^2), rg = R - G, yb = (R + G) / 2 - B; 0 for a grey picture (over a
                    quarter of the pixels: every other one of every other line)
    clipped         share of the colour values (R, G and B of every pixel) at 255, the top of
                    the scale: highlights clipped in any channel, a brightened red as well as a
                    white (a bright sky at 245-254 is not clipped)
    highlight       the 99th percentile of the luma: how bright the brightest 1% of the picture
                    is (a darkened photograph has no bright part left; a dark scene with a lamp,
                    a star or a window in it does)
    structure       standard deviation of the means of the luma's 8 x 8 blocks: the contrast of
                    the picture's shapes, without its grain and JPEG noise
    edges           mean squared luma gradient (dx^2 + dy^2) of the picture reduced 4 x 4 by
                    block means, per pixel of the full picture (divided by 16): edge content at
                    a coarse scale, which a blur of a few pixels leaves
    detail          log((G0 - 1/3) / edges), G0 the mean squared gradient of the full picture
                    less 1/3, the part the luma's rounding to whole levels adds: fine edge
                    content against the picture's own coarse edge content. A uniformly smooth
                    ramp gives 0, a step edge about log 4, noise more; a blur of radius r wipes
                    out the fine content while the coarse content stays, so it falls with r

A picture under 16 pixels on a side has no edges or detail (NaN) and its structure is its
contrast. The statistics are computed by two compiled kernels (vclust.numerics.pixel_kernels: one
pass over the colour values, one over the luma, every sum exact).

Reasons (``PIXEL_REASONS``, first that applies; ``pixel_reasons``); each compares a statistic with
an absolute bound (``ABSOLUTE``); flatness and blur are measured against the picture's own
brightness and edges, so a dim picture is neither flat nor blurry for being dim:

    unreadable      the image is missing, cannot be read or cannot be decoded
    overexposed     clipped >= 0.12: an eighth of the colour values at the top of the scale
    uniform         structure / (brightness + 2) <= 0.01: the picture's shapes vary by less than
                    1% of its brightness (a flat, empty, dead or capped frame); relative, so a
                    darkened photograph, whose shapes are as strong for its brightness as before,
                    is not uniform
    underexposed    highlight <= 44: even the brightest 1% of the picture is darker than luma
                    44 (about a sixth of full scale)
    blurry          detail <= 0.5 where edges >= 0.1: fine edges weaker than a sharp picture's
                    for its own coarse edges; a picture with almost no shapes (edges below 0.1:
                    a clear sky, a bare wall) is not judged, a blur cannot be told from it

The bounds were chosen on half of the real photographs of tests/pixel_cases.py and checked on the
other half (benchmarks/RESULTS.md, "Pixel reasons"). A collection may sit past a bound as a whole
(night frames, micrographs): when a bound would flag more than ``GUARD_SHARE`` of the readable
rows, it moves to the collection's own median -/+ z MAD (the robust spread, 1.4826 MAD; of the
log for uniform and underexposed, which scale with the light), so it flags only the collection's
own extremes. Every bound can be fixed by the caller instead
(``fit_thresholds(..., overrides)``).

Rows measured before ``clipped``, ``highlight``, ``structure``, ``edges`` and ``detail`` existed
(they read as NaN) keep the reasons of the statistics they have, with the absolute bounds of then
(``LEGACY``; uniform only above the underexposed bound), except blurry; `vclust pixels` on a
new store measures them all.
"""

from __future__ import annotations

import numpy as np

ANALYSIS_SIZE = 256  # longer side the decoder may reduce a picture to (never below it)

#: per-row columns stored by ``vclust pixels``, and their dtypes
COLUMNS = {"readable": "uint8", "problem": "int8", "width": "int32", "height": "int32",
           "brightness": "float32", "contrast": "float32", "overexposed": "float32",
           "underexposed": "float32", "sharpness": "float32", "colourfulness": "float32",
           "clipped": "float32", "highlight": "float32", "structure": "float32",
           "edges": "float32", "detail": "float32"}
STAT_COLUMNS = ("brightness", "contrast", "overexposed", "underexposed", "sharpness",
                "colourfulness", "clipped", "highlight", "structure", "edges", "detail")
#: ``problem`` codes: why a row is not readable (0: it is)
PROBLEMS = ("", "missing", "unreadable", "undecodable")

#: pixel reasons, in order of precedence (a row gets the first that applies)
PIXEL_REASONS = ("unreadable", "overexposed", "uniform", "underexposed", "blurry")
#: the bound of each reason (see the module docstring), in the units of its statistic
ABSOLUTE = {"overexposed": 0.12, "uniform": 0.01, "underexposed": 44.0, "blurry": 0.5}
#: a side is "at least" (the reason fires at or above the bound) or "at most"
AT_LEAST = {"overexposed": True, "uniform": False, "underexposed": False, "blurry": False}
UNIFORM_DAMPING = 2.0  # luma added to the brightness in structure / brightness (a black frame)
BLUR_MIN_EDGES = 0.1  # edges below this: no shapes to judge the sharpness of
GUARD_SHARE = 0.5  # a bound flagging more than this share of a collection is fitted to it
LOG_SCALE = ("uniform", "underexposed")  # fitted on the log of their statistic
DEFAULT_PIXEL_Z = 4.0


def pixel_words(rgb) -> np.ndarray:
    """(h, w) uint32 words of (h, w, 3) RGB or (h, w, 4) RGBX uint8 pixels, R in the lowest
    byte: the RGBX pixels themselves, read in place where they are C ordered and writable (as
    libjpeg-turbo's are, vclust.storage.decode.decode_jpeg), else a copy."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"pixels of shape {rgb.shape} and {rgb.dtype}: (h, w, 3 or 4) uint8 "
                         "expected")
    if rgb.shape[2] == 4 and rgb.flags.c_contiguous and rgb.flags.writeable:
        rgbx = rgb
    else:
        rgbx = np.empty(rgb.shape[:2] + (4,), np.uint8)
        rgbx[..., :3] = rgb[..., :3]
        rgbx[..., 3] = 255
    return rgbx.view("<u4").astype(np.uint32, copy=False).reshape(rgbx.shape[:2])


def _kernel_ready(a: np.ndarray, dtype) -> np.ndarray:
    """``a`` itself when it is what the kernels take (C ordered, writable, ``dtype``), else a
    copy that is (one set of argument types: each other one would be compiled anew)."""
    if a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, dtype=dtype, order="C")


def luma_histogram(rgb) -> tuple[np.ndarray, np.ndarray]:
    """(luma (h, w) uint8, the 256 counts of its values int64) of RGB or RGBX pixels: Pillow's
    ``convert("L")`` and ``histogram()``, value for value."""
    from .pixel_kernels import luma_histogram as kernel

    return kernel(pixel_words(rgb))


def image_stats(rgb: np.ndarray, luma: np.ndarray | None = None,
                hist=None) -> tuple[float, ...]:
    """The ``STAT_COLUMNS`` of one picture (see the module docstring): ``rgb`` (h, w, 3) uint8
    RGB, or (h, w, 4) RGBX (libjpeg-turbo's, vclust.storage.decode.decode_jpeg; the fourth
    value is not read); ``luma`` its luma (h, w) uint8 and ``hist`` the 256 counts of its
    values, when the caller has them (``luma_histogram``, or Pillow's ``convert("L")`` and
    ``histogram()``: the same values), else computed here. The colourfulness is taken over
    every other pixel of every other line (a quarter of the pixels, an unbiased sample of the
    same means and spreads, at a quarter of the cost). Raises ValueError for a picture of no
    pixels."""
    from . import pixel_kernels as K

    words = pixel_words(rgb)
    if not words.size:
        raise ValueError("a picture of no pixels")
    if luma is None:
        luma, hist = K.luma_histogram(words)
    else:
        luma = _kernel_ready(np.asarray(luma), np.uint8)
        if hist is None:
            hist = np.bincount(luma.ravel(), minlength=256)
        hist = _kernel_ready(np.asarray(hist), np.int64)
    return K.stats(words, luma, hist)


def precompile() -> None:
    """Compile the kernels of ``image_stats`` and ``luma_histogram`` into numba's disk cache (or
    load them from it) for the one set of argument types every caller passes them; the
    install's warm-up (vclust.warmup) calls it."""
    image_stats(np.zeros((24, 32, 4), np.uint8))


def relative_sharpness(sharpness, contrast) -> np.ndarray:
    """log(sharpness / contrast^2): Laplacian energy against the picture's contrast (the blur
    measure of statistics stored before ``detail``; kept for the report of such stores)."""
    s = np.asarray(sharpness, dtype=np.float64)
    c = np.asarray(contrast, dtype=np.float64)
    return np.log(np.maximum(s, 1e-6)) - np.log(np.maximum(c * c, 1e-6))


#: rows measured before ``clipped`` ... ``detail`` existed: the statistic and absolute bound of
#: each reason then (overexposed share, contrast, brightness); none for blur: that measure,
#: log(sharpness / contrast^2), called sharp photographs blurry without a bound fitted beside it
LEGACY = {"overexposed": 0.4, "uniform": 6.0, "underexposed": 40.0}


def reason_values(stats: dict) -> dict:
    """{reason: the per-row value its bound applies to} (see the module docstring)."""
    n = len(np.asarray(stats["readable"]))

    def col(name):
        return np.asarray(stats.get(name, np.full(n, np.nan)), dtype=np.float64)

    edges = col("edges")
    return {
        "overexposed": col("clipped"),
        "uniform": col("structure") / (col("brightness") + UNIFORM_DAMPING),
        "underexposed": col("highlight"),
        # too few shapes to judge: not blurry (NaN compares false)
        "blurry": np.where(edges >= BLUR_MIN_EDGES, col("detail"), np.nan),
    }


def _legacy_fires(stats: dict) -> dict:
    """{reason: rows measured before the current statistics whose old statistic passes its old
    bound (``LEGACY``)}: such rows keep the reasons they had."""
    n = len(np.asarray(stats["readable"]))

    def col(name):
        return np.asarray(stats.get(name, np.full(n, np.nan)), dtype=np.float64)

    old = (~np.isfinite(col("detail")) & ~np.isfinite(col("highlight"))
           & np.isfinite(col("contrast")))
    with np.errstate(invalid="ignore"):
        return {"overexposed": old & (col("overexposed") >= LEGACY["overexposed"]),
                # a dark picture is underexposed, not flat: its spread is small for being dim
                "uniform": old & (col("contrast") <= LEGACY["uniform"])
                & (col("brightness") > LEGACY["underexposed"]),
                "underexposed": old & (col("brightness") <= LEGACY["underexposed"]),
                "blurry": np.zeros(n, bool)}


def _robust(v) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    return med, float(np.median(np.abs(v - med))) * 1.4826


def _fires(values, reason: str, bound: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return values >= bound if AT_LEAST[reason] else values <= bound


def fit_thresholds(stats: dict, z: float = DEFAULT_PIXEL_Z, overrides: dict | None = None) -> dict:
    """The bound of each reason from the stats of the readable rows (``stats``: columns of
    ``COLUMNS``, arrays over the same rows; see the module docstring): ``ABSOLUTE``, unless it
    would flag more than ``GUARD_SHARE`` of them, then the rows' median -/+ ``z`` MAD where that
    is further out. ``overrides`` {reason: value} fixes a bound instead. Returns {reason: bound}
    for "overexposed" (clipped share at least), "uniform" (structure / (brightness + 10) at
    most), "underexposed" (highlight at most), "blurry" (detail at most), with the median, MAD
    and share flagged by the absolute bound of each under "fitted" and which bounds moved under
    "guarded"."""
    ok = np.asarray(stats["readable"]).astype(bool)
    out: dict = {"z": float(z), "rows": int(ok.sum()), "fitted": {}, "guarded": []}
    values = reason_values(stats)
    for reason, absolute in ABSOLUTE.items():
        v = values[reason][ok]
        share = float(_fires(v, reason, absolute).mean()) if len(v) else 0.0
        log = reason in LOG_SCALE  # a ratio to brightness, a luma: spread on a log scale
        med, mad = _robust(np.log(np.maximum(v, 1e-3)) if log else v)
        out["fitted"][reason] = (med, mad, share)
        bound = absolute
        if share > GUARD_SHARE and np.isfinite(med):
            fitted = med + z * mad if AT_LEAST[reason] else med - z * mad
            fitted = float(np.exp(fitted)) if log else fitted
            bound = max(absolute, fitted) if AT_LEAST[reason] else min(absolute, fitted)
            out["guarded"].append(reason)
        out[reason] = float(bound)
    for reason, value in (overrides or {}).items():
        if reason not in ABSOLUTE:
            raise ValueError(f"no pixel threshold '{reason}'; they are {', '.join(ABSOLUTE)}")
        if value is not None:
            out[reason] = float(value)
    return out


def pixel_reasons(stats: dict, thresholds: dict) -> np.ndarray:
    """Per row: 0 when no pixel reason applies, else 1 + the index in ``PIXEL_REASONS`` of the
    first that does. Rows without stats (``have`` False, NaN elsewhere) give 0."""
    readable = np.asarray(stats["readable"])
    n = len(readable)
    have = np.asarray(stats.get("have", np.ones(n, bool)), dtype=bool)
    values = reason_values(stats)
    legacy = _legacy_fires(stats)
    good = have & (readable == 1)
    tests = [have & (readable == 0)]
    tests += [good & (_fires(values[r], r, thresholds[r]) | legacy[r]) for r in PIXEL_REASONS[1:]]
    out = np.zeros(n, np.int8)
    for code in range(len(tests), 0, -1):  # the first reason wins: assign it last
        out[tests[code - 1]] = code
    return out

"""Pixel statistics of one decoded image, and the pixel reasons they give a row.

Per image (``image_stats``, on the RGB picture as decoded, at most ``ANALYSIS_SIZE`` on its
longer side when the decoder can reduce it):

    brightness      mean luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), 0..255
    contrast        standard deviation of the luma: the spread of brightness
    overexposed     share of pixels with luma >= 245 (blown-out highlights, glare)
    underexposed    share of pixels with luma <= 20 (crushed shadows)
    sharpness       variance of the 4-neighbour Laplacian of the luma (edge energy)
    colourfulness   Hasler and Suesstrunk's M: sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 +
                    mean_yb^2), rg = R - G, yb = (R + G) / 2 - B; 0 for a grey picture (over a
                    quarter of the pixels: every other one of every other line)

Reasons (``PIXEL_REASONS``, first that applies; ``pixel_reasons``), each a robust bound over the
readable rows (median and 1.4826 MAD, as the outlier score's threshold) held together with an
absolute bound, so that a batch of good pictures flags nothing and a batch of bad ones cannot
move its own bound past what is plainly bad:

    unreadable      the image is missing, cannot be read or cannot be decoded
    overexposed     overexposed share >= max(0.4, median + z MAD): glare, a blown-out frame
                    (before uniform: glare crushes the contrast too)
    uniform         contrast <= min(6, exp(median - z MAD) of log contrast): a flat, empty or
                    dead frame
    underexposed    brightness <= min(40, exp(median - z MAD) of log brightness)
    blurry          relative sharpness log(sharpness / contrast^2) <= min(-2, median - z MAD):
                    edge energy against the picture's own contrast, so a darkened or low-contrast
                    picture is not called blurry for being dim

Every bound can be fixed by the caller instead (``fit_thresholds(..., overrides)``).
"""

from __future__ import annotations

import numpy as np

ANALYSIS_SIZE = 256  # longer side the decoder may reduce a picture to (never below it)
BRIGHT_LUMA = 245
DARK_LUMA = 20

#: per-row columns stored by ``vclust pixels``, and their dtypes
COLUMNS = {"readable": "uint8", "problem": "int8", "width": "int32", "height": "int32",
           "brightness": "float32", "contrast": "float32", "overexposed": "float32",
           "underexposed": "float32", "sharpness": "float32", "colourfulness": "float32"}
STAT_COLUMNS = ("brightness", "contrast", "overexposed", "underexposed", "sharpness",
                "colourfulness")
#: ``problem`` codes: why a row is not readable (0: it is)
PROBLEMS = ("", "missing", "unreadable", "undecodable")

#: pixel reasons, in order of precedence (a row gets the first that applies)
PIXEL_REASONS = ("unreadable", "overexposed", "uniform", "underexposed", "blurry")
#: the absolute side of each bound (see the module docstring)
ABSOLUTE = {"uniform": 6.0, "overexposed": 0.4, "underexposed": 40.0, "blurry": -2.0}
DEFAULT_PIXEL_Z = 4.0

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def image_stats(rgb: np.ndarray, luma: np.ndarray | None = None,
                hist=None) -> tuple[float, ...]:
    """The ``STAT_COLUMNS`` of one RGB picture (h, w, 3) uint8; ``luma`` its luma (h, w) uint8
    and ``hist`` the 256 counts of its values, when the decoder gave them (Pillow's
    ``convert("L")`` and ``histogram()``: the same weights, rounded), else computed here. The
    colourfulness is taken over every other pixel of every other line (a quarter of the pixels,
    an unbiased sample of the same means and spreads, at a quarter of the cost)."""
    rgb = np.asarray(rgb)
    if luma is None:
        luma = np.rint(rgb.astype(np.float32) @ _LUMA).astype(np.uint8)
    n = luma.size
    if hist is None:
        hist = np.bincount(luma.ravel(), minlength=256)
    hist = np.asarray(hist, dtype=np.float64)
    levels = np.arange(256, dtype=np.float64)
    brightness = float(hist @ levels) / n
    contrast = float(np.sqrt(max(0.0, float(hist @ (levels * levels)) / n - brightness ** 2)))
    over = float(hist[BRIGHT_LUMA:].sum()) / n
    under = float(hist[:DARK_LUMA + 1].sum()) / n
    if luma.shape[0] > 2 and luma.shape[1] > 2:
        y = luma.astype(np.int16)
        lap = (4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:])
        sharpness = float(lap.astype(np.float32).var())
    else:
        sharpness = 0.0
    c = rgb[::2, ::2].astype(np.int16)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    rg = (r - g).astype(np.float32)
    yb2 = (r + g - 2 * b).astype(np.float32)  # twice yb
    colourfulness = float(np.sqrt(rg.var() + yb2.var() / 4)
                          + 0.3 * np.hypot(rg.mean(), yb2.mean() / 2))
    return brightness, contrast, over, under, sharpness, colourfulness


def relative_sharpness(sharpness, contrast) -> np.ndarray:
    """log(sharpness / contrast^2): edge energy against the picture's own contrast."""
    s = np.asarray(sharpness, dtype=np.float64)
    c = np.asarray(contrast, dtype=np.float64)
    return np.log(np.maximum(s, 1e-6)) - np.log(np.maximum(c * c, 1e-6))


def _robust(v) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    return med, float(np.median(np.abs(v - med))) * 1.4826


def fit_thresholds(stats: dict, z: float = DEFAULT_PIXEL_Z, overrides: dict | None = None) -> dict:
    """The bound of each reason (see the module docstring) from the stats of the readable rows
    (``stats``: columns of ``COLUMNS``, arrays over the same rows); ``overrides`` {reason: value}
    fixes a bound instead. Returns {reason: bound} for "uniform" (contrast at most),
    "overexposed" (share at least), "underexposed" (brightness at most), "blurry" (relative
    sharpness at most), with the median and MAD each was fitted from."""
    ok = np.asarray(stats["readable"]).astype(bool)
    out: dict = {"z": float(z), "rows": int(ok.sum()), "fitted": {}}
    med, mad = _robust(np.log(np.maximum(np.asarray(stats["contrast"])[ok], 1e-3)))
    out["fitted"]["uniform"] = (med, mad)
    out["uniform"] = min(ABSOLUTE["uniform"], float(np.exp(med - z * mad))) if ok.any() \
        else ABSOLUTE["uniform"]
    med, mad = _robust(np.asarray(stats["overexposed"])[ok])
    out["fitted"]["overexposed"] = (med, mad)
    out["overexposed"] = max(ABSOLUTE["overexposed"], med + z * mad) if ok.any() \
        else ABSOLUTE["overexposed"]
    med, mad = _robust(np.log(np.maximum(np.asarray(stats["brightness"])[ok], 1e-3)))
    out["fitted"]["underexposed"] = (med, mad)
    out["underexposed"] = min(ABSOLUTE["underexposed"], float(np.exp(med - z * mad))) \
        if ok.any() else ABSOLUTE["underexposed"]
    rel = relative_sharpness(np.asarray(stats["sharpness"])[ok], np.asarray(stats["contrast"])[ok])
    med, mad = _robust(rel)
    out["fitted"]["blurry"] = (med, mad)
    out["blurry"] = min(ABSOLUTE["blurry"], med - z * mad) if ok.any() else ABSOLUTE["blurry"]
    for reason, value in (overrides or {}).items():
        if reason not in ABSOLUTE:
            raise ValueError(f"no pixel threshold '{reason}'; they are {', '.join(ABSOLUTE)}")
        if value is not None:
            out[reason] = float(value)
    return out


def pixel_reasons(stats: dict, thresholds: dict) -> np.ndarray:
    """Per row: 0 when no pixel reason applies, else 1 + the index in ``PIXEL_REASONS`` of the
    first that does. ``stats`` columns of rows without stats (``readable`` absent: NaN elsewhere)
    give 0."""
    readable = np.asarray(stats["readable"])
    n = len(readable)
    have = np.asarray(stats.get("have", np.ones(n, bool)), dtype=bool)
    contrast = np.asarray(stats["contrast"], dtype=np.float64)
    tests = [
        have & (readable == 0),
        have & (readable == 1) & (np.asarray(stats["overexposed"]) >= thresholds["overexposed"]),
        have & (readable == 1) & (contrast <= thresholds["uniform"]),
        have & (readable == 1) & (np.asarray(stats["brightness"]) <= thresholds["underexposed"]),
        have & (readable == 1) & (relative_sharpness(stats["sharpness"], contrast)
                                  <= thresholds["blurry"]),
    ]
    out = np.zeros(n, np.int8)
    for code in range(len(tests), 0, -1):  # the first reason wins: assign it last
        out[tests[code - 1]] = code
    return out

"""The pixel statistics of one picture in compiled kernels (numba), for vclust.numerics.pixels.

A picture comes as (h, w) uint32 words, one a pixel, its R, G and B in the three lowest bytes
(RGBX pixels read in place: vclust.numerics.pixels.pixel_words). ``luma_histogram(words)`` is
Pillow's ``convert("L")`` of them, value for value (Pillow's fixed-point weights 19595, 38470
and 7471 of 65536, rounded), and the 256 counts of its values. ``stats(words, luma, hist)`` is
every statistic of the module docstring of vclust.numerics.pixels: those of the counts, two
passes over the luma (its differences and Laplacian; its 4 x 4 block sums) and two over the
words (the values at 255; the colourfulness sample). Every sum is of whole numbers, in 64-bit
integers: exact, so each statistic is its definition in float64 up to its last divisions and
square root. The loops are plain (numba and LLVM vectorise them); a numpy version took several
passes of whole-array calls each (benchmarks/RESULTS.md, "Pixel statistics").

The kernels are compiled once per machine into numba's disk cache (``cache=True``; the install's
warm-up, vclust.warmup, compiles them) for the one set of argument types the callers pass: C
ordered, writable uint32 words, uint8 luma and int64 counts (vclust.numerics.pixels makes them
so; any other types would be compiled anew, in each process).
"""

from __future__ import annotations

import math

import numba
import numpy as np

N_STATS = 11  # the statistics, in the order of vclust.numerics.pixels.STAT_COLUMNS
BRIGHT_LUMA = 245  # overexposed: luma at least this
DARK_LUMA = 20  # underexposed: luma at most this
CLIP_VALUE = 255  # clipped: a colour value at the top of the scale
QUANTISATION_ENERGY = 1.0 / 3.0  # dx^2 + dy^2 of luma rounded to whole levels: 2 x 2 / 12

# a pixel is one 32-bit word, R in its lowest byte (RGBX read little-endian); Pillow's
# convert("L") of it: (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16 (its Convert.c)
_U = np.uint32
_BYTE, _S8, _S16 = _U(0xFF), _U(8), _U(16)
_LR, _LG, _LB, _HALF = _U(19595), _U(38470), _U(7471), _U(0x8000)
_CLIP_R, _CLIP_G, _CLIP_B = _U(CLIP_VALUE), _U(CLIP_VALUE << 8), _U(CLIP_VALUE << 16)


@numba.njit(cache=True, nogil=True)
def luma_histogram(words):
    """(luma (h, w) uint8, its 256 counts int64) of (h, w) RGBX pixel words."""
    h, w = words.shape
    luma = np.empty((h, w), np.uint8)
    for i in range(h):
        for j in range(w):
            v = words[i, j]
            luma[i, j] = ((v & _BYTE) * _LR + ((v >> _S8) & _BYTE) * _LG
                          + ((v >> _S16) & _BYTE) * _LB + _HALF) >> _S16
    counts = np.zeros((4, 256), np.int64)  # four sets of counts: no wait on the same count
    flat = luma.ravel()
    n4 = flat.size // 4 * 4
    for k in range(0, n4, 4):
        counts[0, flat[k]] += 1
        counts[1, flat[k + 1]] += 1
        counts[2, flat[k + 2]] += 1
        counts[3, flat[k + 3]] += 1
    for k in range(n4, flat.size):
        counts[0, flat[k]] += 1
    hist = np.empty(256, np.int64)
    for v in range(256):
        hist[v] = counts[0, v] + counts[1, v] + counts[2, v] + counts[3, v]
    return luma, hist


@numba.njit(inline="always")
def _differences(luma):
    """(sum of dx^2, of dy^2, of the inner pixels' 4-neighbour Laplacian, of its squares)."""
    h, w = luma.shape
    sdx = sdy = slap = slap2 = 0
    for i in range(h):
        for j in range(w - 1):
            d = np.int32(luma[i, j + 1]) - np.int32(luma[i, j])
            sdx += d * d
        if i + 1 < h:
            for j in range(w):
                d = np.int32(luma[i + 1, j]) - np.int32(luma[i, j])
                sdy += d * d
        if 0 < i < h - 1:
            for j in range(1, w - 1):
                lap = (4 * np.int32(luma[i, j]) - np.int32(luma[i - 1, j])
                       - np.int32(luma[i + 1, j]) - np.int32(luma[i, j - 1])
                       - np.int32(luma[i, j + 1]))
                slap += lap
                slap2 += lap * lap
    return sdx, sdy, slap, slap2


@numba.njit(inline="always")
def _blocks(luma):
    """The sums of the luma's 4 x 4 blocks (the rest of its last lines and columns dropped)."""
    h4, w4 = luma.shape[0] // 4, luma.shape[1] // 4
    out = np.zeros((h4, w4), np.int64)
    line = np.empty(w4 * 4, np.int32)
    for b in range(h4):
        for j in range(w4 * 4):
            line[j] = (np.int32(luma[4 * b, j]) + np.int32(luma[4 * b + 1, j])
                       + np.int32(luma[4 * b + 2, j]) + np.int32(luma[4 * b + 3, j]))
        for c in range(w4):
            out[b, c] = line[4 * c] + line[4 * c + 1] + line[4 * c + 2] + line[4 * c + 3]
    return out


@numba.njit(inline="always")
def _shape(luma):
    """(structure, edges) from the 4 x 4 and 8 x 8 block sums, as the module docstring of
    vclust.numerics.pixels defines them; the picture at least 16 pixels on a side."""
    b4 = _blocks(luma)
    h4, w4 = b4.shape
    ex = ey = 0
    for i in range(h4):
        for j in range(w4):
            if j + 1 < w4:
                d = b4[i, j + 1] - b4[i, j]
                ex += d * d
            if i + 1 < h4:
                d = b4[i + 1, j] - b4[i, j]
                ey += d * d
    # the 4 x 4 means are the sums / 16: their squared differences the sums' / 256
    edges = (ex / 256.0 / (h4 * (w4 - 1)) + ey / 256.0 / ((h4 - 1) * w4)) / 16.0
    s = s2 = 0
    for i in range(h4 // 2):
        for j in range(w4 // 2):
            v = (b4[2 * i, 2 * j] + b4[2 * i + 1, 2 * j] + b4[2 * i, 2 * j + 1]
                 + b4[2 * i + 1, 2 * j + 1])
            s += v
            s2 += v * v
    m8 = (h4 // 2) * (w4 // 2)
    mean = s / 64.0 / m8
    return math.sqrt(max(0.0, s2 / 4096.0 / m8 - mean * mean)), edges


@numba.njit(inline="always")
def _colour(words):
    """(colourfulness over every other pixel of every other line, values at 255 among R, G, B)."""
    h, w = words.shape
    clipped = 0
    for i in range(h):
        for j in range(w):
            v = words[i, j]
            clipped += ((v & _CLIP_R) == _CLIP_R) + ((v & _CLIP_G) == _CLIP_G) + (
                (v & _CLIP_B) == _CLIP_B)
    srg = srg2 = syb = syb2 = 0
    for i in range(0, h, 2):
        for j in range(0, w, 2):
            v = words[i, j]
            r = np.int32(v & _BYTE)
            g = np.int32((v >> _S8) & _BYTE)
            b = np.int32((v >> _S16) & _BYTE)
            rg = r - g
            yb = r + g - 2 * b  # twice (R + G) / 2 - B
            srg += rg
            srg2 += rg * rg
            syb += yb
            syb2 += yb * yb
    k = ((h + 1) // 2) * ((w + 1) // 2)
    m_rg, m_yb = srg / k, syb / (2.0 * k)
    v_rg = max(0.0, srg2 / k - m_rg * m_rg)
    v_yb = max(0.0, syb2 / (4.0 * k) - m_yb * m_yb)
    return math.sqrt(v_rg + v_yb) + 0.3 * math.hypot(m_rg, m_yb), clipped


@numba.njit(cache=True, nogil=True)
def stats(words, luma, hist):
    """The 11 statistics (float64, in ``STAT_COLUMNS`` order) of a picture: its (h, w) RGBX pixel
    words, its luma and the luma's counts (``luma_histogram``); at least one pixel."""
    h, w = luma.shape
    n = h * w
    s1 = s2 = below = 0
    over = under = math.nan
    highlight = -1
    for v in range(256):
        s1 += v * hist[v]
        s2 += v * v * hist[v]
        below += hist[v]  # pixels at luma v or less
        if v == BRIGHT_LUMA - 1:
            over = (n - below) / n  # luma >= BRIGHT_LUMA
        if v == DARK_LUMA:
            under = below / n
        if highlight < 0 and below >= 0.99 * n:  # the 99th percentile: the first level
            highlight = v
    brightness = s1 / n
    contrast = math.sqrt(max(0.0, s2 / n - brightness * brightness))
    sdx, sdy, slap, slap2 = _differences(luma)
    fine = math.nan
    if h >= 2 and w >= 2:
        fine = sdx / (h * (w - 1)) + sdy / ((h - 1) * w)
    sharpness = 0.0
    if h > 2 and w > 2:
        m = (h - 2) * (w - 2)
        sharpness = max(0.0, slap2 / m - (slap / m) ** 2)
    colourfulness, clipped = _colour(words)
    structure, edges, detail = contrast, math.nan, math.nan  # too small to reduce: the
    if h >= 16 and w >= 16:                                  # spread of the picture itself
        structure, edges = _shape(luma)
        detail = math.log(max(fine - QUANTISATION_ENERGY, 1e-3) / max(edges, 1e-6))
    return (brightness, contrast, over, under, sharpness, colourfulness, clipped / (3.0 * n),
            float(highlight), structure, edges, detail)

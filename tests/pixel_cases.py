"""Real photographs, cropped, re-encoded and degraded in graded steps: the cases the pixel reasons
are tested on (tests/test_pixel_reasons.py) and measured on (benchmarks/bench_pixel_reasons.py).

The photographs are every colour or grey photograph that ships inside the installed packages
(``photograph_files``): scikit-image's data folder, scikit-learn's two sample images and
matplotlib's sample photograph. Left out, and why: scikit-image's logo, color, horse, phantom,
chessboard_*, microaneurysms (drawn or synthetic, or a few pixels), page (a scanned document),
clock_motion (motion-blurred on purpose), lfw_subset (25 x 25 faces), multipage* and the gif
(a few pixels); matplotlib's logo2 and Minduka (drawings). The two micrographs (cell: a
fluorescence micrograph, ihc: a stained tissue slide) are kept apart (``MICROGRAPHS``): they are
real pictures but soft by nature, and are reported beside the photographs.

The photographs are split in two by alphabetical order, every other one (``TUNE``, ``CHECK``):
the bounds of vclust.numerics.pixels were chosen looking at the first half only; the second half
checks them.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

SKIMAGE = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
           "grass.png", "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png",
           "motorcycle_right.png", "retina.jpg", "rocket.jpg", "text.png")
MICROGRAPH_FILES = ("cell.png", "ihc.png")
MICROGRAPHS = tuple(Path(f).stem for f in MICROGRAPH_FILES)


def photograph_files() -> dict[str, Path]:
    """{name: file} of every photograph (and micrograph) used, from the installed packages."""
    import matplotlib
    import skimage
    import sklearn.datasets

    si = Path(skimage.__file__).parent / "data"
    sk = Path(sklearn.datasets.__file__).parent / "images"
    files = {Path(f).stem: si / f for f in SKIMAGE + MICROGRAPH_FILES}
    files.update(china=sk / "china.jpg", flower=sk / "flower.jpg",
                 grace_hopper=Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return dict(sorted(files.items()))


PHOTOGRAPHS = tuple(sorted({Path(f).stem for f in SKIMAGE} | {"china", "flower", "grace_hopper"}))
TUNE = PHOTOGRAPHS[0::2]
CHECK = PHOTOGRAPHS[1::2]

#: the graded steps of each degradation
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 2.0, 2.5, 3.0, 4.0, 5.0)  # ImageEnhance factor
BLUR = (1, 2, 3, 4, 6, 8)  # GaussianBlur radius, pixels of the crop
QUALITY = (50, 20, 10, 5)  # JPEG quality
NOISE = (5, 10, 20, 40)  # sd of Gaussian luma noise, grey levels
TRUNCATE = (0.1, 0.3, 0.5, 0.7, 0.9, 0.97)  # share of the file's bytes kept

#: the smoothest windows of these are skies, walls, road surfaces and a lawn: no reason
SKY_WALL_ROAD = ("brick", "camera", "grass", "gravel", "rocket")
BLUR_FROM_EDGES = 5.0  # blur is required to be found on crops with at least these edges
LIT = 40.0  # ... and at least this mean luma


def required(kind: str, strength: float, crop: dict | None = None):
    """The reasons a case may get, when it must get one of them ("" for none), or None when no
    requirement holds at this strength; ``crop`` the statistics of the intact crop it was made
    from (brightness, edges). The stated strengths:

    darkened    factor <= 0.15: underexposed
    brightened  factor >= 3 where factor x the crop's mean luma >= 240 (x3 from mean 80, x4 from
                60, x5 from 48: a picture that, unclipped, would be nearly white on average):
                overexposed
    blurred     radius 3 to 6 on lit crops (mean luma >= LIT) with edges >= BLUR_FROM_EDGES
                (shapes a blur can remove; 9 in 10 crops): blurry (a blurred star field, its
                points smeared dark, is underexposed first)
    truncated   any cut: unreadable
    flat        uniform; black frames uniform or underexposed
    jpeg        quality >= 10: none; noise sd <= 20: none (no reason of their own)
    intact      none (as a rate: at most 1%); the smoothest windows of SKY_WALL_ROAD: none
    """
    if kind == "darkened":
        return ("underexposed",) if strength <= 0.15 else None
    if kind == "brightened":
        return ("overexposed",) if strength >= 3 and strength * crop["brightness"] >= 240 else None
    if kind == "blurred":
        return ("blurry",) if (3 <= strength <= 6 and crop["edges"] >= BLUR_FROM_EDGES
                               and crop["brightness"] >= LIT) else None
    if kind == "truncated":
        return ("unreadable",)
    if kind == "flat":
        return ("uniform",)
    if kind == "black":
        return ("uniform", "underexposed")
    if kind == "jpeg":
        return ("",) if strength >= 10 else None
    if kind == "noise":
        return ("",) if strength <= 20 else None
    return ("",)


SMOOTH_SIZES = ((96, 72), (128, 96), (200, 150))  # the smoothest windows taken of each photograph


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _rng(name: str, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()) + salt)


def crops(img: Image.Image, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """``n`` crops at random positions, 96-400 pixels wide (as the photograph allows), 0.6-1.0 as
    high as wide; a quarter of them thumbnails (a region twice as large, reduced by Lanczos)."""
    W, H = img.size
    out = []
    for _ in range(n):
        w = min(W, int(rng.integers(96, 401)))
        h = min(H, int(w * rng.uniform(0.6, 1.0)))
        if rng.random() < 0.25 and 2 * w <= W and 2 * h <= H:
            x, y = int(rng.integers(0, W - 2 * w + 1)), int(rng.integers(0, H - 2 * h + 1))
            out.append(img.crop((x, y, x + 2 * w, y + 2 * h)).resize((w, h), Image.LANCZOS))
        else:
            x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            out.append(img.crop((x, y, x + w, y + h)))
    return out


def smoothest_window(img: Image.Image, size=(128, 96)) -> Image.Image:
    """The ``size`` window of the photograph whose luma varies least (its sky, wall, road or
    background): on a grid of steps of a quarter window, the least standard deviation."""
    luma = np.asarray(img.convert("L"), dtype=np.float32)
    w, h = size
    best, where = None, (0, 0)
    for y in range(0, luma.shape[0] - h + 1, h // 4):
        for x in range(0, luma.shape[1] - w + 1, w // 4):
            sd = float(luma[y:y + h, x:x + w].std())
            if best is None or sd < best:
                best, where = sd, (x, y)
    x, y = where
    return img.crop((x, y, x + w, y + h))


def _noisy(img: Image.Image, sd: float, rng) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)
    a = a + rng.normal(0, sd, a.shape[:2])[..., None]
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def flat_frames(n: int = 40, seed: int = 5) -> list[tuple]:
    """Flat frames of random sizes and colours, each channel 40-240 (a visible level, clipped
    nowhere), a third plain, a third with grain of sd 1, a third of sd 2; and ``n // 4`` black
    ones (each channel under 16: a capped lens, a dead sensor)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n + n // 4):
        black = i >= n
        colour = rng.integers(0, 16, 3) if black else rng.integers(40, 241, 3)
        shape = (int(rng.integers(96, 300)), int(rng.integers(96, 400)))
        img = Image.fromarray(np.broadcast_to(colour.astype(np.uint8), shape + (3,)).copy())
        sd = i % 3
        if sd:
            img = _noisy(img, sd, rng)
        out.append(("black" if black else "flat", float(sd), "flat", jpeg(img), i))
    return out


def photo_cases(names, n_intact: int = 30, n_degraded: int = 12):
    """[(kind, strength, photograph, JPEG bytes, index of the intact crop it comes from)] for
    each named photograph: ``n_intact`` intact crops (JPEG quality 75-95) and its smoothest
    window ("smooth"), and each graded degradation of the first ``n_degraded`` crops (JPEG 90
    after the degradation; truncation cuts the intact bytes)."""
    files = photograph_files()
    out = []
    for name in names:
        img = Image.open(files[name]).convert("RGB")
        rng = _rng(name)
        for i, c in enumerate(crops(img, n_intact, rng)):
            intact = jpeg(c, int(rng.integers(75, 96)))
            out.append(("intact", 0.0, name, intact, i))
            if i >= n_degraded:
                continue
            for f in BRIGHTNESS:
                kind = "darkened" if f < 1 else "brightened"
                out.append((kind, f, name, jpeg(ImageEnhance.Brightness(c).enhance(f)), i))
            for r in BLUR:
                blurred = c.filter(ImageFilter.GaussianBlur(r))
                out.append(("blurred", float(r), name, jpeg(blurred), i))
            for q in QUALITY:
                out.append(("jpeg", float(q), name, jpeg(c, q), i))
            for sd in NOISE:
                out.append(("noise", float(sd), name, jpeg(_noisy(c, sd, rng)), i))
            for t in TRUNCATE:
                out.append(("truncated", t, name, intact[:int(len(intact) * t)], i))
        for size in SMOOTH_SIZES:
            out.append(("smooth", float(size[0]), name, jpeg(smoothest_window(img, size)), -1))
    return out


def measure(cases, overrides: dict | None = None):
    """(the reason of every case as `vclust label` gives it, the bounds, the statistics): each
    picture read as `vclust pixels` reads it (vclust.jobs.pixels.row_stats), the bounds fitted
    over all the readable cases together (vclust.numerics.pixels.fit_thresholds)."""
    from vclust.jobs.pixels import row_stats
    from vclust.numerics.pixels import COLUMNS, PIXEL_REASONS, fit_thresholds, pixel_reasons

    rows = [row_stats("ok", c[3]) for c in cases]
    stats = {name: np.asarray(col, dtype=dtype)
             for (name, dtype), col in zip(COLUMNS.items(), zip(*rows))}
    ok = stats["readable"] == 1
    bounds = fit_thresholds({k: v[ok] for k, v in stats.items()}, overrides=overrides)
    reasons = np.asarray(("",) + PIXEL_REASONS, dtype=object)[pixel_reasons(stats, bounds)]
    return [str(r) for r in reasons], bounds, stats


def evaluate(cases, reasons, stats) -> dict:
    """{(kind, strength): {"counts": Counter of reasons ("" none), "required": how many cases
    had a requirement, "failed": [(photograph, reason got, reasons allowed)]}}. Degradations of a
    crop that itself has a reason are left out (the degradation of an already flagged picture
    proves nothing)."""
    import collections

    crop = {(c[2], c[4]): {"brightness": float(stats["brightness"][i]),
                           "edges": float(stats["edges"][i]), "reason": reasons[i]}
            for i, c in enumerate(cases) if c[0] == "intact"}
    out: dict = {}
    for i, (kind, strength, name, _, j) in enumerate(cases):
        base = crop.get((name, j))
        if kind not in ("intact", "smooth", "flat", "black") and base["reason"]:
            continue
        if kind == "smooth":
            want = ("",) if name in SKY_WALL_ROAD else None
        else:
            want = required(kind, strength, base)
        cell = out.setdefault((kind, strength), {"counts": collections.Counter(), "required": 0,
                                                 "failed": []})
        cell["counts"][reasons[i]] += 1
        if want is not None and kind != "intact":
            cell["required"] += 1
            if reasons[i] not in want:
                cell["failed"].append((name, reasons[i], want))
    return out


def table(result: dict) -> list[str]:
    """One line per (kind, strength) of ``evaluate``: found / required and the reasons got."""
    lines = []
    for (kind, s), cell in sorted(result.items()):
        n = sum(cell["counts"].values())
        counts = ", ".join(f"{r or 'none'} {c}" for r, c in cell["counts"].most_common())
        if kind == "intact":
            need = f"flagged {n - cell['counts']['']}/{n}"
        elif cell["required"]:
            need = f"as required {cell['required'] - len(cell['failed'])}/{cell['required']}"
        else:
            need = "no requirement"
        lines.append(f"{kind:10s} {s:6g}  {need:24s} {counts}")
    return lines

"""The pixel reasons on real photographs (every one the installed packages ship, tests/pixel_cases)
cropped at several positions and sizes, re-encoded as JPEG and degraded in graded steps: every
degradation past its stated strength (pixel_cases.required) gets its own reason, at most 1% of
the intact crops get any, on the half of the photographs the bounds were chosen on and on the
half they were not."""

import numpy as np
import pytest

from tests import pixel_cases as C
from vclust.jobs.pixels import row_stats
from vclust.numerics.pixels import (COLUMNS, PIXEL_REASONS, STAT_COLUMNS, fit_thresholds,
                                    pixel_reasons)


@pytest.mark.parametrize("half", ["tune", "check"])
def test_every_degradation_past_its_strength_gets_its_own_reason(half, figure):
    names = C.TUNE if half == "tune" else C.CHECK
    cases = C.photo_cases(names) + C.flat_frames(seed=len(half))
    reasons, bounds, stats = C.measure(cases)
    assert not bounds["guarded"]  # a mixed collection: every bound is the absolute one
    result = C.evaluate(cases, reasons, stats)
    failed = {key: cell["failed"] for key, cell in result.items() if cell["failed"]}
    assert not failed, failed
    # every degradation was required of many crops at its strongest steps
    required = {kind: sum(c["required"] for (k, _), c in result.items() if k == kind)
                for kind in ("darkened", "brightened", "blurred", "truncated", "flat", "jpeg",
                             "noise")}
    assert min(required.values()) >= 40, required
    intact = result[("intact", 0.0)]["counts"]
    n_intact = sum(intact.values())
    flagged = n_intact - intact[""]
    assert n_intact >= 9 * 30 and flagged <= 0.01 * n_intact, intact
    # the smoothest windows of the skies, walls, road and lawn carry no reason (evaluate
    # requires none of them), and no smoothest window of any photograph is called blurry
    smooth = [r for c, r in zip(cases, reasons) if c[0] == "smooth"]
    assert "blurry" not in smooth
    # between the stated strengths and none, the reasons grow with the strength
    for kind, steps in (("darkened", (0.5, 0.3, 0.2)), ("blurred", (1.0, 2.0, 3.0))):
        want = "underexposed" if kind == "darkened" else "blurry"
        found = [result[(kind, s)]["counts"][want] for s in steps]
        assert found == sorted(found), (kind, found)
    figure(f"pixel reasons, {half} half ({', '.join(names)}): every degradation past its "
           f"strength with its own reason ({sum(required.values())} cases); {flagged} of "
           f"{n_intact} intact crops with a reason")


def _stats_of(cases):
    rows = [row_stats("ok", c[3]) for c in cases]
    return {name: np.asarray(col, dtype=dtype)
            for (name, dtype), col in zip(COLUMNS.items(), zip(*rows))}


def test_a_collection_past_a_bound_as_a_whole_is_judged_against_itself():
    """A night camera: every crop darkened x0.1, one in ten x0.01. The absolute bound would call
    them all underexposed; fitted to the collection, only the darkest get a reason (underexposed,
    or uniform: black)."""
    import io

    from PIL import Image, ImageEnhance

    cases = [c for c in C.photo_cases(["chelsea", "coffee"], n_intact=20, n_degraded=0)
             if c[0] == "intact"]
    night = []
    for i, c in enumerate(cases):
        img = Image.open(io.BytesIO(c[3])).convert("RGB")
        f = 0.01 if i % 10 == 0 else 0.1
        night.append(("darkened", f, c[2], C.jpeg(ImageEnhance.Brightness(img).enhance(f)), i))
    stats = _stats_of(night)
    assert (pixel_reasons(stats, fit_thresholds(stats, overrides={"underexposed": 44}))
            == 1 + PIXEL_REASONS.index("underexposed")).mean() > 0.8
    bounds = fit_thresholds(stats)
    assert bounds["guarded"] == ["underexposed"] and bounds["underexposed"] < 44
    code = pixel_reasons(stats, bounds)
    darkest = np.array([c[1] == 0.01 for c in night])
    assert (code[darkest] > 0).all() and not code[~darkest].any()


def test_rows_measured_before_the_current_statistics_keep_their_reasons():
    """Rows whose new columns are absent (a batch measured by an older vclust, read as NaN) get
    the reasons of the statistics they have, with the bounds of then, except blurry."""
    files = C.photograph_files()
    from PIL import Image, ImageEnhance, ImageFilter

    img = Image.open(files["astronaut"]).convert("RGB").crop((0, 0, 256, 200))
    cases = [("intact", 0, "a", C.jpeg(img), 0),
             ("darkened", 0.05, "a", C.jpeg(ImageEnhance.Brightness(img).enhance(0.05)), 0),
             ("flat", 0, "a", C.jpeg(Image.new("RGB", (256, 200), (90, 91, 92))), 0),
             ("blurred", 6, "a", C.jpeg(img.filter(ImageFilter.GaussianBlur(6))), 0)]
    stats = _stats_of(cases)
    new = [c for c in STAT_COLUMNS if c not in ("brightness", "contrast", "overexposed",
                                                "underexposed", "sharpness", "colourfulness")]
    old = {k: (np.full(len(v), np.nan, np.float32) if k in new else v) for k, v in stats.items()}
    names = np.asarray(("",) + PIXEL_REASONS, dtype=object)
    assert list(names[pixel_reasons(stats, fit_thresholds(stats))]) == \
        ["", "underexposed", "uniform", "blurry"]
    # then: no blur measure to trust (the old one called this sharp crop blurry)
    assert list(names[pixel_reasons(old, fit_thresholds(old))]) == \
        ["", "underexposed", "uniform", ""]


def test_a_bound_fixed_by_the_caller_replaces_the_absolute_one():
    files = C.photograph_files()
    from PIL import Image, ImageEnhance

    img = Image.open(files["coffee"]).convert("RGB").crop((0, 0, 300, 220))
    cases = [("darkened", f, "coffee", C.jpeg(ImageEnhance.Brightness(img).enhance(f)), 0)
             for f in (0.05, 0.1, 0.3, 1.0)]
    stats = _stats_of(cases)
    under = 1 + PIXEL_REASONS.index("underexposed")
    assert (pixel_reasons(stats, fit_thresholds(stats)) == under).tolist() == \
        [True, True, False, False]
    fixed = fit_thresholds(stats, overrides={"underexposed": 15})
    assert fixed["underexposed"] == 15
    assert (pixel_reasons(stats, fixed) == under).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="no pixel threshold"):
        fit_thresholds(stats, overrides={"glare": 1})

"""`vclust pixels` on a synthetic zip shaped like VeRi-Wild's, beside a plain Pillow loop.

The zip: ROWS entries named like VeRi-Wild's ids, stored (JPEGs do not compress), each a picture
of the synthetic case (vclust.synth_images.render) 200-300 pixels wide at JPEG quality 92, about
10-17 KB: the size of the real images. 1,000 distinct pictures are drawn and their bytes reused
(the decoder does not know). The store holds one batch of ROWS rows with those ids.

Measured, one after the other, on the same zip:

    vclust      `vclust pixels STORE --images ZIP --all` as a subprocess on its default
                LocalCluster (one worker process per core): wall time of the command, time of
                the pixel pass itself (from its progress lines), peak RSS of its process tree.
                Its JPEGs are decoded by libjpeg-turbo into arrays (simplejpeg;
                vclust.storage.decode.decode_jpeg), the same pixels Pillow gives, and measured
                by compiled kernels (vclust.numerics.pixel_kernels)
    plain loop  one Python process: zipfile.ZipFile.read, PIL.Image.open, convert("RGB"), the
                same statistics (vclust.numerics.pixels.image_stats), row by row

The section written says the date and the 1-minute load average of the machine when each of the
two was measured (other work on the same 2 cores slows both).

Usage: python benchmarks/bench_pixels.py [ROWS]   (default 20,000; 416,314 for the whole set,
about 6 GB of zip). Smaller runs are extrapolated to 416,314 images, and say so.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, ROWS, PeakMemory, machine, run_measured, vclust_cmd, write_section  # noqa: E402

N_DISTINCT = 1000
QUALITY = 92


def make_zip(rows: int) -> tuple[Path, list[str]]:
    path = DATA / f"pixels-zip-{rows}.zip"
    ids = [f"veriwild/{1 + i % 174}/{i // 12:05d}/{i:06d}.jpg" for i in range(rows)]
    if path.exists():
        return path, ids
    from vclust.synth.images import PAINT, SHAPES, render

    rng = np.random.default_rng(0)
    pictures = []
    for j in range(N_DISTINCT):
        w = int(rng.integers(200, 301))
        h = int(w * rng.uniform(0.72, 0.9))
        img = render(str(rng.choice(list(SHAPES))), str(rng.choice(["front", "rear"])),
                     str(rng.choice(list(PAINT))), jitter=int(rng.integers(0, 8)),
                     detail=int(rng.integers(0, 4)), size=(w, h))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=QUALITY)
        pictures.append(buf.getvalue())
    tmp = path.with_suffix(".partial")
    DATA.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for i, name in enumerate(ids):
            zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), pictures[(i * 7919) % N_DISTINCT])
    os.replace(tmp, path)
    return path, ids


def make_store(rows: int, ids: list[str], tag: str = "") -> Path:
    import pandas as pd

    work = DATA / f"pixels-store-{rows}{tag}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    np.save(work / "d.npy", np.zeros((rows, 8), np.float32) + np.arange(rows)[:, None])
    pd.DataFrame({"paths": ids}).to_csv(work / "ids.csv", index=False)
    store = work / "store"
    run_measured(vclust_cmd() + ["-q", "ingest", str(store), str(work / "d.npy"), "--ids",
                                 str(work / "ids.csv"), "--batch", "b0"])
    return store


def plain_loop(zip_path: Path, ids: list[str]) -> tuple[float, float]:
    """The baseline, in this process: (wall seconds, CPU seconds) for every image."""
    import time

    from PIL import Image

    from vclust.numerics.pixels import image_stats

    t0, c0 = time.perf_counter(), time.process_time()
    with zipfile.ZipFile(zip_path) as zf:
        for name in ids:
            with Image.open(io.BytesIO(zf.read(name))) as im:
                image_stats(np.asarray(im.convert("RGB")))
    return time.perf_counter() - t0, time.process_time() - c0


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    zip_path, ids = make_zip(rows)
    size_kb = np.mean([i.file_size for i in zipfile.ZipFile(zip_path).infolist()[:2000]]) / 1e3
    store = make_store(rows, ids)
    cores = os.cpu_count()
    # the fixed cost (interpreters, imports, the cluster's start-up) from the same command on a
    # 100-image batch, so the CPU of the pixel pass itself can be told from it
    tiny = make_store(100, ids[:100], "tiny")
    fixed, whole_run = {}, {}
    run_measured(vclust_cmd() + ["pixels", str(tiny), "--images", str(zip_path), "--all"],
                 stats=fixed)
    fixed_cpu = fixed["cpu"]
    load_v = os.getloadavg()[0]
    wall, peak, out = run_measured(vclust_cmd() + ["pixels", str(store), "--images",
                                                   str(zip_path), "--all"], stats=whole_run)
    cpu = whole_run["cpu"]  # the CLI, its scheduler and workers, start-up included
    pass_cpu = max(cpu - fixed_cpu, 1e-9)
    stamps = [float(m.group(1)) for m in re.finditer(r"\[\s*([\d.]+)s\] pixels: batch b0", out.stderr)]
    work = stamps[-1] - stamps[0] if len(stamps) >= 2 else wall
    load_b = os.getloadavg()[0]
    with PeakMemory() as mem:
        base, base_cpu = plain_loop(zip_path, ids)
    v_rate, b_rate = rows / work, rows / base
    scale = ROWS / rows
    whole = (wall - work) + ROWS / v_rate
    whole_cpu = (wall - work) + ROWS * (pass_cpu / rows) / cores  # with both cores ours alone
    note = ("" if rows == ROWS else
            f" Measured on {rows:,} images and extrapolated to {ROWS:,} (the pixel pass scales "
            "with the rows; the cluster start-up is paid once).")
    text = f"""## Pixel statistics (`vclust pixels`, {time.strftime("%Y-%m-%d")})

`python benchmarks/bench_pixels.py {rows}`: {rows:,} images of a synthetic zip shaped like
VeRi-Wild's (stored JPEGs 200-300 px wide, quality {QUALITY}, {size_kb:.1f} KB on average), one
batch; {machine()}, on a machine shared with other work (1-minute load average {load_v:.2f}
as `vclust pixels` started, {load_b:.2f} as the plain loop started; other work makes both
slower).

| | wall | pixel pass | images/s | images/s per core (wall) | CPU of the pass | images per CPU-second | peak RSS |
|---|---|---|---|---|---|---|---|
| `vclust pixels` (LocalCluster, {cores} worker processes) | {wall:.1f} s | {work:.1f} s | {v_rate:,.0f} | {v_rate / cores:,.0f} | {pass_cpu:.1f} s (+ {fixed_cpu:.1f} s start-up) | {rows / pass_cpu:,.0f} | {peak / 2**20:,.0f} MiB (CLI, scheduler, workers) |
| plain loop (one process: zipfile, Pillow full decode, the same statistics) | {base:.1f} s | {base:.1f} s | {b_rate:,.0f} | {b_rate:,.0f} | {base_cpu:.1f} s | {rows / base_cpu:,.0f} | {mem.peak / 2**20:,.0f} MiB |

Images per CPU-second is the per-core rate that sharing the machine does not dilute: CPU time
of the whole process tree (for vclust, less that of the same command on a 100-image batch: its
interpreters, imports and cluster start-up). Whole set,
{ROWS:,} images: `vclust pixels` about {whole / 60:.1f} min at this run's wall rate, about
{whole_cpu / 60:.1f} min at its CPU rate with both cores free (target: under 5 min); the plain
loop about {base * scale / 60:.1f} min ({base_cpu * scale / 60:.1f} min of CPU).{note} Each worker opens the zip once,
decodes its JPEGs with libjpeg-turbo straight into arrays (simplejpeg), at full size (VeRi-Wild's
pictures are under twice the 256-pixel analysis size, so no reduction in the decoder's DCT
applies; larger JPEGs are reduced 1/2, 1/4 or 1/8 there, as Pillow's draft mode reduces them),
and computes the luma and the statistics in two compiled kernels (numba, from its disk cache).
"""
    write_section("pixels", text)


if __name__ == "__main__":
    main()

"""Memory at 10x rows: 4,163,140 x 512 (8.5 GB float32) fitted with two workers limited to
2 GB each; the peak summed RSS of every process (CLI + workers) is recorded."""

import argparse
import shutil

import numpy as np
from common import DATA, ROWS, machine, run_measured, vclust_cmd, write_section


def build_store(path, reps):
    """The 416,314-row osnet set repeated ``reps`` times with small noise, written chunk by chunk."""
    from vclust.storage.store import Store

    src = Store.open(DATA / f"store-{ROWS}").array("osnet")
    n = ROWS * reps
    st = Store.create(path, {"osnet": 512})
    start = st.begin_append("x10", n)
    rng = np.random.default_rng(0)
    arr = st.array("osnet")
    step = st.chunk_rows * 8
    ids = []
    for r in range(reps):
        for a in range(0, ROWS, step):
            b = min(ROWS, a + step)
            block = src[a:b]
            block = np.maximum(block + rng.normal(0, 0.01, block.shape).astype(np.float32), 0)
            arr[start + r * ROWS + a: start + r * ROWS + b] = block
        ids.extend(f"x{r}/{i}" for i in range(ROWS))
    st.write_index_columns(start, np.asarray(ids, dtype=object), "x10")
    st.commit_batch({"id": "x10", "start": 0, "stop": n, "sources": [{"name": "osnet", "sha256": "synthetic"}],
                     "dropped_ids": [], "created": "bench"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    path = DATA / f"store-x{args.reps}"
    if not (path / "zarr.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        build_store(path, args.reps)
    cfg = DATA / "two-workers-2gb.yaml"
    cfg.write_text("kind: local\nn_workers: 2\nthreads_per_worker: 1\nmemory_limit: 2GB\n"
                   "processes: true\ndashboard_address: null\nlocal_directory: null\n")
    model = DATA / "model-x10"
    shutil.rmtree(model, ignore_errors=True)
    wall, peak, res = run_measured(vclust_cmd() + ["fit", str(path), "--descriptor", "osnet", "--k", "10",
                                                   "--model", str(model), "--cluster", str(cfg)])
    decisions = [line for line in res.stderr.splitlines()
                 if "memory" in line or "streaming" in line or "preprocessed" in line]
    text = f"""## Fit at 10x rows ({ROWS * args.reps:,} x 512 float32, {ROWS * args.reps * 512 * 4 / 1e9:.1f} GB)

`vclust fit STORE --descriptor osnet --k 10` (defaults: l2, PCA 0.95, k-means||, outlier
index and scores, metrics) with two worker processes limited to 2 GB each, on {machine()}.

| rows | wall time | peak memory, all processes |
|---|---|---|
| {ROWS * args.reps:,} | {wall:.0f} s | {peak / 2**30:.2f} GiB |

What `vclust fit` decided about memory (its own progress lines):

{chr(10).join("    " + line for line in decisions)}

Target: completes, peak under 5 GB.
"""
    write_section("fit_memory", text)


if __name__ == "__main__":
    main()

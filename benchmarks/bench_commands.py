"""What the user runs, timed as the user runs it: whole commands as fresh processes, cold and
warm, side by side in one run with a whole-process scikit-learn script doing the same clustering
work (np.load, L2-normalise, PCA to the same variance, KMeans, Calinski-Harabasz, Davies-Bouldin).

Commands (osnet, 512 dims, from the synthetic case):
  fit-416k-k12      vclust fit on 416,314 rows, --k 12 (outliers included)
  fit-416k-k6:16    vclust fit on 416,314 rows, --k-range 6:16
  fit-20k-k6:16     vclust fit on a 20,000-row store, --k-range 6:16
  label-20k         vclust label of a 20,000-row batch appended to the 416,314-row store
  demo              vclust demo (synth -> ingest -> fit -> label -> export -> report, 20,000 rows)

Cold: the first run after an install. The install step (`make install`) runs
`python -m vclust.warmup`, which fills numba's disk cache; so cold here is a fresh
NUMBA_CACHE_DIR filled by that same warm-up, an empty outlier index cache (VCLUST_CACHE_DIR,
vclust/storage/indexcache.py), and the OS page cache dropped (when this process may: root)
before each cold run, of vclust and of the peer alike; three cold runs (--cold), the median
reported, as one cold run moved by 1-2 s from run to run (benchmarks/RESULTS.md, 2026-12-05).
Warm: three more runs (--warm); the median is reported. vclust and the peer alternate run by
run, so the machine's drift over minutes falls on both. A warm fit finds the reference index its cold run cached (a user's second fit of the
same rows: another k, another algorithm); "index cache off" is the warm fit that builds it every
time (VCLUST_CACHE_DIR=off). Phases come from each command's own progress lines (first warm run).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from common import DATA, ROWS, ensure_case, machine, run_measured, vclust_cmd, write_section

SET = "osnet"
PEER = textwrap.dedent("""
    import sys, time
    t0 = time.perf_counter()
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score
    from sklearn.preprocessing import normalize
    path, ks = sys.argv[1], [int(k) for k in sys.argv[2].split(",")]
    x = np.load(path)
    t1 = time.perf_counter()
    z = PCA(0.95, random_state=0).fit_transform(normalize(x))
    t2 = time.perf_counter()
    for k in ks:
        labels = KMeans(k, n_init=1, random_state=0).fit_predict(z)
        ch, db = calinski_harabasz_score(z, labels), davies_bouldin_score(z, labels)
    t3 = time.perf_counter()
    print(f"load {t1 - t0:.2f} s, L2 + PCA {t2 - t1:.2f} s ({z.shape[1]} components), "
          f"KMeans + CH + DB x {len(ks)} k {t3 - t2:.2f} s")
""")


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def phases(stderr: str) -> str:
    out = []
    for line in stderr.splitlines():
        m = re.match(r"\[\s*([\d.]+)s\] (.*)", line)
        if m and not m.group(2).startswith(("k=", "dask:")):
            out.append(f"{float(m.group(1)):.1f} s {m.group(2)[:70]}")
    return "; ".join(out)


def prepare(rows: int) -> dict:
    """The stores and files the commands use, made once under DATA."""
    from vclust.storage.store import Store
    from vclust.synth import generate_case

    case = ensure_case(rows)
    # the night's batch: 20,000 new rows of the same synthetic world (seed 0: the same
    # prototypes, other vehicles). Before 2026-11-24 it came from seed 1, another world, whose
    # every row the model flagged as an outlier.
    paths = {"npy": DATA / f"{SET}-{rows}.npy", "store": DATA / f"cmd-store-{rows}",
             "npy20": DATA / f"{SET}-batch-20000.npy", "store20": DATA / "cmd-store-batch-20000",
             "night": DATA / "cmd-batch-20000"}
    if not paths["npy"].exists():
        x = np.asarray(np.load(case / "descriptors" / f"{SET}.pickle", allow_pickle=True),
                       dtype=np.float32)
        np.save(paths["npy"], x)
    if not (paths["store"] / "zarr.json").exists():
        shutil.rmtree(paths["store"], ignore_errors=True)
        subprocess.run(vclust_cmd() + ["-q", "ingest", str(paths["store"]), str(paths["npy"]),
                                       "--name", SET, "--ids", str(case / "images_paths.csv"),
                                       "--batch", "initial"], check=True)
    if not (paths["night"] / "truth.csv").exists():
        generate_case(paths["night"], n_rows=20_000, seed=0)
        x = np.asarray(np.load(paths["night"] / "descriptors" / f"{SET}.pickle",
                               allow_pickle=True), dtype=np.float32)
        np.save(paths["npy20"], x)
    if Store.open(paths["store"]).batch_ids() != ["initial"]:
        raise SystemExit(f"{paths['store']} holds more than the initial batch: remove it")
    # the label command appends to a copy, so the fits see the 416k rows only
    paths["label_store"] = DATA / f"cmd-label-store-batch-{rows}"
    if not (paths["label_store"] / "zarr.json").exists() or \
            "night" not in Store.open(paths["label_store"]).batch_ids():
        shutil.rmtree(paths["label_store"], ignore_errors=True)
        shutil.copytree(paths["store"], paths["label_store"])
        subprocess.run(vclust_cmd() + ["-q", "ingest", str(paths["label_store"]),
                                       str(paths["npy20"]), "--name", SET, "--ids",
                                       str(paths["night"] / "images_paths.csv"),
                                       "--batch", "night"], check=True)
    if not (paths["store20"] / "zarr.json").exists():
        shutil.rmtree(paths["store20"], ignore_errors=True)
        subprocess.run(vclust_cmd() + ["-q", "ingest", str(paths["store20"]),
                                       str(paths["npy20"]), "--name", SET, "--ids",
                                       str(paths["night"] / "images_paths.csv"),
                                       "--batch", "initial"], check=True)
    return paths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--cold", type=int, default=3,
                    help="cold runs of each command (each after an install's state: page cache "
                         "dropped, no outlier index cached); the median is reported")
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--only", action="append", default=[], metavar="TEXT",
                    help="run only the commands whose name contains TEXT (repeatable); the "
                         "table then holds those rows alone")
    ap.add_argument("--prepare", action="store_true", help="make the stores, then stop")
    args = ap.parse_args()
    paths = prepare(args.rows)
    if args.prepare:
        return
    work = Path(tempfile.mkdtemp(prefix="vclust-cmds-"))
    model = work / "model-k12"
    # the model the label command applies: fitted once, outside the timings
    # (its outlier index not cached: the timed fits find the cache as their cold run leaves it)
    subprocess.run(vclust_cmd() + ["-q", "fit", str(paths["store"]), "--descriptor", SET,
                                   "--k", "12", "--model", str(model)], check=True,
                   env=dict(os.environ, VCLUST_CACHE_DIR="off"))
    assert paths["label_store"] != paths["store"]
    peer = work / "peer.py"
    peer.write_text(PEER)
    ks = ",".join(str(k) for k in range(6, 17))
    commands = [
        ("fit 416k x 512, --k 12",
         lambda o: ["fit", str(paths["store"]), "--descriptor", SET, "--k", "12", "--model", o],
         [str(paths["npy"]), "12"]),
        ("fit 416k x 512, --k 12, index cache off",
         lambda o: ["fit", str(paths["store"]), "--descriptor", SET, "--k", "12", "--model", o],
         [str(paths["npy"]), "12"], {"VCLUST_CACHE_DIR": "off"}),
        ("fit 416k x 512, --k-range 6:16",
         lambda o: ["fit", str(paths["store"]), "--descriptor", SET, "--k-range", "6:16",
                    "--model", o], [str(paths["npy"]), ks]),
        ("fit 20k x 512, --k-range 6:16",
         lambda o: ["fit", str(paths["store20"]), "--descriptor", SET, "--k-range", "6:16",
                    "--model", o], [str(paths["npy20"]), ks]),
        ("label a 20k batch into the 416k store",
         lambda o: ["label", str(paths["label_store"]), "--model", str(model), "--batch", "night",
                    "--out", o], None),
        ("demo (20,000 rows, whole pipeline + report)",
         lambda o: ["demo", "--out", o], None),
    ]
    if args.only:
        commands = [c for c in commands if any(t in c[0] for t in args.only)]
        if not commands:
            raise SystemExit(f"no command name contains any of {args.only}")
    cache = work / "numba-cache"
    index_cache = work / "index-cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), VCLUST_CACHE_DIR=str(index_cache))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vclust.warmup"], env=env, check=True)
    install_warmup = time.perf_counter() - t
    dropped = None
    rows = []
    for name, argv, peer_args, *extra in commands:
        run_env = dict(env, **(extra[0] if extra else {}))
        kinds = [("vclust", lambda i: vclust_cmd() + argv(str(work / f"out-{i}")))]
        if peer_args is not None:
            kinds.append(("peer", lambda i: [sys.executable, str(peer), *peer_args]))
        times = {kind: ([], []) for kind, _ in kinds}
        first = {}
        # vclust and its peer alternate, run by run: the machine's speed drifts over minutes.
        # Between the cold runs and the warm ones each runs once untimed (run -1): the peer's
        # last cold run dropped the page cache under vclust's rows.
        for i in [*range(args.cold), -1, *range(args.cold, args.cold + args.warm)]:
            cold = 0 <= i < args.cold
            for kind, make in kinds:
                shutil.rmtree(work / f"out-{i}", ignore_errors=True)
                if cold:  # as after an install: no page cache, and no outlier index cached
                    if kind == "vclust":  # (the one the warm runs find is vclust's last cold)
                        shutil.rmtree(index_cache, ignore_errors=True)
                    dropped = drop_page_cache()
                wall, peak, out = run_measured(make(i), env=run_env)
                if i < 0:
                    continue
                times[kind][0 if cold else 1].append(wall)
                if i == args.cold:
                    first[kind] = out
                print(f"{name} / {kind} {'cold' if cold else 'warm'} run {i}: {wall:.1f} s",
                      flush=True)
        rows.append({"name": name, **{k: (*times[k], first[k]) for k in times}})
    lines = [f"## Whole commands, cold and warm (bench_commands.py, {time.strftime('%Y-%m-%d')})",
             "",
             f"Each command as a fresh process on {machine()}; osnet rows of the synthetic case.",
             "Cold: the first run after an install (numba's cache filled by the install step's "
             f"`python -m vclust.warmup`, {install_warmup:.0f} s, into a fresh NUMBA_CACHE_DIR"
             + ", an empty outlier index cache"
             + ("; the OS page cache dropped before it" if dropped else
                "; the OS page cache could not be dropped here") + f"), {args.cold} runs, "
             f"median. Warm: {args.warm} more "
             "runs, median; a warm fit finds the outlier reference index (and the fit's "
             "neighbour answers) its cold run cached, as a second fit of the same rows does; "
             "\"index cache off\" builds them in every run (VCLUST_CACHE_DIR=off). The peer: a "
             "whole-process scikit-learn script (np.load, normalize, PCA(0.95), KMeans(k, "
             "n_init=1), CH, DB for each k; no outlier work), run after each vclust run "
             "in the same state.",
             "",
             "| command | vclust cold (median; runs) | vclust warm (median; runs) "
             "| scikit-learn script cold (median; runs) | script warm (median; runs) "
             "| warm ratio | cold ratio |",
             "|---|---|---|---|---|---|---|"]

    def runs(v):
        return f"{statistics.median(v):.1f} s ({', '.join(f'{x:.1f}' for x in v)})"

    for r in rows:
        vc, vw, _ = r["vclust"]
        cells = [r["name"], runs(vc), runs(vw)]
        if "peer" in r:
            pc, pw, _ = r["peer"]
            cells += [runs(pc), runs(pw),
                      f"{statistics.median(vw) / statistics.median(pw):.2f}x",
                      f"{statistics.median(vc) / statistics.median(pc):.2f}x"]
        else:
            cells += ["-", "-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Phases (first warm run; seconds since the command started):", ""]
    for r in rows:
        lines.append(f"- {r['name']}: {phases(r['vclust'][2].stderr)}")
        if "peer" in r:
            lines.append(f"  - scikit-learn script: {r['peer'][2].stdout.strip()}")
    write_section("commands", "\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

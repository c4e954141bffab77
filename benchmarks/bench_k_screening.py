"""Evidence for a decision issue 31 leaves open: would the brief's compare grid keep the same k if
each (spec, algorithm)'s k-range were scored on a seeded sample of the rows, and only the kept k
fitted and scored over every row?

Reads the runs.csv of a full `vclust compare` run of the brief's grid (bench_compare.py: every k
fitted and scored over all 416,314 rows) and, for each of its (spec, algorithm), runs the same
fit core (vclust.model.core.fit_partition, the same seed, the same k rule) on a seeded sample of
the reduced rows: the k it would keep, and the seconds the sampled k-range took here (one
process, numpy rows, the threads of this machine). Nothing of vclust changes; this only
measures. Run: python benchmarks/bench_k_screening.py [--runs DIR/runs.csv] [--sizes 20000 50000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from common import DATA, ROWS

SPECS = ["efficientnet-b7", "osnet", "vdc_color", "vdc_type", "osnet+vdc_type+vdc_color",
         "vdc_type+vdc_color*2"]


def reduced_spaces(store_path):
    """{spec: reduced rows (numpy float32)} as compare makes them (its reduction and mixtures)."""
    import dask

    from vclust.jobs.fit import MAX_COMPONENTS, SCALINGS
    from vclust.jobs.params import parse_spec
    from vclust.numerics.preprocess import MixturePreprocessor, Preprocessor
    from vclust.storage.store import Store

    store = Store.open(store_path)
    l2, standardize = SCALINGS["l2"]
    sets = {}
    with dask.config.set(scheduler="threads"):
        for name in ("efficientnet-b7", "osnet", "vdc_color", "vdc_type"):
            x = store.descriptors(name)
            pre = Preprocessor(l2=l2, standardize=standardize, pca_variance=0.95,
                               max_components=MAX_COMPONENTS, random_state=0).fit(x)
            sets[name] = (pre, pre.transform(x).compute())
            print(f"{name}: {sets[name][1].shape[1]} components", flush=True)
    out = {}
    for spec in SPECS:
        weights = parse_spec(spec)
        if len(weights) == 1:
            out[spec] = sets[spec][1]
            continue
        mix = MixturePreprocessor({n: sets[n][0] for n in weights}, weights).fitted()
        out[spec] = np.concatenate([sets[n][1] * np.float32(mix.weights_[n]) for n in weights],
                                   axis=1)
    return out


def main():
    import dask.array as da

    from vclust.model.core import fit_partition
    from vclust.numerics.blocks import sample_rows

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=str(DATA / "compare-out" / "runs.csv"))
    ap.add_argument("--store", default=str(DATA / f"compare-store-{ROWS}"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 50_000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                    help="seeds of the screening sample (the fits keep seed 0, as compare)")
    args = ap.parse_args()
    runs = pd.read_csv(args.runs)
    full = runs[runs.model_id.notna()].set_index(["descriptor", "algorithm"])["k"]
    full_s = runs.groupby(["descriptor", "algorithm"])["seconds"].sum()
    ks = sorted(runs.k.unique().tolist())
    spaces = reduced_spaces(args.store)
    rows = []
    for spec, z in spaces.items():
        for alg in ("kmeans", "gmm", "agglomerative"):
            for size in args.sizes:
                for s in args.seeds:
                    sample, _ = sample_rows(z, size, 1000 + s, stream=5)
                    t0 = time.perf_counter()
                    part = fit_partition(da.from_array(sample, chunks=(8192, -1)), alg, ks,
                                         local=sample, seed=0, cache={})
                    rows.append({"spec": spec, "algorithm": alg, "sample": size,
                                 "sample_seed": s, "k_sample": part.k,
                                 "k_all_rows": int(full[(spec, alg)]),
                                 "seconds_sample": round(time.perf_counter() - t0, 1),
                                 "seconds_all_rows": round(float(full_s[(spec, alg)]), 1)})
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    for size, g in table.groupby("sample"):
        print(f"sample {size}: same k in {(g.k_sample == g.k_all_rows).sum()} of {len(g)}; "
              f"k-ranges {g.seconds_sample.sum() / len(args.seeds):.0f} s here against "
              f"{g.drop_duplicates(['spec', 'algorithm']).seconds_all_rows.sum():.0f} s "
              "(fit, metrics of every k and the kept model's labelling, in compare)")


if __name__ == "__main__":
    main()

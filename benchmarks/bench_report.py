"""The report of a 416,314-row model: `vclust report` as a whole command after the fit, from the
synthetic case's veriwild.zip (15 clusters, 24 images per cluster card, 200 outliers, a map of
50,000 rows); wall time, peak memory of the process tree, and the size of what it writes.

Targets (issue 11): under 60 s after the fit; index.html plus assets under 25 MB."""

import argparse
import re
import shutil

from common import DATA, ROWS, ensure_case, machine, run_measured, vclust_cmd, write_section


def _phases(stderr: str) -> list[tuple[float, str]]:
    out = []
    for line in stderr.splitlines():
        m = re.match(r"\[\s*([\d.]+)s\] (.*)", line)
        if m:
            out.append((float(m.group(1)), m.group(2)))
    return out


def _du(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--descriptor", default="vdc_type+vdc_color")
    args = ap.parse_args()
    case = ensure_case(args.rows)
    zip_path = case / "veriwild.zip"
    if not zip_path.exists():
        raise SystemExit(f"{zip_path}: the case has no images; remove {case} to regenerate it")
    store = DATA / f"store-{args.rows}"  # bench_ingest's store, ingested once
    reg, labels, out = DATA / "report-registry", DATA / "report-labels", DATA / "report-out"
    if not (store / "zarr.json").exists():
        run_measured(vclust_cmd() + ["ingest", str(store), str(case), "--batch", "initial"])
    for p in (reg, labels, out):
        shutil.rmtree(p, ignore_errors=True)
    fit_wall, fit_peak, _ = run_measured(vclust_cmd() + [
        "fit", str(store), "--descriptor", args.descriptor, "--k", "15", "--registry", str(reg)])
    lab_wall, lab_peak, _ = run_measured(vclust_cmd() + [
        "label", str(store), "--registry", str(reg), "--out", str(labels), "--all"])
    rows = []
    for run in range(2):
        shutil.rmtree(out, ignore_errors=True)
        wall, peak, res = run_measured(vclust_cmd() + [
            "report", str(store), "--registry", str(reg), "--labels", str(labels),
            "--out", str(out), "--images", str(zip_path), "--sample", "50000",
            "--outliers", "200"])
        rows.append((wall, peak, res))
    wall, peak, res = rows[0]
    page = _du(out) - _du(out / "montages") - (out / "map.png").stat().st_size \
        - (out / "clusters.md").stat().st_size - (out / "report.json").stat().st_size
    phases = "\n".join(f"    [{t:6.1f}s] {msg}" for t, msg in _phases(res.stderr))
    text = f"""## Report (416,314-row model, synthetic veriwild.zip)

`vclust report STORE --registry R --labels L --out DIR --images veriwild.zip --sample 50000
--outliers 200` as a whole command (fresh process, LocalCluster started by it) on
{machine()}; the model: `vclust fit --descriptor {args.descriptor} --k 15` over all
{args.rows:,} rows ({fit_wall:.1f} s, peak {fit_peak / 2**30:.2f} GiB), labelled with `vclust label
--all` ({lab_wall:.1f} s). 15 clusters x 24 card images, 200 outlier images, 2,000 hover
thumbnails, a 2D + 3D map of 50,000 rows.

| run | wall time | peak memory (process tree) |
|---|---|---|
| first | {rows[0][0]:.1f} s | {rows[0][1] / 2**30:.2f} GiB |
| second (thumbnail files removed with the folder) | {rows[1][0]:.1f} s | {rows[1][1] / 2**30:.2f} GiB |

What the page loads (index.html, data.js, assets/, thumbs/): {page / 2**20:.1f} MB; the whole
folder with map.png, clusters.md and montages/: {_du(out) / 2**20:.1f} MB. Targets: under 60 s
after the fit, page under 25 MB.

Phases of the first run (the command's own progress lines):

{phases}
"""
    write_section("report", text)


if __name__ == "__main__":
    main()

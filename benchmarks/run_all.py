"""Run every benchmark in one go and collect their sections into benchmarks/RESULTS.md."""

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["bench_commands", "bench_ingest", "bench_fit", "bench_outliers", "bench_label",
         "bench_fit_memory", "bench_report", "bench_report_page", "bench_compare", "bench_pixels",
         "bench_case"]
# sections written by their own scripts (compare_outliers.py) or measured by hand, collected as
# they are
STATIC = ["compare_outliers", "outlier_matrix", "kernels"]


def main():
    names = [a for a in sys.argv[1:] if a != "--collect"]
    for name in ([] if "--collect" in sys.argv else names or ORDER):
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / f"{name}.py")], check=True, cwd=HERE)
    sections = [(HERE / "results" / f"{n[len('bench_'):]}.md") for n in ORDER]
    sections += [HERE / "results" / f"{n}.md" for n in STATIC]
    body = "\n".join(p.read_text() for p in sections if p.exists())
    (HERE / "RESULTS.md").write_text(
        "# Benchmark results\n\nProduced by `python benchmarks/run_all.py` "
        f"(last collected {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); each section "
        "says what ran. Data lives in $VCLUST_BENCH_DATA (default /tmp/vclust-bench).\n\n" + body)


if __name__ == "__main__":
    main()

"""How usable the report's page is: opened from disk in headless Chromium (Debian's package,
driven over the DevTools protocol by tests/cdp.py), the seconds until the 2D map is drawn and
until the page is ready (every card and gallery image loaded too), the 3D map's drawing when it
is first opened, then the seconds a
filter takes to redraw the map, a lasso to show its images and a click to enlarge an image with
its nearest rows; and the bytes the page loads.

    python benchmarks/bench_report_page.py [REPORT_DIR]    (default: bench_report's report-out)
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

from common import DATA, machine, write_section

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _du(path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def measure(report: Path, tmp: Path) -> dict:
    from cdp import Browser

    with Browser(tmp, 1400, 1000) as b:
        b.call("Page.navigate", url=(report / "index.html").resolve().as_uri())
        t0 = time.monotonic()
        b.wait_for("document.body && +document.body.dataset.mapPoints > 0", timeout=600)
        t2d = time.monotonic() - t0
        b.wait_for("document.body.dataset.ready === '1'", timeout=600)
        ready = time.monotonic() - t0
        points = int(b.eval("document.body.dataset.mapPoints"))
        t = time.monotonic()
        b.eval("document.querySelector('#map details').open = true")
        b.wait_for(f"document.body.dataset.mapPoints3d === '{points}'", timeout=600)
        t3d = time.monotonic() - t
        b.eval("document.querySelector('#map details').open = false")
        t = time.monotonic()
        b.eval("var s=document.getElementById('f-cluster'); s.value=s.options[1].value;"
               "s.dispatchEvent(new Event('change'))")
        b.wait_for("document.body.dataset.mapPoints === document.body.dataset.mapKept")
        filt = time.monotonic() - t
        b.eval("var s=document.getElementById('f-cluster'); s.value='';"
               "s.dispatchEvent(new Event('change'))")
        b.wait_for(f"document.body.dataset.mapPoints === '{points}'")
        r = b.rect("#map2d")
        cx, cy, rad = r["x"] + r["w"] * 0.4, r["y"] + r["h"] * 0.5, min(r["w"], r["h"]) / 4
        b.eval("document.body.dataset.selected = ''")
        t = time.monotonic()
        b.drag([(cx + rad * math.cos(a / 16 * 2 * math.pi), cy + rad * math.sin(a / 16 * 2 * math.pi))
                for a in range(17)])
        b.wait_for("document.body.dataset.selected !== ''")
        b.wait_for("Array.from(document.querySelectorAll('#selection img'))"
                   ".every(i => i.complete && i.naturalWidth > 0)")
        lasso = time.monotonic() - t
        selected = int(b.eval("document.body.dataset.selected"))
        t = time.monotonic()
        b.eval("window.VCLUST_PAGE.open(document.querySelector('#clusters figure.t').dataset.id)")
        b.wait_for("Array.from(document.querySelectorAll('#lightbox img'))"
                   ".every(i => i.complete && i.naturalWidth > 0)")
        enlarge = time.monotonic() - t
        errors = int(b.eval("document.body.dataset.errors")) + len(b.errors)
    page = sum(_du(report / p) if (report / p).is_dir() else (report / p).stat().st_size
               for p in ("index.html", "data.js", "assets", "thumbs"))
    return {"map2d": t2d, "ready": ready, "map3d": t3d, "points": points, "filter": filt, "lasso": lasso,
            "selected": selected, "enlarge": enlarge, "errors": errors, "page": page,
            "data_js": (report / "data.js").stat().st_size,
            "thumbs": len(list((report / "thumbs").glob("*")))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report", nargs="?", default=str(DATA / "report-out"))
    args = ap.parse_args()
    report = Path(args.report)
    m = measure(report, DATA / "page-profile")
    text = f"""## The report's page in a browser ({report.name})

Headless Chromium (Debian's package, software rendering, `--disable-gpu`) opening
`{report}/index.html` from disk on {machine()}, driven over the DevTools protocol
(`python benchmarks/bench_report_page.py`); measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
with a load average of {os.getloadavg()[0]:.1f} on the machine (other work sharing the cores).

| what | figure |
|---|---|
| what the page loads (index.html, data.js, assets/, thumbs/) | {m['page'] / 2**20:.1f} MB ({m['thumbs']:,} thumbnails, data.js {m['data_js'] / 2**20:.1f} MB) |
| 2D map drawn ({m['points']:,} points) | {m['map2d']:.1f} s |
| ready: 2D map drawn, every card and gallery image loaded | {m['ready']:.1f} s |
| the 3D map opened (drawn on first opening) | {m['map3d']:.1f} s |
| a cluster filter, the map redrawn | {m['filter']:.2f} s |
| a lasso of {m['selected']:,} points, their gallery's images loaded | {m['lasso']:.2f} s |
| an image enlarged with its nearest rows, their images loaded | {m['enlarge']:.2f} s |
| script errors | {m['errors']} |
"""
    write_section("report_page", text)


if __name__ == "__main__":
    main()

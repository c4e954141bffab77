"""docs/analysis.ipynb: stored without outputs, executed with a real kernel (nbclient +
ipykernel: any error in a cell fails the test), exported to HTML by nbconvert, and the export
opened in headless Chromium: the inline cluster cards' images load, the map draws, no script
error. A screenshot of the first card is left in the test's folder (its path is printed)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "analysis.ipynb"

# what the test adds to the page it opens: every script error counted, then (after load) the
# inline cards' images, the drawn maps, and the first card scrolled to the top of the view
HARNESS = """<script>
window.__vcErrors = [];
window.addEventListener("error", function (e) {
  if (e instanceof ErrorEvent) window.__vcErrors.push((e.message || "error") + " at " +
                                                     (e.filename || "") + ":" + (e.lineno || ""));
}, true);
window.addEventListener("load", function () { setTimeout(function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll(".vclust-card img"));
  var b = document.body;
  b.setAttribute("data-vc-images", imgs.length);
  b.setAttribute("data-vc-loaded", imgs.filter(function (i) {
    return i.complete && i.naturalWidth > 0; }).length);
  b.setAttribute("data-vc-cards", document.querySelectorAll(".vclust-card[data-cluster]").length);
  b.setAttribute("data-vc-plots", document.querySelectorAll(".js-plotly-plot .main-svg").length);
  b.setAttribute("data-vc-points", document.querySelectorAll(".js-plotly-plot .point").length);
  b.setAttribute("data-vc-errors", window.__vcErrors.length);
  b.setAttribute("data-vc-error-text", window.__vcErrors.join(" | "));
  b.setAttribute("data-vc-ready", "1");
}, 1000); });
</script>"""

# for the screenshot: the cells before the first card's cell hidden, so it shows at the top
# (a scrolled page screenshots blank in headless Chromium)
TO_FIRST_CARD = """<script>
window.addEventListener("load", function () {
  var card = document.querySelector(".vclust-card[data-cluster]");
  var cell = card && card.closest(".jp-Cell");
  var cells = Array.prototype.slice.call(document.querySelectorAll(".jp-Cell"));
  for (var i = 0; cell && cells[i] !== cell; i++) cells[i].style.display = "none";
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--hide-scrollbars"]


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed in a fresh folder by a real kernel; any cell error raises."""
    import nbformat
    from nbclient import NotebookClient

    work = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()
    nbformat.write(nb, work / "analysis.ipynb")
    return {"nb": nb, "work": work, "out": work / "analysis-out"}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the run took 150-300 s on a machine shared with other work
def test_notebook_walks_the_brief(executed):
    out = executed["out"]
    # promoted: the proposal is the registry's current model, and the CSV holds its rows, named
    proposal = json.loads((out / "compare" / "proposal.json").read_text())
    assert (out / "registry" / "current").read_text().strip() == proposal["model_id"]
    runs = pd.read_csv(out / "compare" / "runs.csv")
    assert set(runs["descriptor"]) == {"efficientnet-b7", "osnet", "vdc_color", "vdc_type",
                                       "osnet+vdc_type+vdc_color", "vdc_type+vdc_color*2"}
    csv = pd.read_csv(out / "best_partition.csv", keep_default_na=False)
    names = pd.read_csv(out / "names.csv", keep_default_na=False)
    assert len(csv) == 3000 and (csv["model"] == proposal["model_id"]).all()
    assert dict(zip(csv["cluster"], csv["cluster_name"])) == dict(zip(names["cluster"],
                                                                      names["name"]))
    outputs = [o for c in executed["nb"].cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    cards = [o for o in outputs if "vclust-card" in o.get("data", {}).get("text/html", "")]
    assert len(cards) == 3  # two cluster cards and the outlier galleries
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)


def _chromium(args, tmp_path, timeout=240):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is not installed (Debian package 'chromium'; "
                    "`make browser` installs it): the notebook's export cannot be checked")
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [exe, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the run took 150-300 s on a machine shared with other work
def test_inline_card_renders_in_headless_chromium(executed, tmp_path):
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(executed["nb"])
    page = tmp_path / "analysis.html"
    page.write_text(body.replace("<head>", "<head>" + HARNESS, 1))
    dom = _chromium(["--window-size=1300,1000", "--dump-dom", page.as_uri()], tmp_path)
    tag = dom.split("<body", 1)[1].split(">", 1)[0]
    got = dict(re.findall(r'(data-vc-[a-z-]+)="([^"]*)"', tag))
    assert got.get("data-vc-ready") == "1", got
    assert got["data-vc-errors"] == "0", got.get("data-vc-error-text")
    assert int(got["data-vc-cards"]) == 2, got
    # two cards of 24 images (8 nearest, 8 random, up to 8 on the border) and the galleries
    assert int(got["data-vc-images"]) >= 2 * 16, got
    assert got["data-vc-loaded"] == got["data-vc-images"], got
    assert int(got["data-vc-plots"]) >= 1 and int(got["data-vc-points"]) > 1000, got
    shown = tmp_path / "first-card.html"
    shown.write_text(body.replace("<head>", "<head>" + TO_FIRST_CARD, 1))
    shot = tmp_path / "card.png"
    _chromium(["--window-size=1300,1100", f"--screenshot={shot}", shown.as_uri()], tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"screenshot of the first inline card: {shot}")

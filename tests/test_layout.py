"""The package layout holds by itself: the numerics know nothing of the store, the jobs or the
command line; the store knows nothing of the numerics or what is above it; no import cycle."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vclust"

# what each layer may import from vclust, besides itself
ALLOWED = {
    "vclust.numerics": {"vclust.errors"},
    "vclust.storage": {"vclust.errors"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str | None = None) -> set[str]:
    """Every vclust module that ``path`` (the module ``name``) imports, at module level or
    inside functions."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vclust"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "vclust":
                continue
            for a in node.names:  # `from . import x` may name a module
                sub = f"{mod}.{a.name}"
                found.add(sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                          else mod)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def test_layers_import_only_what_is_below_them():
    graph = _graph()
    assert any(m.startswith("vclust.numerics.") for m in graph), "numerics package not found"
    assert any(m.startswith("vclust.storage.") for m in graph), "storage package not found"
    for module, deps in graph.items():
        for layer, allowed in ALLOWED.items():
            if module == layer or module.startswith(layer + "."):
                bad = {d for d in deps if not (d == layer or d.startswith(layer + "."))} - allowed
                assert not bad, f"{module} imports {sorted(bad)}: {layer} must not"


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            cycle = path[path.index(m):] + [m]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d in graph and not m.startswith(d + "."):  # a module's own package __init__
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_the_boundary_check_sees_a_violation(tmp_path):
    """The checker itself: a numerics-style module importing the store is found."""
    src = tmp_path / "bad.py"
    src.write_text("from ..storage.store import Store\n\ndef f():\n    from .. import jobs\n")
    found = _imports(src, "vclust.numerics.bad")  # as if it lived in vclust/numerics/
    assert {"vclust.storage.store", "vclust.jobs"} <= found


@pytest.mark.parametrize("module", ["vclust.numerics.kmeans", "vclust.numerics.outliers",
                                    "vclust.numerics.metrics", "vclust.numerics.algorithms",
                                    "vclust.numerics.preprocess", "vclust.numerics.maps",
                                    "vclust.numerics.pixels", "vclust.storage.ingest",
                                    "vclust.storage.pixels"])
def test_importing_a_lower_layer_loads_nothing_above_it(module):
    code = (f"import sys, json, {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('vclust'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    layer = ".".join(module.split(".")[:2])
    above = [m for m in loaded if m not in ("vclust", "vclust.errors")
             and not (m == layer or m.startswith(layer + "."))]
    assert not above, f"importing {module} loaded {above}"

"""The package layout holds by itself: every package of vclust imports only the packages below it
(the table ALLOWED), no module imports another module's private name, and there is no import
cycle. From the bottom: errors; numerics, storage and synth (knowing nothing of each other);
model (the bundle, the fit core, succession, the registry); report; jobs (the steps, params,
runner, cluster configs); the command line."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vclust"

# what each package (or top-level module) may import from vclust, besides itself
ALLOWED = {
    "vclust.errors": set(),
    "vclust.numerics": {"vclust.errors"},
    "vclust.storage": {"vclust.errors"},
    "vclust.synth": {"vclust.errors"},
    "vclust.model": {"vclust.errors", "vclust.numerics", "vclust.storage"},
    "vclust.report": {"vclust", "vclust.errors", "vclust.numerics", "vclust.storage",
                      "vclust.model"},
    "vclust.jobs": {"vclust", "vclust.errors", "vclust.numerics", "vclust.storage",
                    "vclust.model", "vclust.report", "vclust.synth"},
    "vclust.warmup": {"vclust.numerics"},
    "vclust.cli": {"vclust", "vclust.errors", "vclust.jobs", "vclust.model", "vclust.report",
                   "vclust.storage", "vclust.synth"},
    "vclust.api": {"vclust", "vclust.errors", "vclust.jobs", "vclust.model", "vclust.report",
                   "vclust.storage", "vclust.synth", "vclust.numerics"},
    "vclust.__main__": {"vclust.cli"},
    "vclust": set(),
}


def _package(module: str) -> str:
    """The entry of ALLOWED a module belongs to: its package below vclust, or itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


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
            for a in node.names:  # `from . import x` may name a module or a package
                sub = PKG.parent / f"{mod}.{a.name}".replace(".", "/")
                found.add(f"{mod}.{a.name}" if sub.with_suffix(".py").exists() or sub.is_dir()
                          else mod)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def test_layers_import_only_what_is_below_them():
    graph = _graph()
    packages = {_package(m) for m in graph}
    assert packages <= set(ALLOWED), f"packages without a row in ALLOWED: {packages - set(ALLOWED)}"
    for pkg in ("vclust.numerics", "vclust.storage", "vclust.model", "vclust.jobs",
                "vclust.report", "vclust.synth"):
        assert any(m.startswith(pkg + ".") for m in graph), f"{pkg} package not found"
    for module, deps in graph.items():
        layer = _package(module)
        bad = {d for d in deps if _package(d) != layer and _package(d) not in ALLOWED[layer]}
        assert not bad, f"{module} imports {sorted(bad)}: {layer} may import only {ALLOWED[layer]}"


def _private_imports(path: Path) -> list[str]:
    """``from vclust.x import _name`` (relative or absolute) of a name private to another module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("vclust")):
            found += [f"{path.name}:{node.lineno} {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_name():
    bad = [hit for p in PKG.rglob("*.py") for hit in _private_imports(p)]
    assert not bad, f"private names imported across modules: {bad}"


def test_the_private_import_check_sees_one(tmp_path):
    src = tmp_path / "bad.py"
    src.write_text("def f():\n    from .algorithms import _helper, public\n")
    assert _private_imports(src) == ["bad.py:2 _helper"]


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
    layer = _package("vclust.numerics.bad")
    assert {d for d in found if _package(d) not in ALLOWED[layer] | {layer}} == \
        {"vclust.storage.store", "vclust.jobs"}


@pytest.mark.parametrize("module", ["vclust.numerics.kmeans", "vclust.numerics.outliers",
                                    "vclust.numerics.metrics", "vclust.numerics.algorithms",
                                    "vclust.numerics.preprocess", "vclust.numerics.maps",
                                    "vclust.numerics.pixels", "vclust.storage.ingest",
                                    "vclust.storage.pixels", "vclust.storage.images",
                                    "vclust.storage.labels", "vclust.model.bundle",
                                    "vclust.model.core", "vclust.model.registry",
                                    "vclust.synth"])
def test_importing_a_lower_layer_loads_nothing_above_it(module):
    code = (f"import sys, json, {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('vclust'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    allowed = ALLOWED[_package(module)] | {_package(module), "vclust"}
    above = [m for m in loaded if _package(m) not in allowed]
    assert not above, f"importing {module} loaded {above}"


#: a module past this many lines is asking to be split (DESIGN.md, STYLE: one concern a module)
MAX_MODULE_LINES = 600
#: a function past this many lines does several things
MAX_FUNCTION_LINES = 100


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for p in sorted(PKG.rglob("*.py")):
        text = p.read_text()
        rel = p.relative_to(PKG.parent).as_posix()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{rel} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.name} ({n} lines)")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_files_the_suite_orders_and_marks_exist():
    """tests/conftest.py names test files: the order `make test` hands them out in
    (LONG_FIRST) and those `make test-fast` leaves out (SYSTEM_FILES). A file renamed or gone
    would silently fall out of both."""
    from tests import conftest

    here = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    for name, files in (("LONG_FIRST", conftest.LONG_FIRST),
                        ("SYSTEM_FILES", conftest.SYSTEM_FILES)):
        missing = sorted(set(files) - here)
        assert not missing, f"conftest.{name} names test files that do not exist: {missing}"
        assert len(set(files)) == len(files), f"conftest.{name} names a file twice"

"""dvc.yaml: every stage declares exactly the source files it imports, and no stage declares a runtime key;
the library's imports run one way (no circle; the params schema below the data parsers)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

SRC = ROOT / "src"


def _module_file(module: str) -> Path | None:
    path = SRC.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Every ``vitfgvc`` module ``path`` imports, at any depth (imports inside functions too)."""
    package = None
    if path.is_relative_to(SRC):
        package = path.relative_to(SRC).parts[:-1]  # the package the file belongs to (its folder)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if package is not None else ()
                module = ".".join((*base, *([node.module] if node.module else [])))
            else:
                module = node.module
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from . import viz` imports a module
    return {m for m in found if m and m.split(".")[0] == "vitfgvc"}


def _imported_files(path: Path) -> set[Path]:
    """The files under src/ that ``path`` imports directly: importing a.b.c runs a/__init__.py and
    a/b/__init__.py too."""
    files = set()
    for module in _imported_modules(path):
        parts = module.split(".")
        files |= {f for i in range(1, len(parts) + 1) if (f := _module_file(".".join(parts[:i]))) is not None}
    return files


def _transitive(start: Path) -> set[Path]:
    files, todo = {start}, [start]
    while todo:
        for f in _imported_files(todo.pop()) - files:
            files.add(f)
            todo.append(f)
    return files


def imported_sources(script: Path) -> set[str]:
    """The script and every file under src/ it imports, transitively, as paths relative to the repository."""
    return {str(f.relative_to(ROOT)) for f in _transitive(script)}


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _definition(stage: dict) -> dict:
    return stage.get("do", stage)


@pytest.mark.parametrize("name", list(stages()))
def test_every_stage_declares_exactly_the_sources_it_imports(name):
    stage = _definition(stages()[name])
    script = re.match(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
    declared = {d for d in stage["deps"] if d.endswith(".py")}
    assert declared == imported_sources(ROOT / script), (
        f"{name}: missing {sorted(imported_sources(ROOT / script) - declared)}, "
        f"extra {sorted(declared - imported_sources(ROOT / script))}")


def test_the_import_scan_sees_imports_inside_functions():
    assert "src/vitfgvc/viz.py" in imported_sources(ROOT / "stages/evaluate.py")  # imported inside a function
    assert "src/vitfgvc/viz.py" not in imported_sources(ROOT / "stages/train.py")


@pytest.mark.parametrize("name", [n for n in stages() if n in ("baseline", "multistage", "ablate",
                                                               "baseline_equal_time")])
def test_training_does_not_depend_on_evaluation_or_figures(name):
    deps = set(_definition(stages()[name])["deps"])
    assert not deps & {"src/vitfgvc/evaluate.py", "src/vitfgvc/viz.py", "stages/evaluate.py"}


def test_no_stage_declares_a_runtime_key():
    for name, stage in stages().items():
        params = [p if isinstance(p, str) else next(iter(p)) for p in _definition(stage).get("params", [])]
        assert not [p for p in params if p == "runtime" or p.startswith("runtime.")], name


# ------------------------------------------------------------------ the library's floors
def _import_graph() -> dict[Path, set[Path]]:
    """Each file of src/vitfgvc and the files it imports, leaving out the ``__init__.py`` of its own packages (Python
    runs those before the file in any case: they are not a floor above it)."""
    graph = {}
    for path in sorted((SRC / "vitfgvc").rglob("*.py")):
        own = {p / "__init__.py" for p in path.parents if p.is_relative_to(SRC / "vitfgvc")}
        graph[path] = _imported_files(path) - own - {path}
    return graph


def _a_cycle(graph: dict[Path, set[Path]]) -> list[Path]:
    """One import circle of ``graph`` (its files, the first repeated at the end), or [] when there is none."""
    state, stack = {}, []

    def visit(node: Path) -> list[Path]:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return []

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_library_has_no_import_circle():
    """Every import runs one way: the modules stand on floors, each importing only from floors below it."""
    cycle = _a_cycle(_import_graph())
    assert not cycle, "an import circle: " + " -> ".join(str(f.relative_to(SRC)) for f in cycle)


def test_the_cycle_finder_finds_a_circle():
    a, b, c = (Path(f"/x/{n}.py") for n in "abc")
    assert _a_cycle({a: {b}, b: {c}, c: set()}) == []
    assert _a_cycle({a: {b}, b: {c}, c: {b}}) == [b, c, b]


def test_the_params_schema_stands_below_the_data_parsers():
    """config.py reads the dataset formats' facts from the registry, and nothing else of data/: not the parsers,
    the downloader or the loader (nor torch, through them)."""
    data = SRC / "vitfgvc/data"
    reached = {str(f.relative_to(SRC)) for f in _transitive(SRC / "vitfgvc/config.py") if f.is_relative_to(data)}
    assert reached == {"vitfgvc/data/__init__.py", "vitfgvc/data/registry.py"}
    registry = _transitive(data / "registry.py") - {data / "registry.py", data / "__init__.py",
                                                    SRC / "vitfgvc/__init__.py"}
    assert registry == set(), "the registry is the ground floor: it imports nothing of vitfgvc"

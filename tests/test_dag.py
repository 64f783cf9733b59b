"""dvc.yaml: every stage declares exactly the source files it imports, and no stage declares a runtime key."""

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


def imported_sources(script: Path) -> set[str]:
    """The script and every file under src/ it imports, transitively, as paths relative to the repository."""
    files, todo = {script}, [script]
    while todo:
        for module in _imported_modules(todo.pop()):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py too
                f = _module_file(".".join(parts[:i]))
                if f is not None and f not in files:
                    files.add(f)
                    todo.append(f)
    return {str(f.relative_to(ROOT)) for f in files}


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

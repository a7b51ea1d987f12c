"""The package reads like the DAG: one subpackage per stage, imports only run down the floors."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "mnk"
# Floors of the stages: a module may import its own stage and the stages on lower floors.
FLOORS = {"infra": 0, "data": 1, "kernels": 1, "methods": 1, "tasks": 2, "study": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def mnk_imports(path: Path) -> set[str]:
    """The `mnk` modules a file imports anywhere (function bodies too), as module names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("mnk.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("mnk."):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").is_file() else node.module)
    return names


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else None


def test_top_level_holds_at_most_three_modules_and_every_stage_is_a_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 3, top
    for name in FLOORS:
        init = PACKAGE / name / "__init__.py"
        assert init.is_file(), name
        assert ast.get_docstring(ast.parse(init.read_text())), f"mnk.{name} says what the stage takes and gives"
    assert {p.parent.name for p in PACKAGE.glob("*/*.py")} <= set(FLOORS), "a subpackage without a floor"


def test_imports_run_down_the_floors_only():
    upward = []
    for name, path in MODULES.items():
        here = stage(name)
        for target in mnk_imports(path):
            there = stage(target)
            assert target in MODULES, f"{name} imports {target}, which does not exist"
            if here and there and there != here and FLOORS[there] >= FLOORS[here]:
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_no_import_cycle():
    graph = {name: {t for t in mnk_imports(path) if t in MODULES} for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(name, trail):
        if state.get(name) == 1:
            pytest.fail("import cycle: " + " -> ".join(trail + [name]))
        if state.get(name) == 2:
            return
        state[name] = 1
        for target in sorted(graph[name]):
            visit(target, trail + [name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


def test_the_floor_check_sees_an_upward_import(tmp_path):
    """The check above can fail: a methods module importing the study is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from mnk.study.plan import Block\n")
    assert mnk_imports(probe) == {"mnk.study.plan"}
    assert FLOORS[stage("mnk.study.plan")] >= FLOORS[stage("mnk.methods.maml")]


def test_no_wheel_is_tracked():
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    assert not [f for f in tracked if f.endswith(".whl")]

"""The package reads like the DAG: one subpackage per stage, imports only run down the floors."""

from __future__ import annotations

import ast
import re
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


# ------------------------------------------------------------------ the config, parsed once

SECTIONS = "data|tasks|kernel|mnk|encoder|maml|imaml|device|cuda"
BOUNDARY = {"mnk.study.config", "mnk.study.config_checks"}  # the raw dict stops here
# `config[...]`, `cfg.get(...)`, `config["kernel"]`, `section["r1"]`: a raw config or section dict read.
RAW_INDEX = re.compile(r"""\b\w*(config|cfg)\w*\s*(\[|\.get\()|\bsection\s*\[|\.get\(\s*["'](grid|options)["']""")


# The section constructors are the parse's own pieces: they read their section's mapping.
CONSTRUCTORS = {"from_section", "options_from_config"}


def raw_config_uses(text: str) -> list[str]:
    """Lines that read a raw config or section dict (outside the section constructors), and
    parameters named `config`."""
    tree, lines = ast.parse(text), text.splitlines()
    allowed = {n for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in CONSTRUCTORS
               for n in range(node.lineno, node.end_lineno + 1)}
    hits = [line.strip() for n, line in enumerate(lines, 1) if n not in allowed and RAW_INDEX.search(line)]
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            hits += [f"parameter {a.arg!r}" for a in node.args.args + node.args.kwonlyargs if a.arg == "config"]
    return hits


def test_below_the_parse_boundary_no_module_reads_the_raw_config():
    offenders = {name: raw_config_uses(path.read_text()) for name, path in MODULES.items() if name not in BOUNDARY}
    offenders.update({f"scripts/{p.name}": raw_config_uses(p.read_text()) for p in (REPO / "scripts").glob("*.py")})
    assert not {name: hits for name, hits in offenders.items() if hits}


def test_the_workflow_reads_the_config_only_to_parse_and_hash_it():
    uses = []
    for path in [REPO / "workflow" / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]:
        for line in path.read_text().splitlines():
            code = line.split("#")[0]
            if re.search(r"\bconfig\b", code) and not re.search(
                    r"configfile|validate\(config|parse_config\(config|short_hash\(config\)|\bimport\b", code):
                uses.append(f"{path.name}: {line.strip()}")
    assert not uses


def test_the_raw_config_check_sees_an_indexed_section():
    assert raw_config_uses('def f(cfg):\n    return cfg["kernel"]["depth"]\n')
    assert raw_config_uses('def f(config):\n    return 1\n') == ["parameter 'config'"]
    assert not raw_config_uses('def f(study):\n    return study.kernel.options.depth\n')
    assert not raw_config_uses('def from_section(cls, section):\n    return cls(section["r1"])\n')


# ------------------------------------------------------------------ the README, a landing page

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_a_landing_page_whose_links_all_resolve():
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= 200
    pages = [readme, REPO / "config" / "README.md", *(REPO / "docs").glob("*.md")]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken
    linked = {m.split("#")[0] for m in LINK.findall(readme.read_text())}
    assert {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")} <= linked, "a docs page the README does not link"

"""Static check: every module a rule's script imports is provided by the conda env it names.

conda cannot run here, so this reads the files: each rule's `conda:` and `script:`, every
import of the script, and the module-level imports of the `mnk` modules it pulls in,
transitively (imports inside functions are the package's deliberate lazy, optional paths).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# import name -> pip distribution name
DISTRIBUTIONS = {"numpy": "numpy", "scipy": "scipy", "numba": "numba", "torch": "torch", "PIL": "pillow",
                 "tqdm": "tqdm", "pandas": "pandas", "matplotlib": "matplotlib", "seaborn": "seaborn",
                 "yaml": "pyyaml"}
OPTIONAL = {"cupy"}  # GPU only: installed beside the env on GPU machines (README)


def rules():
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, re.M | re.S):
            body = match.group(2)
            conda = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', body)
            if script:
                yield match.group(1), smk.parent / conda.group(1) if conda else None, smk.parent / script.group(1)


def imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def module_file(name: str) -> Path | None:
    base = REPO / "src" / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(script: Path) -> set[str]:
    todo, seen, found = [(script, False)], set(), set()
    while todo:
        path, module_level = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports(path, module_level):
            top = name.split(".")[0]
            if top == "mnk":
                parts = name.split(".")
                for k in range(1, len(parts) + 1):  # the package __init__s run too
                    file = module_file(".".join(parts[:k]))
                    if file:
                        todo.append((file, True))
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


def env_packages(env: Path) -> set[str]:
    spec = yaml.safe_load(env.read_text())
    names = set()
    for dep in spec["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            names.add(re.split(r"[=<>!]", item)[0].strip().lower())
    return names


RULES = list(rules())


def test_every_script_rule_names_a_pinned_env():
    assert len(RULES) >= 9
    for rule, env, _ in RULES:
        assert env is not None and env.is_file(), f"rule {rule} names no conda env file"
        spec = yaml.safe_load(env.read_text())
        for dep in spec["dependencies"]:
            for item in dep["pip"] if isinstance(dep, dict) else [dep]:
                assert re.search(r"==?\d", item), f"{env.name}: {item!r} is not pinned"


@pytest.mark.parametrize("rule,env,script", RULES, ids=[r for r, _, _ in RULES])
def test_env_provides_every_import(rule, env, script):
    provided = env_packages(env)
    missing = []
    for module in third_party_imports(script) - OPTIONAL:
        dist = DISTRIBUTIONS.get(module)
        assert dist, f"rule {rule}: {script.name} imports {module!r}, unknown to this test's mapping"
        if dist not in provided:
            missing.append(dist)
    assert not missing, f"rule {rule}: {env.name} lacks {missing} imported by {script.name}"


def test_checker_sees_transitive_imports():
    """The checker must notice numba behind mnk.kernels and torch behind mnk.meta."""
    assert "torch" in third_party_imports(REPO / "scripts" / "solve_mnk.py")
    assert "numpy" in third_party_imports(REPO / "scripts" / "download_omniglot.py")

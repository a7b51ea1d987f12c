"""Content hashes of the code behind a rule: what decides whether a finished result is stale.

A rule's ``params: code=`` is the hash of its script and of every ``mnk`` module the script
imports, followed transitively (imports inside functions too: the lazy backends are real code
paths), each as its syntax tree with docstrings removed. So a comment, a docstring, a
reformatting or a new mtime (a checkout, a copy) changes nothing, and any change to code the
result runs through changes the hash, which Snakemake's params trigger then reruns.

A module's resource files count as its code: the files beside it with its name and a suffix
in :data:`RESOURCE_SUFFIXES` (``cntk_cuda.cu``, read by ``cntk_cuda.py`` at run time), as
their text without C comments and blank lines.

Modules in :data:`NOT_RESULT_CODE` (logging, progress bars, device resolution) are left out:
they never change a number. Code that computes values must not live there.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2]  # src/ (this file is src/mnk/infra/codehash.py)
NOT_RESULT_CODE = frozenset({"mnk.infra.runtime", "mnk.infra.progress"})
RESOURCE_SUFFIXES = (".cu",)
_C_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)


def normalized_source(path: Path) -> str:
    """The module's syntax tree, docstrings dropped: blind to comments, layout and docs
    (a resource file: its lines without comments, blank lines and trailing blanks)."""
    if Path(path).suffix in RESOURCE_SUFFIXES:
        lines = _C_COMMENT.sub("", Path(path).read_text()).splitlines()
        return "\n".join(line.rstrip() for line in lines if line.strip())
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def module_path(name: str, src: Path = SRC) -> Path | None:
    """File of the ``mnk`` module ``name`` under ``src``, None if it is not one."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """``mnk`` modules named by any import in the file, with the packages that run first."""
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "mnk":
            found |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
    return found


def code_files(script: Path, src: Path = SRC) -> list[Path]:
    """The script and the ``mnk`` module files it runs through, in a fixed order."""
    files, todo = {Path(script).resolve()}, [Path(script)]
    while todo:
        for name in _imported_modules(todo.pop()):
            path = module_path(name, src)
            if path is not None and name not in NOT_RESULT_CODE and path.resolve() not in files:
                files.add(path.resolve())
                files |= {resource.resolve() for resource in resource_files(path)}
                todo.append(path)
    return sorted(files)


def resource_files(module: Path) -> list[Path]:
    """The module's resource files (same name, a suffix of RESOURCE_SUFFIXES)."""
    return [p for p in (Path(module).with_suffix(s) for s in RESOURCE_SUFFIXES) if p.is_file()]


@functools.lru_cache(maxsize=None)
def code_hash(script: str, src: str = str(SRC)) -> str:
    """Short hash of the normalized code behind ``script`` (a rule's ``params: code=``)."""
    root = Path(src).resolve()  # labels must not depend on a symlink in the checkout's path
    labelled = {(path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name): path
                for path in code_files(Path(script), root)}
    digest = hashlib.sha256()
    for label in sorted(labelled):  # by label, not by absolute path: where the checkout is must not count
        digest.update(f"{label}\n{normalized_source(labelled[label])}\n".encode())
    return digest.hexdigest()[:16]

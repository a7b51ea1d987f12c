"""Reruns are keyed on content: what changes a result reruns it, nothing else does.

A finished tiny run (config/test.yaml, one experiment) in a scratch copy of the workflow, then
dry runs after edits: comments, docstrings and mtimes in the package, the backend/device/CUDA
switches and a move to a fresh checkout leave nothing to do; a change to kernel code
schedules every kernel block again and nothing of the baselines. Plus mnk.infra.codehash itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnk.infra.codehash import NOT_RESULT_CODE, code_files, code_hash, normalized_source

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ["workflow", "scripts", "src", "config", "envs", "profiles"]
RESULT_RULES = {"kernel_block", "assemble_kernel", "solve_mnk", "train_meta_learner", "train_encoder"}


def snakemake(workdir: Path, *args, env=None):
    result = subprocess.run([str(BIN / "snakemake"), *args], cwd=workdir, env={**os.environ, **(env or {})},
                            capture_output=True, text=True, timeout=900)
    if result.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result.stdout


def planned(workdir: Path, *args) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job a dry run would run."""
    jobs = []
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", snakemake(workdir, "-n", *args), re.M):
        wildcards = re.search(r"wildcards: (.*)", match.group(2))
        jobs.append((match.group(1), wildcards.group(1).strip() if wildcards else ""))
    return jobs


def copy_checkout(dest: Path, *, keep_mtimes: bool) -> Path:
    for name in COPY:
        if (REPO / name).exists():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                            copy_function=shutil.copy2 if keep_mtimes else shutil.copy)
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["tasks"]["n_characters"] = config["tasks"]["n_characters"][:1]  # one experiment is enough
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory, mirror) -> Path:
    root = copy_checkout(tmp_path_factory.mktemp("rerun-project"), keep_mtimes=True)
    os.environ["OMNIGLOT_MIRROR"] = str(mirror)
    snakemake(root, "--cores", "2")
    assert planned(root) == []
    return root


class edited:
    """Context manager: a file of the project edited by `change(text)`, restored afterwards
    (restoring gives it a new mtime, which must not matter either)."""

    def __init__(self, path: Path, change):
        self.path, self.change = path, change

    def __enter__(self):
        self.original = self.path.read_text()
        new = self.change(self.original)
        assert new != self.original
        self.path.write_text(new)

    def __exit__(self, *exc):
        self.path.write_text(self.original)


def add_to_docstring(text: str) -> str:
    start = text.index('"""') + 3
    return text[:start] + "Reworded documentation. " + text[start:]


def test_comment_docstring_and_mtime_changes_rerun_nothing(project):
    src = project / "src" / "mnk"
    with edited(src / "__init__.py", lambda t: t + "\n# a comment only\n"), \
            edited(src / "kernels" / "cntk_cpu.py", add_to_docstring), \
            edited(src / "study" / "blocks.py", lambda t: t.replace("\n\n\n", "\n\n\n# spacing and a comment\n", 1)):
        assert planned(project) == []
    assert planned(project) == []  # the restored files are newer than every result


def test_kernel_code_change_reruns_the_kernel_blocks_only_downstream(project):
    pool = "pool-5way1shot-seed0"
    blocks = {p.stem for p in (project / "results" / "kernels" / pool / "blocks").glob("*.npz")}
    assert len(blocks) > 1
    with edited(project / "src" / "mnk" / "kernels" / "cntk_cpu.py", lambda t: t + "\n_CHANGED = 1\n"):
        jobs = planned(project)
    rules = {rule for rule, _ in jobs}
    assert {w for rule, w in jobs if rule == "kernel_block"} == {f"pool={pool}, block={b}" for b in blocks}
    assert {"assemble_kernel", "solve_mnk"} <= rules
    assert not rules & {"make_pool", "make_tasks", "preprocess_omniglot", "train_meta_learner", "train_encoder"}


def test_training_code_change_reruns_training_not_kernels(project):
    with edited(project / "src" / "mnk" / "methods" / "maml.py", lambda t: t + "\n_CHANGED = 1\n"):
        rules = {rule for rule, _ in planned(project)}
    assert "train_meta_learner" in rules
    assert not rules & {"kernel_block", "assemble_kernel", "make_tasks"}


def test_backend_device_and_cuda_switches_rerun_nothing(project, tmp_path):
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    config["kernel"]["backend"] = "cpu" if config["kernel"]["backend"] != "cpu" else "auto"
    config["device"] = "auto" if config["device"] != "auto" else "cpu"
    config["cuda"] = 13
    path = tmp_path / "switched.yaml"
    path.write_text(yaml.safe_dump(config))
    rules = {rule for rule, _ in planned(project, "--configfile", str(path))}
    # (the summary rows record a hash of the whole config: aggregate/figures, seconds, may rerun)
    assert not rules & (RESULT_RULES | {"make_tasks", "preprocess_omniglot", "download_omniglot"})


def test_finished_results_moved_to_a_fresh_checkout_rerun_nothing(project, tmp_path):
    """As `git clone` + `cp -a results .snakemake`: every source file newer than the results,
    the checkout at another absolute path."""
    fresh = copy_checkout(tmp_path / "fresh", keep_mtimes=False)
    for name in ("results", ".snakemake"):
        subprocess.run(["cp", "-a", str(project / name), str(fresh / name)], check=True)
    assert planned(fresh) == []


def test_touch_records_a_change_as_current(project):
    """`--touch` (docs/routes.md): after a code change known not to matter, nothing reruns."""
    kernel = project / "src" / "mnk" / "kernels" / "cntk_cpu.py"
    with edited(kernel, lambda t: t + "\n_CHANGED = 1\n"):
        assert planned(project)
        snakemake(project, "--touch", "--cores", "1")
        assert planned(project) == []
    snakemake(project, "--touch", "--cores", "1")  # and back
    assert planned(project) == []


# ------------------------------------------------------------------ mnk.infra.codehash


def test_normalized_source_ignores_comments_docstrings_and_layout(tmp_path):
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\nimport math\n\n\ndef f(x):\n    """Say."""\n    return math.sqrt(x)  # root\n')
    b.write_text('import math\ndef f(x):\n    # no docstring now\n    return math.sqrt( x )\n')
    c.write_text('import math\ndef f(x):\n    return math.sqrt(x + 0)\n')
    assert normalized_source(a) == normalized_source(b)
    assert normalized_source(a) != normalized_source(c)
    # a string that is not a docstring is code
    d = tmp_path / "d.py"
    d.write_text('import math\ndef f(x):\n    y = "text"\n    return math.sqrt(x)\n')
    assert normalized_source(d) != normalized_source(b)


def test_code_files_follow_lazy_imports_and_skip_plumbing():
    files = {p.relative_to(REPO).as_posix() for p in code_files(REPO / "scripts" / "kernel_block.py")}
    # cntk_cpu / cntk_cuda are imported inside functions only: they are still the kernel's code
    assert {"scripts/kernel_block.py", "src/mnk/__init__.py", "src/mnk/kernels/__init__.py", "src/mnk/kernels/gram.py",
            "src/mnk/kernels/cntk_cpu.py", "src/mnk/kernels/cntk_cuda.py", "src/mnk/kernels/cntk_cuda.cu",
            "src/mnk/study/blocks.py"} <= files
    assert "src/mnk/methods/maml.py" not in files
    for module in NOT_RESULT_CODE:
        assert f"src/{module.replace('.', '/')}.py" not in files


def test_code_hash_differs_between_rules_and_is_stable():
    src = str(REPO / "src")
    kernel = code_hash(str(REPO / "scripts" / "kernel_block.py"), src)
    assert kernel == code_hash.__wrapped__(str(REPO / "scripts" / "kernel_block.py"), src)
    assert kernel != code_hash(str(REPO / "scripts" / "train_meta_learner.py"), src)
    assert re.fullmatch(r"[0-9a-f]{16}", kernel)


def test_cuda_source_file_is_code_but_its_comments_are_not(tmp_path):
    """cntk_cuda.cu is read at run time: an edit reruns the kernel blocks, a comment does not."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src)
    script = str(REPO / "scripts" / "kernel_block.py")
    before = code_hash.__wrapped__(script, str(src))
    cu = src / "mnk" / "kernels" / "cntk_cuda.cu"
    text = cu.read_text()
    cu.write_text("// a new comment\n" + text.replace(";\n", ";  /* note */\n", 1) + "\n\n")
    assert code_hash.__wrapped__(script, str(src)) == before
    cu.write_text(text.replace("#define TPW (32 / KW)", "#define TPW (16 / KW)"))
    assert code_hash.__wrapped__(script, str(src)) != before
    assert code_hash.__wrapped__(str(REPO / "scripts" / "solve_mnk.py"), str(src)) == \
        code_hash.__wrapped__(str(REPO / "scripts" / "solve_mnk.py"), str(REPO / "src"))

"""The conda envs of envs/ provide what their rules import, on their own.

conda cannot run here, so two checks:
* static: each rule's env(s) (`conda_env(family, gpu=...)` means envs/<family>.yaml and its
  -cuda12/-cuda13 builds) pin every third-party module its script imports, transitively
  through the `mnk` modules' module-level imports; the CPU envs hold no CUDA build;
* isolated: each CPU env's pip section, exactly as conda hands it to pip (with MNK_REPO set,
  as the workflow sets it), installed into a fresh venv, then `python -I` (no host
  site-packages, no PYTHONPATH, no user site) runs the import block of every script bound to
  that env, and two real rule scripts (make_pool in the data env, kernel_block in the kernels
  env) run on tiny inputs and match the host's results. Index options (the PyTorch CPU
  index) are dropped: this machine reaches PyPI only, and pip finds the CPU torch wheel in
  its local wheel directory. Venvs are cached per env content in ~/.cache/mnk-test-envs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "envs"
CUDA_MAJORS = (12, 13)
# import name -> pip distribution name(s) (any of them provides it)
DISTRIBUTIONS = {"numpy": {"numpy"}, "scipy": {"scipy"}, "numba": {"numba"}, "torch": {"torch"},
                 "PIL": {"pillow"}, "tqdm": {"tqdm"}, "pandas": {"pandas"}, "matplotlib": {"matplotlib"},
                 "seaborn": {"seaborn"}, "yaml": {"pyyaml"}, "cupy": {"cupy-cuda12x", "cupy-cuda13x"}}
CACHE = Path(os.environ.get("MNK_TEST_ENV_CACHE", Path.home() / ".cache" / "mnk-test-envs"))


def rules():
    """(rule, [env files], script) of every script rule."""
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, re.M | re.S):
            body = match.group(2)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', body)
            if not script:
                continue
            literal = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
            family = re.search(r'conda:\s*\n\s*conda_env\("(\w[\w-]*)"', body)
            if literal:
                envs = [smk.parent / literal.group(1)]
            elif family:
                name = family.group(1)
                envs = [ENVS / f"{name}.yaml"] + [ENVS / f"{name}-cuda{v}.yaml" for v in CUDA_MAJORS]
            else:
                envs = []
            yield match.group(1), [e.resolve() for e in envs], (smk.parent / script.group(1)).resolve()


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
    """Top-level third-party modules a script needs: its own imports (all), those of the
    `mnk` modules it pulls in at module level, transitively (imports inside the package's
    functions are its deliberate lazy, optional paths: cupy)."""
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


def pip_section(env: Path) -> list[str]:
    spec = yaml.safe_load(env.read_text())
    return [item for dep in spec["dependencies"] if isinstance(dep, dict) for item in dep["pip"]]


def pinned(env: Path) -> dict[str, str]:
    """distribution -> pinned version of the env's pip requirements (options excluded)."""
    pins = {}
    for item in pip_section(env):
        if item.startswith("-"):
            continue
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[\w,]+\])?==(\S+)", item).groups()
        pins[name.lower()] = version
    return pins


RULES = list(rules())
ENV_FILES = sorted(ENVS.glob("*.yaml"))
CPU_ENVS = [e for e in ENV_FILES if "-cuda" not in e.stem]


def test_every_script_rule_names_existing_pinned_envs():
    assert len(RULES) >= 9
    for rule, envs, _ in RULES:
        assert envs, f"rule {rule} names no conda env"
        for env in envs:
            assert env.is_file(), f"rule {rule}: {env} missing"
            spec = yaml.safe_load(env.read_text())
            assert "python=3.11" in spec["dependencies"], f"{env.name}: python must be pinned to 3.11"
            items = pip_section(env)
            assert items[-1] == "-e ${MNK_REPO}", f"{env.name}: must install this checkout's mnk last"
            pinned(env)  # every requirement is name==version


@pytest.mark.parametrize("rule,envs,script", RULES, ids=[r for r, _, _ in RULES])
def test_env_provides_every_import(rule, envs, script):
    for env in envs:
        provided = set(pinned(env))
        for module in third_party_imports(script):
            dists = DISTRIBUTIONS.get(module)
            assert dists, f"rule {rule}: {script.name} imports {module!r}, unknown to this test's mapping"
            assert dists & provided, f"rule {rule}: {env.name} lacks {module} imported by {script.name}"


def test_checker_sees_transitive_imports():
    """The checker must notice torch behind mnk.methods.mnk and numpy behind mnk.data.archive."""
    assert "torch" in third_party_imports(REPO / "scripts" / "solve_mnk.py")
    assert "numpy" in third_party_imports(REPO / "scripts" / "download_omniglot.py")


def test_cpu_envs_are_cpu_only_and_gpu_envs_name_their_cuda():
    for env in CPU_ENVS:
        pins = pinned(env)
        assert not any(name.startswith(("cupy", "nvidia", "cuda")) for name in pins), env.name
        if "torch" in pins:
            assert pins["torch"].endswith("+cpu"), f"{env.name}: torch must be the CPU build"
            assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip_section(env)
    for env in ENV_FILES:
        if match := re.search(r"-cuda(\d+)$", env.stem):
            major, pins = match.group(1), pinned(env)
            if "torch" in pins:
                assert re.fullmatch(rf"[\d.]+\+cu{major}\d", pins["torch"]), f"{env.name}: torch {pins['torch']}"
            else:
                assert f"cupy-cuda{major}x" in pins, f"{env.name}: no CuPy for CUDA {major}"
                assert f"cupy-cuda{major}x[ctk]==" in " ".join(pip_section(env)), "CuPy needs its NVRTC ([ctk])"
            cpu = ENVS / env.name.replace(f"-cuda{major}", "")
            same = {k: v for k, v in pinned(cpu).items() if k != "torch"}
            assert same.items() <= pins.items(), f"{env.name} must pin what {cpu.name} pins"


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[\w,]+\])?==(\S+)", line.split("#")[0].strip()):
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_envs_pin_what_the_venv_pins():
    """One version of each package: the envs and `make venv` (requirements*.txt) agree."""
    venv = requirement_pins(REPO / "requirements.txt")
    for v in CUDA_MAJORS:
        venv |= requirement_pins(REPO / f"requirements-cuda{v}.txt")
    for env in ENV_FILES:
        for name, version in pinned(env).items():
            assert name in venv, f"{env.name}: {name} is not in requirements*.txt"
            assert version.split("+")[0] == venv[name], f"{env.name}: {name}=={version}, requirements: {venv[name]}"


def test_pyproject_dependencies_fit_every_env():
    """`-e ${MNK_REPO}` installs the project's own dependencies: all must be pinned already."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for env in ENV_FILES:
        assert {re.split(r"[<>=\[;]", d)[0].lower() for d in deps} <= set(pinned(env)), env.name


def test_a_wheel_of_the_package_holds_its_resource_files(tmp_path):
    """A non-editable install must ship what the code reads at run time (cntk_cuda.cu)."""
    import zipfile

    project = tmp_path / "project"  # a copy: building writes build/ into the source tree
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy(REPO / name, project / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(project)], check=True, capture_output=True)
    names = set(zipfile.ZipFile(next(tmp_path.glob("mnk-*.whl"))).namelist())
    resources = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src").rglob("*.cu")}
    assert resources and resources <= names


# ------------------------------------------------------------- isolated venv builds


def env_venv(env: Path) -> Path:
    """A venv with exactly the env's pip section installed, cached by its content."""
    items = [item for item in pip_section(env) if not item.startswith(("--index-url", "--extra-index-url"))]
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256(json.dumps([items, str(REPO), sys.version, deps]).encode()).hexdigest()[:16]
    venv = CACHE / f"{env.stem}-{key}"
    if (venv / ".complete").is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    requirements = venv.parent / f"{venv.name}.requirements.txt"
    requirements.write_text("\n".join(items) + "\n")
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile", "-r",
                             str(requirements)], env={**env_vars, "MNK_REPO": str(REPO)},
                            capture_output=True, text=True, timeout=1800)
    if result.returncode:
        pytest.fail(f"pip could not build {env.name}'s pip section:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    (venv / ".complete").write_text(requirements.read_text())
    return venv


def isolated(venv: Path, *args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    """Run the venv's python in isolated mode: nothing of the host's Python reaches it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NUMBA"))}
    result = subprocess.run([str(venv / "bin" / "python"), "-I", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{venv.name}: {' '.join(map(str, args))[:200]}\n{result.stderr[-4000:]}"
    return result


def import_block(script: Path) -> str:
    """The script's module-level import statements, as source."""
    tree = ast.parse(script.read_text())
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


ENV_RULES = {env: [(rule, script) for rule, envs, script in RULES if env.resolve() in envs] for env in CPU_ENVS}


@pytest.fixture(scope="module", params=CPU_ENVS, ids=[e.stem for e in CPU_ENVS])
def built(request) -> tuple[Path, Path]:
    return request.param, env_venv(request.param)


@pytest.mark.slow
def test_isolated_env_imports_every_script_bound_to_it(built, tmp_path):
    env, venv = built
    assert ENV_RULES[env], f"{env.name} is used by no rule"
    probe = ("import json, sys, mnk\n"
             "print(json.dumps({'mnk': mnk.__file__, 'path': sys.path, 'prefix': sys.prefix}))")
    seen = json.loads(isolated(venv, "-c", probe, cwd=tmp_path).stdout)
    # the env's own editable install of this checkout, and no host site-packages on the path
    assert Path(seen["mnk"]).resolve() == (REPO / "src" / "mnk" / "__init__.py").resolve()
    host = {p for p in sys.path if "site-packages" in p}
    assert not host & set(seen["path"]), "host site-packages leaked into the isolated env"
    for rule, script in ENV_RULES[env]:
        isolated(venv, "-c", import_block(script), cwd=tmp_path)


RUNNER = r'''
"""Run one rule script as Snakemake's `script:` would, with a stand-in `snakemake` object."""
import json, sys
from types import SimpleNamespace


class Namedlist(list):
    def __init__(self, items=(), **named):
        super().__init__([*items, *named.values()])
        self.__dict__.update(named)


spec = json.load(open(sys.argv[1]))
snakemake = SimpleNamespace(
    input=Namedlist(**spec["input"]), output=Namedlist(spec.get("output_list", ()), **spec.get("output", {})),
    log=Namedlist(spec["log"]), params=Namedlist(**spec["params"]), wildcards=Namedlist(**spec["wildcards"]),
    threads=1, resources=Namedlist(), config={},
)
__file__ = spec["script"]
exec(compile(open(spec["script"]).read(), spec["script"], "exec"))
'''


def run_rule_script(venv: Path, tmp_path: Path, script: str, **spec) -> None:
    (tmp_path / "runner.py").write_text(RUNNER)
    spec_file = tmp_path / f"{script}.json"
    spec_file.write_text(json.dumps({"script": str(REPO / "scripts" / script), **spec}))
    isolated(venv, str(tmp_path / "runner.py"), str(spec_file), cwd=tmp_path, timeout=900)


@pytest.mark.slow
def test_rule_scripts_run_in_their_isolated_envs(omniglot, tmp_path):
    """make_pool (data env) then kernel_block (kernels env) on a tiny pool: both run with
    nothing but their env, and agree with the host's computation."""
    from mnk.infra.io import load_npz
    from mnk.kernels.options import KernelOptions
    from mnk.study import plan
    from mnk.study.blocks import compute_block, prepare_images
    from mnk.study.config import parse_config
    from mnk.tasks.sampling import TaskSpec, make_pool

    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["kernel"]["source"] = "preprocessed"  # the envs are the point here, not the originals (test_workflow)
    pool = next(iter(plan.pools(parse_config(config)).values()))
    keys = ("split", "query", "enlarge_ratio", "n_test_tasks", "n_val_tasks", "n_val_characters")
    spec = {"way": pool.way, "shot": pool.shot, "seed": pool.seed, "n_characters": max(pool.n_characters),
            **{k: config["tasks"][k] for k in keys}}
    data = tmp_path / "omniglot.npz"
    np.savez(data, **omniglot)
    run_rule_script(env_venv(ENVS / "data.yaml"), tmp_path, "make_pool.py", input={"data": str(data), "originals": []},
                    output={"pool": str(tmp_path / "pool.npz"), "images": str(tmp_path / "images.npz")},
                    log=[str(tmp_path / "make_pool.log")], params={"spec": spec, "data": {}, "test_tasks": {}},
                    wildcards={})
    saved = load_npz(tmp_path / "pool.npz")
    expected = make_pool(omniglot["character"], omniglot["drawer"], omniglot["split"], TaskSpec(**spec))
    for key, value in expected.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)

    block = pool.blocks[1]
    identity = plan.kernel_identity(parse_config(config))
    run_rule_script(env_venv(ENVS / "kernels.yaml"), tmp_path, "kernel_block.py",
                    input={"pool": str(tmp_path / "pool.npz"), "images": str(tmp_path / "images.npz")},
                    output_list=[str(tmp_path / "block.npz")], log=[str(tmp_path / "kernel_block.log")],
                    params={"pool": plan.as_params(pool), "block": plan.as_params(block), "identity": identity,
                            "backend": "cpu", "code": "x"},
                    wildcards={"pool": pool.name, "block": block.name})
    raw = load_npz(tmp_path / "images.npz")["images"]
    options = KernelOptions.from_section(identity["kernel"])

    def prepare(positions):
        return prepare_images(raw[slice(*positions)], options, reference=raw[: pool.val_start])

    X = prepare(block.rows)
    Z = X if block.cols == block.rows else prepare(block.cols)
    reference = compute_block(X, Z, block, options, pool.task_size, "cpu")
    np.testing.assert_allclose(load_npz(tmp_path / "block.npz")["values"], reference, rtol=1e-10, atol=1e-12)

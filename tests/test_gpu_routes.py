"""The one-GPU route without a GPU: why CUDA is unavailable, and the GPU job limit.

* cuda_unavailable_reason() names each failure (CuPy missing, no driver, driver too old, no
  device) on a stand-in `cupy` module, and cntk_gram(backend='cuda') carries the reason;
* the workflow profile (workflow/profiles/default) gives a run as many `gpu` as the machine
  shows, so a real run of GPU-tagged jobs never has more of them at once than that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mnk.kernels import cntk_cuda, gram

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def fresh_check():
    """The check is cached per process (it is asked once per kernel call): start clean."""
    cntk_cuda.cuda_unavailable_reason.cache_clear()
    yield
    cntk_cuda.cuda_unavailable_reason.cache_clear()


class FakeRuntime:
    def __init__(self, driver=12080, built=12060, devices=1, count_error=None):
        self.driver, self.built, self.devices, self.count_error = driver, built, devices, count_error

    def driverGetVersion(self):  # noqa: N802 (CuPy's names)
        return self.driver

    def runtimeGetVersion(self):  # noqa: N802
        return self.built

    def getDeviceCount(self):  # noqa: N802
        if self.count_error:
            raise self.count_error
        return self.devices


def fake_cupy(monkeypatch, **runtime):
    module = types.ModuleType("cupy")
    module.cuda = types.SimpleNamespace(runtime=FakeRuntime(**runtime))
    monkeypatch.setitem(sys.modules, "cupy", module)


def test_reason_cupy_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    why = cntk_cuda.cuda_unavailable_reason()
    assert "CuPy is not importable" in why and "kernels-cuda12.yaml" in why
    assert cntk_cuda.cuda_available() is False


def test_reason_no_driver(monkeypatch):
    fake_cupy(monkeypatch, driver=0)
    assert "no NVIDIA driver" in cntk_cuda.cuda_unavailable_reason()


def test_reason_driver_too_old(monkeypatch):
    fake_cupy(monkeypatch, driver=12020, built=13000)
    why = cntk_cuda.cuda_unavailable_reason()
    assert "driver is too old" in why and "CUDA 12.2" in why and "CUDA 13.0" in why


def test_newer_minor_runtime_on_same_major_driver_is_fine(monkeypatch):
    """CUDA minor-version compatibility: a 12.8 CuPy runs on a 12.2 driver."""
    fake_cupy(monkeypatch, driver=12020, built=12080)
    assert cntk_cuda.cuda_unavailable_reason() == ""
    assert cntk_cuda.cuda_available() is True


def test_reason_no_device(monkeypatch):
    fake_cupy(monkeypatch, devices=0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "no CUDA device visible (CUDA_VISIBLE_DEVICES=)" in cntk_cuda.cuda_unavailable_reason()
    cntk_cuda.cuda_unavailable_reason.cache_clear()
    fake_cupy(monkeypatch, count_error=RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"))
    assert "cudaErrorNoDevice" in cntk_cuda.cuda_unavailable_reason()


def test_cntk_gram_cuda_error_carries_the_reason(monkeypatch):
    fake_cupy(monkeypatch, driver=11080, built=12060)
    X = np.random.default_rng(0).random((2, 5, 5))
    with pytest.raises(RuntimeError, match=r"backend='cuda'.*cuda_available\(\) is False: the NVIDIA driver is too old"):
        gram.cntk_gram(X, depth=2, backend="cuda")
    # `auto` falls back to the CPU instead (the values do not depend on the backend)
    assert gram.select_backend("auto") == "cpu"


# ------------------------------------------------------------------ GPU job limit

SNAKEFILE = r'''
import time

print("GPU-LIMIT", workflow.global_resources.get("gpu").value)

rule all:
    input:
        expand("done/gpu{i}", i=range(4)),
        expand("done/cpu{i}", i=range(2)),

rule gpu_job:
    output:
        "done/gpu{i}",
    resources:
        gpu=1,
    run:
        start = time.time(); time.sleep(2)
        open(output[0], "w").write(f"{start} {time.time()}\n")

rule cpu_job:
    output:
        "done/cpu{i}",
    run:
        start = time.time(); time.sleep(2)
        open(output[0], "w").write(f"{start} {time.time()}\n")
'''


def gpu_workflow(tmp_path: Path) -> Path:
    """A tiny workflow whose `workflow/` holds this repository's default profile."""
    (tmp_path / "workflow").mkdir(parents=True)
    (tmp_path / "workflow" / "Snakefile").write_text(SNAKEFILE)
    shutil.copytree(REPO / "workflow" / "profiles", tmp_path / "workflow" / "profiles")
    return tmp_path


def run(workdir: Path, *args, gpus: str | None):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # (no nvidia-smi here: counts come from the variable)
    result = subprocess.run([str(BIN / "snakemake"), *args], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def most_at_once(folder: Path) -> int:
    spans = [tuple(map(float, p.read_text().split())) for p in folder.glob("gpu*")]
    return max(sum(s <= t < e for s, e in spans) for t, _ in spans)


@pytest.mark.slow
def test_default_profile_runs_at_most_one_gpu_job_per_gpu(tmp_path):
    two = gpu_workflow(tmp_path / "two")
    out = run(two, "--cores", "4", gpus="0,1")
    assert "GPU-LIMIT 2" in out
    assert most_at_once(two / "done") == 2  # 4 cores, 4 GPU jobs: only the 2 GPUs limit them
    one = gpu_workflow(tmp_path / "one")
    run(one, "--cores", "4", gpus="0")
    assert most_at_once(one / "done") == 1
    # without the profile nothing limits them: the check above can fail
    free = gpu_workflow(tmp_path / "free")
    run(free, "--cores", "6", "--workflow-profile", "none", gpus="0,1")  # room for all 6 jobs at once
    assert most_at_once(free / "done") > 2


def test_default_profile_sets_no_gpu_limit_without_gpus_or_for_a_cluster(tmp_path):
    flow = gpu_workflow(tmp_path)
    assert "GPU-LIMIT None" in run(flow, "-n", gpus="")
    assert "GPU-LIMIT None" in run(flow, "-n", "--profile", str(REPO / "profiles" / "slurm"), gpus="0")
    assert "GPU-LIMIT 3" in run(flow, "-n", gpus="0,1,2")
    assert "GPU-LIMIT 5" in run(flow, "-n", "--resources", "gpu=5", gpus="0")  # the command line wins


# ------------------------------------------------------------------ which env each job gets

FAKE_CONDA = """#!/bin/sh
# Stand-in conda: answers what Snakemake asks before it would create envs (conda cannot run here).
case "$1" in
  --version) echo "conda 25.1.0";;
  info) echo '{"conda_prefix": "/nonexistent", "root_prefix": "/nonexistent", "envs_dirs": [], "platform": "linux-64", "conda_version": "25.1.0", "active_prefix": null}';;
  config) echo '{"get": {"channel_priority": "strict"}}';;
  *) echo "fake conda cannot: $*" >&2; exit 1;;
esac
"""


def conda_envs(tmp_path: Path, *args, gpus: str | None) -> set[str]:
    """The env files `snakemake --use-conda` would use for the whole DAG."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "conda").write_text(FAKE_CONDA)
    (fake / "conda").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{fake}{os.pathsep}{env.get('PATH', '')}"
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    result = subprocess.run([str(BIN / "snakemake"), "--list-conda-envs", "--use-conda", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return {line.split()[0] for line in result.stdout.splitlines() if line.startswith("envs/")}


CPU = {"envs/data.yaml", "envs/kernels.yaml", "envs/torch.yaml", "envs/results.yaml"}


@pytest.mark.slow
def test_gpu_jobs_get_the_gpu_envs_of_the_chosen_cuda(tmp_path):
    tiny = ["--configfile", "config/test.yaml"]  # backend auto, device cpu
    assert conda_envs(tmp_path, *tiny, gpus="") == CPU
    # auto on a machine with a GPU: the kernel blocks take the CuPy env; device cpu stays CPU
    assert conda_envs(tmp_path, *tiny, gpus="0") == CPU | {"envs/kernels-cuda12.yaml"}
    paper = ["--configfile", "config/paper.yaml"]  # backend cuda, device cuda
    gpu12 = {"envs/kernels-cuda12.yaml", "envs/torch-cuda12.yaml"}
    # (assemble_kernel keeps the CPU kernels env; aggregate/figures the CPU results env)
    assert conda_envs(tmp_path, *paper, gpus="") == CPU - {"envs/torch.yaml"} | gpu12
    assert conda_envs(tmp_path, *paper, "--config", "cuda=13", gpus="0") == (
        CPU - {"envs/torch.yaml"} | {"envs/kernels-cuda13.yaml", "envs/torch-cuda13.yaml"})

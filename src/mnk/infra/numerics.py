"""One CPU code path on every x86-64 machine: the same bits from the same code and data.

Libraries pick their vector kernels from the CPU they run on (AVX2, AVX-512, ...), and
different kernels round float sums differently; meta-training amplifies that into points of
accuracy (BENCHMARKS.md, issue 27). So before torch, numba, numpy's OpenBLAS or MKL are
imported, every job pins them to the AVX2 path, which every x86-64 CPU since 2013 has, and
overrides whatever the user's environment asked for. Without AVX2 (or off x86) nothing is
pinned and the run says so (`metrics.json`: `numerics`).

Plain Python (no numpy, no torch): imported by `mnk/__init__.py`, so importing any part of
mnk pins the process, and by the Snakefile, so every job inherits the pinned environment.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# Each library's own switch to the AVX2 code path (values override the environment's).
AVX2_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's ATen kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (torch's convolutions on CPU)
    "DNNL_MAX_CPU_ISA": "AVX2",  # its older name
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL (torch's BLAS on x86)
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: the same results on any AVX2 CPU
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's and scipy's OpenBLAS
    "NUMBA_CPU_NAME": "haswell",  # the numba CNTK kernels: code generated for AVX2
    "NUMBA_CPU_FEATURES": "",  # no extra features on top of the named CPU
}
# Deterministic cuBLAS (torch.use_deterministic_algorithms needs it on CUDA >= 10.2).
GPU_ENVIRONMENT = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
PINNED_MODULES = ("torch", "numba", "numpy")  # read the switches once, at their import


def cpu_has_avx2(cpuinfo: str | None = None) -> bool:
    """Does this x86-64 CPU have AVX2 (and FMA, which the AVX2 paths use)? Linux: /proc/cpuinfo."""
    if cpuinfo is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return False
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                  if line.startswith("flags")), [])
    return "avx2" in flags and "fma" in flags


def pinned_environment(has_avx2: bool | None = None) -> dict[str, str]:
    """The variables every job runs with: the AVX2 path where the CPU has it, and cuBLAS's."""
    has_avx2 = cpu_has_avx2() if has_avx2 is None else has_avx2
    return {**(AVX2_ENVIRONMENT if has_avx2 else {}), **GPU_ENVIRONMENT}


def pin_cpu_numerics(environ=os.environ) -> dict[str, str]:
    """Set the pinned variables in `environ` (this process and its children); returns them.

    Too late for a library already imported (it read its switch at import): that is
    reported by :func:`numerics_report`, and jobs import mnk before torch, numba and numpy.
    """
    pinned = pinned_environment()
    environ.update(pinned)
    for name in set(AVX2_ENVIRONMENT) - set(pinned):
        environ.pop(name, None)  # without AVX2 a user's setting could only crash the job
    return pinned


def configure_torch(threads: int) -> dict:
    """Fixed thread count and deterministic algorithms for a torch job; its numerics record."""
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # CPU ops are deterministic already
    return numerics_report(threads)


def numerics_report(threads: int | None = None) -> dict:
    """What the job computed with, for metrics.json: the pinned path and what torch chose."""
    report = {"pinned": cpu_has_avx2(), "environment": {k: os.environ.get(k) for k in AVX2_ENVIRONMENT},
              "machine": platform.machine()}
    if "torch" in sys.modules:
        import torch

        report.update(torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                      torch_threads=torch.get_num_threads())
    if threads is not None:
        report["threads"] = threads
    return report

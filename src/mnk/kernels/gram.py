"""Base kernels: the exact convolutional NTK (CNTK) and the fully connected ReLU NTK.

* :func:`cntk_gram` -- CNTK of Arora et al. 2019 (exact recursion documented in
  :mod:`mnk.kernels.cntk_cpu`), dispatched to the CPU (numba; float64
  :mod:`~mnk.kernels.cntk_cpu` or float32 :mod:`~mnk.kernels.cntk_cpu32`) or the CUDA backend.
* :func:`ntk_gram` -- fully connected ReLU NTK on flattened inputs (:mod:`mnk.kernels.ntk`).
* :mod:`mnk.kernels.reference` -- slow direct 4-D float64 reference, for tests.
"""

from __future__ import annotations

import logging

import numpy as np

from mnk.kernels._validate import as_images, check_depth
from mnk.kernels.ntk import ntk_gram
from mnk.kernels.options import BACKENDS, DTYPES, cpu_dtype  # one list each, with the config's options

__all__ = ["DTYPES", "check_dtype", "cntk_gram", "cpu_dtype", "ntk_gram", "select_backend"]

log = logging.getLogger("mnk.kernels")

_logged: set[str] = set()


def _log_choice(msg: str, *args, level: int = logging.INFO) -> None:
    """At `level` the first time a given backend decision is made in this process, DEBUG after."""
    text = msg % args
    level = logging.DEBUG if text in _logged else level
    _logged.add(text)
    log.log(level, text)


def _cuda_module():
    """The CUDA backend module if importable and a GPU is usable, else (None, reason)."""
    try:
        from mnk.kernels import cntk_cuda  # noqa: PLC0415 (lazy: CuPy is optional)
    except ImportError as exc:
        return None, f"mnk.kernels.cntk_cuda not importable ({exc})"
    try:
        why = cntk_cuda.cuda_unavailable_reason()
    except Exception as exc:  # a broken driver must not break the CPU path
        return None, f"cuda_available() failed ({type(exc).__name__}: {exc})"
    if why:
        return None, f"cuda_available() is False: {why}"
    return cntk_cuda, ""


def select_backend(backend: str = "auto") -> str:
    """Resolve ``backend`` to "cpu" or "cuda" (raises RuntimeError for an unusable "cuda")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        return "cpu"
    mod, why = _cuda_module()
    if backend == "cuda":
        if mod is None:
            raise RuntimeError(f"cntk_gram(backend='cuda'): no CUDA GPU/CuPy available: {why}")
        return "cuda"
    if mod is None:
        _log_choice("cntk_gram: backend 'auto' -> cpu (%s)", why)
        return "cpu"
    _log_choice("cntk_gram: backend 'auto' -> cuda")
    return "cuda"




def check_dtype(dtype) -> str:
    """``dtype`` as "float32" or "float64" (strings or NumPy dtypes); anything else is an error."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return name


def cntk_gram(X, Z=None, *, depth: int, gap: bool = True, fix: bool = False, backend: str = "auto",
              dtype="float64") -> np.ndarray:
    """Exact CNTK Gram matrix, float64 of shape (len(X), len(Z)).

    X, Z: float arrays (n, H, W) or (n, C, H, W), H, W >= 3, finite.  Z=None means
    Z = X (symmetric: only the lower triangle is computed, then mirrored).  ``depth`` =
    number of 3x3 conv layers + 1 (>= 2); ``gap``: global average pooling (mean of the
    final P x P NTK) else trace; ``fix``: first and last layer fixed.  ``backend``:
    "cpu", "cuda" or "auto" (cuda when :func:`mnk.kernels.cntk_cuda.cuda_available`).
    ``dtype``: arithmetic of the CPU backend, "float64" (exact, :mod:`mnk.kernels.cntk_cpu`)
    or "float32" (vectorised, ~1e-7 relative, :mod:`mnk.kernels.cntk_cpu32`; with gap only:
    the trace is computed in float64 and a warning says so, :func:`cpu_dtype`); the result
    is float64 either way.  The CUDA backend keeps its own precision whatever
    ``dtype`` says (float32 with gap, float64 for the trace).
    Definition and conventions: :mod:`mnk.kernels.cntk_cpu`.  Inputs are validated here,
    once; the backends receive prepared float64 (n, C, H, W) arrays.
    """
    depth = check_depth(depth)
    dtype = check_dtype(dtype)
    Xi = as_images(X, "X")
    Zi = None if Z is None else as_images(Z, "Z")
    if Zi is not None and Zi.shape[1:] != Xi.shape[1:]:
        raise ValueError(f"X and Z must have the same (C, H, W); got {Xi.shape[1:]} and {Zi.shape[1:]}")
    gap, fix = bool(gap), bool(fix)
    chosen = select_backend(backend)
    if chosen == "cuda" and backend == "auto":
        from mnk.kernels import cntk_cuda  # noqa: PLC0415

        supports = getattr(cntk_cuda, "supports_shape", None)
        H, W = Xi.shape[2], Xi.shape[3]
        if supports is not None and not supports(H, W):
            _log_choice("cntk_gram: backend 'auto' -> cpu (CUDA backend does not support %dx%d images)", H, W)
            chosen = "cpu"
    symmetric = Zi is None
    Zp = Xi if symmetric else Zi
    if chosen == "cuda":
        return _cuda_gram(Xi, Zp, symmetric, depth=depth, gap=gap, fix=fix)
    if cpu_dtype(dtype, gap) == "float32":
        from mnk.kernels.cntk_cpu32 import cntk_gram_cpu32  # noqa: PLC0415 (numba import is slow)

        return cntk_gram_cpu32(Xi, Zp, symmetric, depth=depth, fix=fix)
    if dtype == "float32":
        _log_choice("cntk_gram: dtype 'float32' -> float64 for the trace (gap=False): float32 is not "
                    "accurate to 1e-5 there (mnk.kernels.cntk_cpu32)", level=logging.WARNING)
    from mnk.kernels.cntk_cpu import gram_prepared  # noqa: PLC0415

    return gram_prepared(Xi, Zp, symmetric, depth=depth, gap=gap, fix=fix)


def _cuda_gram(Xi, Zp, symmetric, *, depth, gap, fix) -> np.ndarray:
    from mnk.kernels.cntk_cuda import cupy_runner, gram_prepared  # noqa: PLC0415

    K = np.asarray(gram_prepared(Xi, Zp, symmetric, depth=depth, gap=gap, fix=fix, runner=cupy_runner()),
                   dtype=np.float64)
    if K.shape != (len(Xi), len(Zp)):
        raise RuntimeError(f"the CUDA CNTK returned shape {K.shape}, expected {(len(Xi), len(Zp))}")
    if not np.all(np.isfinite(K)):
        raise FloatingPointError("the CUDA CNTK returned non-finite values")
    return K

"""``numba.njit`` for the kernels, with a compile cache that always matches the source.

numba keys a cached function on the file that defines it, not on the code compiled into it
from other files (``_acos.pi_minus_acos`` inlined, its coefficient tuples frozen as
constants, numba functions called across modules): after an edit there the cache would
still hand out the old machine code. So each function is cached in a directory named by the
code hash of its module and of every ``mnk`` module that module imports
(:func:`mnk.infra.codehash.code_hash`, the hash that reruns the workflow's jobs): edited
code gets a new directory and is compiled afresh; unchanged code, in any process, is loaded.

The directory lies under ``NUMBA_CACHE_DIR`` when the user set one, else in the module's
``__pycache__`` (numba's default), else in numba's user-wide cache directory; where none is
writable the functions are not cached (numba would fall back to its file-keyed locations).
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numba
from numba.misc.appdirs import AppDirs

from mnk.infra.codehash import code_hash

__all__ = ["cache_dir", "kernel_jit"]


def kernel_jit(**flags):
    """``numba.njit(cache=True, **flags)`` cached in :func:`cache_dir` of the function's file."""

    def decorate(fn):
        where = cache_dir(fn.__code__.co_filename)
        if where is None:
            return numba.njit(cache=False, **flags)(fn)
        # numba reads the cache directory when the function is decorated (its cache locator)
        saved = numba.config.CACHE_DIR
        numba.config.CACHE_DIR = where
        try:
            return numba.njit(cache=True, **flags)(fn)
        finally:
            numba.config.CACHE_DIR = saved

    return decorate


@functools.lru_cache(maxsize=None)
def cache_dir(module_file: str) -> str | None:
    """The writable cache directory for the numba functions of ``module_file``, or None."""
    module_file = str(Path(module_file).resolve())
    key = code_hash(module_file)
    user = numba.config.CACHE_DIR
    bases = [user] if user else [Path(module_file).parent / "__pycache__",
                                 AppDirs(appname="numba", appauthor=False).user_cache_dir]
    for base in bases:
        path = os.path.join(base, f"mnk-{key}")
        if _writable(path):
            return path
    return None


def _writable(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True

"""Compiled kernels follow their source (mnk.kernels._jit): numba's cache is keyed on the
code hash of each kernel module and the mnk modules it imports, so an edit of a helper that
is inlined into a kernel (`_acos.pi_minus_acos`, the float32 arc-cosine coefficients) is
compiled afresh by the next process, with nothing cleared.

Against an independent reference: the same edited source run by the Python interpreter
(NUMBA_DISABLE_JIT=1), which no compiled cache can reach.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_SRC = Path(__file__).resolve().parents[1] / "src"

# float64 (trace: pi_minus_acos) and float32 (GAP: the arc-cosine polynomial) kernels of
# small signed images, as JSON on stdout
KERNELS = """
import json
import numpy as np
from mnk.kernels.gram import cntk_gram
X = np.random.default_rng(0).standard_normal((3, 1, 5, 5))
print(json.dumps({dtype: cntk_gram(X, depth=3, gap=gap, backend="cpu", dtype=dtype).tolist()
                  for dtype, gap in (("float64", False), ("float32", True))}))
"""
# Each edit changes the kernels by about 1e-2 relative.
EDITS = [("return _PIO2 + (c + c * r) if small else big", "return 1.01 * (_PIO2 + (c + c * r) if small else big)"),
         ("    0.0026113142222421444,\n", "    0.1026113142222421444,\n")]


def _copy_of_package(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO_SRC / "mnk", src / "mnk", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return src


def _edit_acos(src):
    path = src / "mnk" / "kernels" / "_acos.py"
    text = path.read_text()
    for old, new in EDITS:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)


def _kernels(src, **env):
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    # NUMBA_OPT=1 compiles in half the time of 3 (and still caches: at 0 numba refuses to)
    environ.update(PYTHONPATH=str(src), NUMBA_OPT="1", **env)
    out = subprocess.run([sys.executable, "-c", KERNELS], env=environ, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    return {k: np.array(v) for k, v in json.loads(out.splitlines()[-1]).items()}


@pytest.mark.slow
def test_edited_inlined_helpers_are_compiled_afresh_with_a_warm_cache(tmp_path):
    src = _copy_of_package(tmp_path)
    before = _kernels(src)  # compiles and fills the cache
    _edit_acos(src)
    after = _kernels(src)  # a new process, the cache untouched
    truth = _kernels(src, NUMBA_DISABLE_JIT="1")  # the edited source, interpreted
    for dtype, rtol in (("float64", 1e-12), ("float32", 1e-5)):
        np.testing.assert_allclose(after[dtype], truth[dtype], rtol=rtol, err_msg=dtype)
        assert np.max(np.abs(before[dtype] / truth[dtype] - 1)) > 1e-3, dtype  # the edit shows


def _cache_dirs(src):
    code = ("import json, mnk.kernels as k; from pathlib import Path; from mnk.kernels._jit import cache_dir; "
            "print(json.dumps({n: cache_dir(str(Path(k.__file__).parent / n)) for n in "
            "('cntk_cpu.py', 'cntk_cpu32.py', '_acos.py')}))")
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    environ["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out)


def test_cache_directory_follows_every_imported_kernel_module(tmp_path):
    src = _copy_of_package(tmp_path)
    first = _cache_dirs(src)
    pycache = str(src / "mnk" / "kernels" / "__pycache__")
    assert len(set(first.values())) == 3 and all(d.startswith(pycache) for d in first.values())
    assert _cache_dirs(src) == first  # the same code, the same cache
    _edit_acos(src)
    second = _cache_dirs(src)
    assert all(second[name] != first[name] for name in first)  # both kernels inline _acos

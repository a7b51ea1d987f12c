"""The pinned CPU code path (mnk.infra.numerics) and the reproduction checks (mnk.study.verify)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnk.infra import numerics
from mnk.study import verify

REPO = Path(__file__).resolve().parents[1]
AVX2 = numerics.cpu_has_avx2()


def test_avx2_detection_reads_the_flags():
    assert numerics.cpu_has_avx2("processor: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n")
    assert not numerics.cpu_has_avx2("flags\t\t: fpu sse2 avx fma\n")  # no avx2
    assert not numerics.cpu_has_avx2("flags\t\t: fpu avx2\n")  # no fma
    assert not numerics.cpu_has_avx2("")


def test_pinning_overrides_the_environment_and_unpins_without_avx2(monkeypatch):
    environ = {"ATEN_CPU_CAPABILITY": "avx512", "NUMBA_CPU_NAME": "skylake-avx512", "HOME": "/x"}
    monkeypatch.setattr(numerics, "cpu_has_avx2", lambda cpuinfo=None: True)
    pinned = numerics.pin_cpu_numerics(environ)
    assert environ["ATEN_CPU_CAPABILITY"] == "avx2" and environ["NUMBA_CPU_NAME"] == "haswell"
    assert environ["HOME"] == "/x" and pinned["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    environ = {"ATEN_CPU_CAPABILITY": "avx512"}
    monkeypatch.setattr(numerics, "cpu_has_avx2", lambda cpuinfo=None: False)
    numerics.pin_cpu_numerics(environ)  # no AVX2: a user's setting could only crash the job
    assert "ATEN_CPU_CAPABILITY" not in environ and environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


@pytest.mark.skipif(not AVX2, reason="the CPU has no AVX2: nothing is pinned")
@pytest.mark.parametrize("asked", ["default", "avx512"])
def test_importing_mnk_first_pins_torch_and_numba(asked):
    code = ("import mnk, torch, numba; from mnk.infra.numerics import configure_torch; "
            "r = configure_torch(1); print(r['torch_cpu_capability'], numba.config.CPU_NAME, r['pinned'])")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": asked, "NUMBA_CPU_NAME": "generic",
           "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AVX2", "haswell", "True"]


def _write(path, rows):
    path.write_text("method,way,shot,n_characters,seed,accuracy\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_compare_finds_every_changed_missing_and_extra_row(tmp_path):
    ref = _write(tmp_path / "ref.csv", ["mnk,5,1,5,0,0.8", "mnk,5,1,5,1,0.75", "maml,5,1,5,0,0.6"])
    same = _write(tmp_path / "same.csv", ["maml,5,1,5,0,0.6", "mnk,5,1,5,0,0.8", "mnk,5,1,5,1,0.75"])
    assert verify.compare(same, ref, verify.KEY) == []
    # one bit off in the 17th digit is a difference: the check is exact
    off = _write(tmp_path / "off.csv", ["mnk,5,1,5,0,0.8000000000000002", "maml,5,1,5,0,0.6", "imaml,5,1,5,0,0.5"])
    problems = verify.compare(off, ref, verify.KEY)
    assert len(problems) == 3
    assert any("0.8000000000000002 here, 0.8 in the reference" in p for p in problems)
    assert any("'seed': 1" in p and "missing" in p for p in problems)
    assert any("imaml" in p and "not in the reference" in p for p in problems)
    assert verify.main(["summary", str(off), str(ref)]) == 1 and verify.main(["summary", str(same), str(ref)]) == 0


def test_readme_table_is_the_one_generated_from_the_committed_summary():
    assert verify.readme_problems(REPO / "README.md", REPO / verify.DEFAULT_SUMMARY,
                                  sinusoid_path=REPO / verify.SINUSOID_SUMMARY) == []


def test_readme_table_check_fails_on_a_hand_edit(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{verify.readme_block(REPO / verify.DEFAULT_SUMMARY)}\ny\n")
    assert verify.readme_problems(readme, REPO / verify.DEFAULT_SUMMARY) == []
    readme.write_text(readme.read_text().replace("%", " %", 1))
    assert verify.readme_problems(readme, REPO / verify.DEFAULT_SUMMARY)
    verify.readme_problems(readme, REPO / verify.DEFAULT_SUMMARY, write=True)
    assert verify.readme_problems(readme, REPO / verify.DEFAULT_SUMMARY) == []


def test_a_missing_results_file_is_named(tmp_path):
    ref = _write(tmp_path / "ref.csv", ["mnk,5,1,5,0,0.8"])
    with pytest.raises(FileNotFoundError, match="absent.csv: no such results file"):
        verify.compare(tmp_path / "absent.csv", ref, verify.KEY)

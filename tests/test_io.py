"""Damaged intermediate files are named, with the command that rebuilds them; writes are atomic
and refused for an orphaned job."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnk.infra import io, runtime
from mnk.infra.io import CorruptFileError, MissingKeyError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def outside_a_workflow(monkeypatch):
    monkeypatch.delenv(runtime.WORKFLOW_PROCESS_ENV, raising=False)


def _arrays():
    return {"images": np.arange(4000, dtype=np.float32).reshape(10, 20, 20), "drawer": np.arange(10)}


def _assert_names_file_and_cure(error, path):
    message = str(error.value)
    assert str(path) in message
    assert f"--forcerun {path}" in message and "troubleshooting" in message


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_damaged_npz_names_the_file_and_the_cure(tmp_path, damage):
    path = tmp_path / "results" / "data" / "omniglot.npz"
    io.save_npz(path, **_arrays())
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "empty": b"", "garbage": b"<html>oops</html>" * 10}[damage])
    with pytest.raises(CorruptFileError) as error:
        io.load_npz(path)
    _assert_names_file_and_cure(error, path)


def test_bit_flip_is_caught_by_the_crc_and_named(tmp_path):
    """A flipped byte inside an uncompressed member: zipfile's CRC check, not a silent value."""
    path = tmp_path / "block.npz"
    np.savez(path, **_arrays())  # stored, not compressed: the flip changes one float
    raw = bytearray(path.read_bytes())
    raw[raw.find(np.float32(2000).tobytes())] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="Bad CRC-32") as error:
        io.load_npz(path)
    _assert_names_file_and_cure(error, path)


def test_missing_key_names_file_and_key(tmp_path):
    path = tmp_path / "omniglot.npz"
    io.save_npz(path, **_arrays())
    data = io.load_npz(path)
    with pytest.raises(MissingKeyError) as error:
        data["character"]
    message = str(error.value)
    assert str(path) in message and "'character'" in message and "drawer, images" in message
    assert f"--forcerun {path}" in message
    assert isinstance(error.value, KeyError)  # callers catching KeyError still do
    with pytest.raises(MissingKeyError, match="'split'"):
        io.load_npz(path, keys=("images", "split"))
    assert data.get("character") is None and "images" in data  # plain dict behaviour otherwise
    np.testing.assert_array_equal(data["images"], _arrays()["images"])


def test_missing_file_names_the_cure(tmp_path):
    path = tmp_path / "kernel.npz"
    with pytest.raises(FileNotFoundError) as error:
        io.load_npz(path)
    _assert_names_file_and_cure(error, path)


def test_damaged_json_and_checkpoint_are_named(tmp_path):
    metrics = tmp_path / "metrics.json"
    io.save_json(metrics, {"accuracy": np.float64(0.5)})
    assert io.load_json(metrics) == {"accuracy": 0.5}
    metrics.write_text('{"accuracy": 0.')
    with pytest.raises(CorruptFileError) as error:
        io.load_json(metrics)
    _assert_names_file_and_cure(error, metrics)

    torch = pytest.importorskip("torch")
    checkpoint = tmp_path / "encoder.pt"
    io.save_torch(checkpoint, {"w": torch.ones(100)})
    assert torch.equal(io.load_torch(checkpoint)["w"], torch.ones(100))
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    with pytest.raises(CorruptFileError) as error:
        io.load_torch(checkpoint)
    _assert_names_file_and_cure(error, checkpoint)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    io.save_json(path, {"v": 1})
    with pytest.raises(TypeError):
        io.save_json(path, {"v": object()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_is_refused_when_the_workflow_process_is_gone(tmp_path, monkeypatch):
    """The token names a process that is not (any longer) an ancestor: nothing is written."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    token = runtime.process_token(gone.pid)  # taken while it lives (or as a zombie)
    gone.wait()
    monkeypatch.setenv(runtime.WORKFLOW_PROCESS_ENV, token)
    path = tmp_path / "metrics.json"
    with pytest.raises(runtime.OrphanedJobError, match="is gone; not writing"):
        io.save_json(path, {"v": 1})
    assert list(tmp_path.iterdir()) == []


def test_write_is_allowed_while_the_workflow_process_lives(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.WORKFLOW_PROCESS_ENV, runtime.process_token(os.getppid()))
    assert runtime.workflow_alive() is True
    io.save_json(tmp_path / "metrics.json", {"v": 1})
    assert io.load_json(tmp_path / "metrics.json") == {"v": 1}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times come from /proc")
def test_a_reused_pid_is_not_mistaken_for_the_workflow(monkeypatch):
    """Same pid as an ancestor but another start time: that ancestor is not our Snakemake."""
    pid, start, namespace = runtime.process_token(os.getppid()).split(":")
    monkeypatch.setenv(runtime.WORKFLOW_PROCESS_ENV, f"{pid}:{int(start) + 1}:{namespace}")
    assert runtime.workflow_alive() is False


def test_a_token_from_another_pid_namespace_is_not_judged(monkeypatch):
    """A job in a container with its own pids cannot see Snakemake's: it must not refuse."""
    pid, start, _ = runtime.process_token(os.getppid()).split(":")
    monkeypatch.setenv(runtime.WORKFLOW_PROCESS_ENV, f"999999:{start}:1")
    assert runtime.workflow_alive() is None


def test_corrupt_preprocessed_file_is_named_in_the_job_log(tmp_path):
    """Through Snakemake: a truncated results/data/omniglot.npz fails make_tasks, and its log
    names the file and the command that rebuilds it."""
    for name in ("workflow", "scripts", "src", "config", "envs"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO / "config" / "test.yaml", tmp_path / "config" / "config.yaml")
    raw = tmp_path / "results" / "data" / "raw"
    raw.mkdir(parents=True)
    old = time.time() - 10 * 365 * 86400  # older than every source file: nothing upstream reruns
    for name in ("images_background", "images_evaluation"):
        (raw / f"{name}.zip").touch()
        os.utime(raw / f"{name}.zip", (old, old))
    preprocessed = tmp_path / "results" / "data" / "omniglot.npz"
    io.save_npz(preprocessed, **_arrays())
    preprocessed.write_bytes(preprocessed.read_bytes()[:500])
    exp = "5way1shot-5char-seed0"
    # (mtime only: these files have no Snakemake metadata, which would count as changed code)
    result = subprocess.run([str(BIN / "snakemake"), "--cores", "1", "--rerun-triggers", "mtime", "--",
                             f"results/tasks/{exp}/tasks.npz"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMNIGLOT_MIRROR": ""})
    assert result.returncode != 0
    assert "preprocess_omniglot" not in result.stdout + result.stderr  # only make_tasks was run
    log = (tmp_path / "logs" / "make_tasks" / f"{exp}.log").read_text()
    assert "CorruptFileError" in log and "results/data/omniglot.npz" in log
    assert "--forcerun results/data/omniglot.npz" in log


CHAIN = """
rule all:
    input:
        "c.txt",


rule make_a:
    output:
        "a.txt",
    shell:
        "echo a > {output}"


rule make_b:
    input:
        "a.txt",
    output:
        "b.txt",
    shell:
        "cat {input} > {output}"


rule make_c:
    input:
        "b.txt",
    output:
        "c.txt",
    shell:
        "cat {input} > {output}"
"""


def test_the_documented_rebuild_of_a_deleted_intermediate(tmp_path):
    """What docs/troubleshooting.md says Snakemake 9 does: a deleted intermediate with up-to-date
    outputs downstream is NOT rebuilt by a plain run; `--forcerun <file>` rebuilds it and
    everything downstream (the command every corrupt-file message gives)."""
    (tmp_path / "Snakefile").write_text(CHAIN)

    def snakemake(*args):
        result = subprocess.run([str(BIN / "snakemake"), "--cores", "1", *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    snakemake()
    (tmp_path / "b.txt").unlink()
    assert "Nothing to be done" in snakemake("--dry-run")
    planned = snakemake("--dry-run", "--forcerun", "b.txt")
    assert {"make_b", "make_c"} <= set(re.findall(r"^(?:local)?rule (\w+):", planned, re.M))
    assert "make_a" not in planned
    snakemake("--forcerun", "b.txt")
    assert (tmp_path / "b.txt").read_text() == "a\n"

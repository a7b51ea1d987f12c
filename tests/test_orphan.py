"""An orphaned job (its Snakemake killed) never writes its outputs: a newer run's result is safe.

A tiny workflow whose `script:` job waits for a signal file is started; Snakemake is killed
with SIGKILL (as `kill -9` or an OOM killer would), then the job is let go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SNAKEFILE = """
from mnk.infra.runtime import export_workflow_process

export_workflow_process()


rule guarded:
    output:
        "out/{name}.json",
    log:
        "logs/{name}.log",
    script:
        "job.py"
"""

JOB = """
import os
import time
from pathlib import Path

from mnk.infra.io import save_json
from mnk.infra.runtime import logged_run

name = snakemake.wildcards.name
Path(f"{name}.pid").write_text(str(os.getpid()))
if name == "plain":  # no logged_run: only the check before the rename protects the output
    while not Path("go").exists():
        time.sleep(0.05)
    try:
        save_json(snakemake.output[0], {"written_by": os.getpid()})
    except Exception as error:
        Path("plain.error").write_text(f"{type(error).__name__}: {error}")
        raise
else:  # logged_run's watchdog stops an orphan that would compute for a long time
    with logged_run(snakemake.log[0], "guarded"):
        while not Path("go").exists():
            try:
                time.sleep(0.05)
            except KeyboardInterrupt:
                if name != "stubborn":  # "stubborn" swallows it: the watchdog must exit hard
                    raise
        save_json(snakemake.output[0], {"written_by": os.getpid()})
"""


def _workflow(tmp_path: Path) -> Path:
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    return tmp_path


def _start(workdir: Path, target: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.getenv("PYTHONPATH")]))}
    env.pop("MNK_WORKFLOW_PROCESS", None)
    return subprocess.Popen([str(BIN / "snakemake"), "--cores", "1", target], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(")")[-1].split()[0] != "Z"


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


def test_job_writes_while_snakemake_lives(tmp_path):
    """Control: with its Snakemake alive the same job writes its output."""
    workdir = _workflow(tmp_path)
    (workdir / "go").touch()
    proc = _start(workdir, "out/plain.json")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert (workdir / "out" / "plain.json").is_file()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to follow the process tree")
@pytest.mark.parametrize("name", ["plain", "logged", "stubborn"])
def test_orphan_after_snakemake_is_killed_writes_nothing(tmp_path, name):
    workdir = _workflow(tmp_path)
    proc = _start(workdir, f"out/{name}.json")
    try:
        _wait_for(lambda: (workdir / f"{name}.pid").is_file() and (workdir / f"{name}.pid").read_text(), 120,
                  "the job to start")
        job = int((workdir / f"{name}.pid").read_text())
        # How Snakemake 9 runs a `script:` job locally: its own process (a pool thread) starts
        # a shell that starts the script, so Snakemake is an ancestor but not always the parent.
        assert proc.pid in _ancestors(job)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert _alive(job)  # the job outlives its Snakemake: it is an orphan now
        if name == "plain":
            (workdir / "go").touch()  # finish, and try to write
        # "logged" and "stubborn" are never let go: their watchdog must stop them.
        try:
            _wait_for(lambda: not _alive(job), 60, "the orphaned job to end")
        except AssertionError as error:  # say what the job was doing (its log, its parents)
            log = workdir / "logs" / f"{name}.log"
            raise AssertionError(f"{error}; job log: {log.read_text() if log.exists() else '(none)'}; "
                                 f"ancestors now: {_ancestors(job)}") from None
    finally:
        try:  # our own session (start_new_session): the job and its shell, if still there
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not (workdir / "out" / f"{name}.json").exists()
    out = workdir / "out"
    assert not out.exists() or [p.name for p in out.iterdir()] == []  # no temporary file either
    if name == "plain":
        assert "OrphanedJobError" in (workdir / "plain.error").read_text()
        assert "is gone" in (workdir / "plain.error").read_text()
    else:
        log = (workdir / "logs" / f"{name}.log").read_text()
        assert "is gone" in log
        # the KeyboardInterrupt stops a normal job; one that swallows it is exited hard
        assert ("failed: KeyboardInterrupt" in log) == (name == "logged")
        assert ("exiting" in log) == (name == "stubborn")

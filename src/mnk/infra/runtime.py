"""Small run-time helpers shared by the workflow scripts: logging, devices, provenance."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# The Snakemake process that runs this job, as "pid:start-time" (set by the Snakefile).
WORKFLOW_PROCESS_ENV = "MNK_WORKFLOW_PROCESS"
WATCH_SECONDS = 5.0
ORPHAN_GRACE_SECONDS = 10.0  # after the KeyboardInterrupt, before a hard exit
ORPHAN_EXIT_CODE = 75  # EX_TEMPFAIL: nothing was wrong with the job itself


class OrphanedJobError(RuntimeError):
    """The Snakemake process that started this job is gone: its outputs must not be written."""


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a process from /proc (Linux), None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return int(fields[1]), fields[19]


def _pid_namespace() -> str:
    """The inode of this process's pid namespace ('pid:[4026531836]' -> '4026531836')."""
    try:
        return os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        return ""


def process_token(pid: int | None = None) -> str:
    """'pid:start-time:pid-namespace' of a process (the last two empty where there is no /proc)."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid) if Path("/proc/self/stat").exists() else None
    return f"{pid}:{stat[1] if stat else ''}:{_pid_namespace()}"


def export_workflow_process() -> None:
    """Called by the Snakefile: jobs started by this process write outputs only while it lives.

    Every Snakemake process that runs jobs parses the Snakefile (the main one, and on SLURM
    the one inside each job), so the token always names the job's own Snakemake.
    """
    os.environ[WORKFLOW_PROCESS_ENV] = process_token()


def workflow_alive() -> bool | None:
    """Is the Snakemake process that started this job still its ancestor? None outside one.

    Walking the parent chain (not only asking whether the pid exists) also catches a pid that
    was reused after Snakemake died: an orphan's chain ends at init or a subreaper.
    """
    pid_text, start, namespace = (os.environ.get(WORKFLOW_PROCESS_ENV, "").split(":") + ["", ""])[:3]
    if not pid_text.isdigit() or namespace != _pid_namespace():
        return None  # outside a workflow, or in a container with its own pids: cannot tell
    pid = int(pid_text)
    if not start:  # no /proc (macOS): the best we can do is "does the pid exist"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    ancestor = os.getppid()
    while ancestor > 1:
        stat = _proc_stat(ancestor)
        if stat is None:
            return False
        if ancestor == pid:
            return stat[1] == start
        ancestor = stat[0]
    return False


def check_workflow_alive(path: str | os.PathLike = "") -> None:
    """Raise OrphanedJobError unless the job's Snakemake process is alive (or there is none)."""
    if workflow_alive() is False:
        raise OrphanedJobError(
            f"the Snakemake process that started this job ({os.environ[WORKFLOW_PROCESS_ENV].split(':')[0]}) "
            f"is gone; not writing {path or 'any output'}, so that a newer run's result is never "
            "overwritten by this orphaned job"
        )


def _watch_workflow(logger: logging.Logger, stop: threading.Event, interval: float) -> None:
    """Stop the job (KeyboardInterrupt in the main thread) once its Snakemake is gone.

    (Not PR_SET_PDEATHSIG: the script's parent is the shell Snakemake starts, which outlives
    a killed Snakemake, and the signal follows the parent *thread*, a pool worker.)
    """
    while workflow_alive() is not False:
        if stop.wait(interval):
            return
    logger.error("the Snakemake process that started this job is gone: stopping this orphaned job")
    import _thread

    _thread.interrupt_main()  # KeyboardInterrupt in the main thread: logged_run logs and re-raises
    if not stop.wait(ORPHAN_GRACE_SECONDS):  # ignored (SIGINT not Python's) or stuck in C code
        logger.error("still running %.0f s later: exiting", ORPHAN_GRACE_SECONDS)
        logging.shutdown()
        os._exit(ORPHAN_EXIT_CODE)  # outputs are atomic renames: at worst a hidden temporary file stays


@contextlib.contextmanager
def logged_run(log_path: str | os.PathLike | None, name: str):
    """Send logging and stderr (tqdm bars too) to `log_path`; log the wall time and any error.

    Errors are logged with their message and re-raised, so Snakemake fails the job and
    points at the log.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    stream = None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "w", buffering=1)
        handlers = [logging.StreamHandler(stream)]
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logger = logging.getLogger(name)
    start = time.perf_counter()
    stop = threading.Event()
    if workflow_alive() is not None:  # an orphan stops instead of computing for nobody
        if threading.current_thread() is threading.main_thread():  # a job may inherit SIGINT ignored
            signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Thread(target=_watch_workflow, args=(logger, stop, WATCH_SECONDS), daemon=True).start()
    with contextlib.redirect_stderr(stream) if stream else contextlib.nullcontext():
        try:
            yield logger
        except BaseException as error:
            logger.error("failed: %s: %s", type(error).__name__, error)
            raise
        finally:
            stop.set()
            logger.info("wall time %.1f s", time.perf_counter() - start)
            if stream:
                stream.close()


def cpu_seconds() -> float:
    """CPU time of this process so far, all its threads (numba's and torch's too), in seconds."""
    return time.process_time()


def resolve_device(requested: str = "auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was requested but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    return requested


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_revision(default: str = "unknown") -> str:
    try:
        root = Path(__file__).resolve().parents[3]  # the checkout (src/mnk/infra/runtime.py)
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or default
    except (OSError, subprocess.SubprocessError):
        return default


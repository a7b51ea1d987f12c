"""Small run-time helpers shared by the workflow scripts: logging, devices, provenance."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


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
    with contextlib.redirect_stderr(stream) if stream else contextlib.nullcontext():
        try:
            yield logger
        except BaseException as error:
            logger.error("failed: %s: %s", type(error).__name__, error)
            raise
        finally:
            logger.info("wall time %.1f s", time.perf_counter() - start)
            if stream:
                stream.close()


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
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or default
    except (OSError, subprocess.SubprocessError):
        return default


def config_hash(obj) -> str:
    """A short stable hash of a JSON-able config fragment."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]

"""Reading and writing the pipeline's files.

Writes are atomic (a reader, or an interrupted run, never sees half a file) and happen only
while the Snakemake process that started the job is alive (`mnk.infra.runtime.check_workflow_alive`),
so an orphaned job never overwrites a newer run's result.

Reads name the file when it is corrupt, truncated or lacks a key, and say how to rebuild it:
`snakemake --forcerun <file>` reruns the job that made it and everything made from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from mnk.infra.runtime import check_workflow_alive

_UMASK = os.umask(0)
os.umask(_UMASK)
TROUBLESHOOTING = "docs/troubleshooting.md"


class CorruptFileError(RuntimeError):
    """An intermediate file cannot be read: the message names it and how to rebuild it."""


class MissingKeyError(KeyError):
    """A file lacks a required entry: the message names the file, the key and the cure."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def rebuild_hint(path: str | os.PathLike) -> str:
    """How to rebuild `path` and everything made from it (works for any rule's output)."""
    return (f"rebuild it, and everything made from it, with `snakemake --cores all --forcerun {path}` "
            f"(see {TROUBLESHOOTING})")


# Exceptions that mean "this file is damaged" for numpy, zipfile, json, pickle and torch.
_CORRUPT = (zipfile.BadZipFile, EOFError, zlib.error, ValueError, UnicodeDecodeError,
            pickle.UnpicklingError, OSError, RuntimeError)


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str = "file"):
    """Turn a damaged-file error raised inside the block into a CorruptFileError naming `path`.

    A missing file keeps its FileNotFoundError, with the rebuild command added.
    """
    try:
        yield
    except (MissingKeyError, CorruptFileError, PermissionError, IsADirectoryError):
        raise
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{what} {path} is missing; {rebuild_hint(path)}") from error
    except _CORRUPT as error:
        raise CorruptFileError(
            f"{what} {path} is corrupt or truncated ({type(error).__name__}: {error}); {rebuild_hint(path)}"
        ) from error


class Contents(dict):
    """The arrays of one .npz file; a missing key names the file and the key."""

    def __init__(self, path, arrays):
        super().__init__(arrays)
        self.path = str(path)

    def __missing__(self, key):
        raise MissingKeyError(
            f"{self.path} has no {key!r} (it holds {', '.join(sorted(self)) or 'nothing'}): it was "
            f"written by another version of the pipeline or for another purpose; {rebuild_hint(self.path)}"
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside `path`; rename it onto `path` only on success, and only
    while the job's Snakemake process is alive (else OrphanedJobError, nothing written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual mode
        check_workflow_alive(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """np.savez_compressed, atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_npz(path: str | os.PathLike, keys: tuple[str, ...] = ()) -> Contents:
    """All arrays of an .npz file, fully read (so a bad CRC fails here, naming the file).

    `keys`: entries that must be present (checked at once; a later lookup of a missing key
    fails the same way).
    """
    with reading(path, "array file"):
        with np.load(path, allow_pickle=False) as data:
            contents = Contents(path, {key: data[key] for key in data.files})
    for key in keys:
        contents[key]  # raises MissingKeyError, naming the file and the key
    return contents


def save_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def load_json(path: str | os.PathLike):
    with reading(path, "JSON file"):
        return json.loads(Path(path).read_text())


def save_torch(path: str | os.PathLike, obj) -> None:
    """torch.save, atomically."""
    import torch

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, **kwargs):
    """torch.load (weights only, onto the CPU unless told otherwise), naming a damaged file."""
    import torch

    kwargs.setdefault("map_location", "cpu")
    kwargs.setdefault("weights_only", True)
    with reading(path, "checkpoint"):
        return torch.load(path, **kwargs)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

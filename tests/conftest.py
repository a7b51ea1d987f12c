"""Shared fixtures: the Omniglot mirror, its preprocessed arrays, the repository root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests import the `mnk` of this checkout, whichever checkout the venv was installed from.
sys.path.insert(0, str(REPO / "src"))


def mirror_path() -> Path | None:
    candidates = [os.environ.get("OMNIGLOT_MIRROR"), REPO.parent / "shared" / "omniglot"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "MD5SUMS").is_file():
            return Path(candidate).resolve()
    return None


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = mirror_path()
    if path is None:
        pytest.skip("no Omniglot mirror (set OMNIGLOT_MIRROR or put it at ../shared/omniglot)")
    return path


@pytest.fixture(scope="session")
def omniglot(mirror, tmp_path_factory) -> dict:
    """The preprocessed Omniglot arrays, made once per test session from the mirror."""
    from mnk.data.archive import ARCHIVES, download_archive, preprocess

    folder = tmp_path_factory.mktemp("omniglot")
    archives = {name: download_archive(name, folder / f"{name}.zip", source="mirror", mirror=str(mirror))
                for name in ARCHIVES}
    return preprocess(archives, progress=False)

"""Where an Omniglot archive comes from and what it must hash to (no numpy: the config checks
compare a downloaded archive with the source the run names, `stale_archive_problem`).

The official URL comes with the official md5s; a mirror folder with its own `SHA256SUMS` or
`MD5SUMS` (GNU or BSD format). `$OMNIGLOT_MIRROR`, when set, overrides the config.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mnk.data.omniglot import ARCHIVES
from mnk.data.scan import DataError

OFFICIAL_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
# md5 of the official archives (what a download from OFFICIAL_URL gives).
OFFICIAL_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
MIRROR_ENV = "OMNIGLOT_MIRROR"


@dataclass(frozen=True)
class Source:
    """Where an archive comes from: a URL or a mirror file, and its expected digest."""

    location: str
    algorithm: str
    digest: str

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))


_BSD_LINE = re.compile(r"^(?P<algorithm>[A-Za-z0-9-]+) \((?P<name>.+)\) = (?P<digest>[0-9A-Fa-f]+)$")
_CHECKSUM_FILES = (("sha256", "SHA256SUMS"), ("md5", "MD5SUMS"))


def read_checksum_file(path: Path) -> dict[str, str]:
    """Parse a checksum file: GNU lines '<digest>  [*]<file name>' (`sha256sum`) or BSD lines
    'SHA256 (<file name>) = <digest>' (`sha256sum --tag`, macOS `shasum`/`md5`)."""
    return {name: digest for name, (_, digest) in _checksum_entries(path).items()}


def _checksum_entries(path: Path) -> dict[str, tuple[str | None, str]]:
    """{file name: (algorithm named on a BSD line or None, digest)}."""
    entries = {}
    for line in path.read_text().splitlines():
        bsd = _BSD_LINE.match(line.strip())
        if bsd:
            algorithm = bsd["algorithm"].lower().replace("-", "")
            entries[bsd["name"]] = (algorithm, bsd["digest"].lower())
            continue
        parts = line.split()
        if len(parts) == 2:
            entries[parts[1].lstrip("*")] = (None, parts[0].lower())
    return entries


def effective_source(source: str, mirror: str | None, environ=None) -> tuple[str, str | None]:
    """(source, mirror) after `$OMNIGLOT_MIRROR`, which, when set, overrides the config."""
    env_mirror = (os.environ if environ is None else environ).get(MIRROR_ENV)
    return ("mirror", env_mirror) if env_mirror else (source, mirror)


def resolve_source(name: str, source: str = "official", mirror: str | None = None, environ=None) -> Source:
    """The source of archive `name` (`$OMNIGLOT_MIRROR` of `environ`, default os.environ, first)."""
    if name not in ARCHIVES:
        raise ValueError(f"unknown Omniglot archive {name!r}; expected one of {ARCHIVES}")
    source, mirror = effective_source(source, mirror, environ)
    if source == "official":
        return Source(OFFICIAL_URL.format(name=name), "md5", OFFICIAL_MD5[name])
    if source != "mirror":
        raise ValueError(f"data.source must be 'official' or 'mirror', got {source!r}")
    if not mirror:
        raise ValueError(f"data.source is 'mirror' but no mirror folder is given (data.mirror or ${MIRROR_ENV})")
    folder = Path(mirror)
    if not folder.is_dir():
        raise DataError(f"Omniglot mirror folder {folder} does not exist")
    file_name = f"{name}.zip"
    for algorithm, sums_name in _CHECKSUM_FILES:
        sums_path = folder / sums_name
        if sums_path.is_file():
            entries = _checksum_entries(sums_path)
            if file_name in entries:
                tagged, digest = entries[file_name]
                return Source(str(folder / file_name), tagged or algorithm, digest)
    raise DataError(
        f"mirror {folder} has no checksum for {file_name}: expected a line '<digest>  {file_name}' or "
        f"'SHA256 ({file_name}) = <digest>' in {' or '.join(n for _, n in _CHECKSUM_FILES)}"
    )


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stale_archive_problem(path: Path, name: str, mirror: str, key: str) -> str | None:
    """Why a downloaded archive is not the one of the mirror folder the run fetches from
    (`mirror`, named by the config `key`), or None.

    The archive must match that mirror's checksum or the official md5 (the genuine archive,
    from wherever). An archive from another mirror would otherwise be kept, and preprocessed
    again and again, whatever the mirror now says."""
    if not Path(path).is_file():
        return None
    try:
        expected = resolve_source(name, "mirror", mirror, environ={})
    except DataError:  # no mirror folder or no checksum: the download says so when it runs
        return None
    actual = file_digest(path, expected.algorithm)
    if actual == expected.digest or file_digest(path, "md5") == OFFICIAL_MD5[name]:
        return None
    return (f"{path} is not the archive of the mirror {mirror} ({key}): its {expected.algorithm} is {actual}, "
            f"the mirror's checksum {expected.digest}; it was fetched from another source. To fetch it from "
            f"this mirror: `rm {path} && snakemake --cores all --forcerun {path}` (which also rebuilds what was "
            "made from it)")

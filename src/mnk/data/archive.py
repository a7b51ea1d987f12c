"""Omniglot: download (official URL or a local mirror), safe extraction, preprocessing.

The preprocessed file holds every Omniglot image once, as 28x28 float32 arrays with
strokes = 1 and background = 0, plus alphabet / character / drawer ids and the official
background/evaluation split. Padding and standardisation are per-experiment choices and are
applied downstream (`mnk.kernels.transform`), so one preprocessed file serves every experiment.
The original 105x105 images are kept beside it (8-bit, strokes 255, about 6 MB compressed),
so that the kernel can resample them with its own filter (`kernel.resample`).

Character order (global character ids 0..1622): the background archive first, then the
evaluation archive; within each, alphabets sorted by name, then character folders sorted
by name. This order defines the original code's split (first 1200 characters train).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import stat
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from mnk.data.omniglot import ARCHIVES, EXPECTED_COUNTS
from mnk.data.options import RESAMPLE_FILTERS
from mnk.data.scan import DataError  # noqa: F401 (the data stage's one error, raised here too)
from mnk.data.sources import (MIRROR_ENV, OFFICIAL_MD5, OFFICIAL_URL, Source, file_digest,  # noqa: F401
                              read_checksum_file, resolve_source)
from mnk.infra.io import atomic_path, save_npz

log = logging.getLogger("mnk.data.archive")

# --------------------------------------------------------------------------- download


OFFLINE_HINT = (f"to work without internet, use a local copy of Omniglot: data.source: mirror and "
                f"data.mirror: <folder> in the config, or ${MIRROR_ENV}=<folder> (the folder holds "
                f"{' and '.join(a + '.zip' for a in ARCHIVES)} and a SHA256SUMS or MD5SUMS)")


def _is_permanent(error: BaseException) -> bool:
    """Errors that a retry cannot cure: no DNS, no route, refused, or an HTTP 4xx (but 429)."""
    if isinstance(error, urllib.error.HTTPError):
        return 400 <= error.code < 500 and error.code != 429
    reason = getattr(error, "reason", error)
    return isinstance(reason, (socket.gaierror, ConnectionRefusedError)) or (
        isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)
    )


def _fetch_url(url: str, target: Path, retries: int, backoff: float) -> None:
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
            return
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            if _is_permanent(error):
                offline = "" if isinstance(error, urllib.error.HTTPError) else " (this machine seems offline)"
                raise DataError(f"could not download {url}: {error}{offline}; {OFFLINE_HINT}") from error
            if attempt == retries:
                raise DataError(f"could not download {url} after {retries} tries: {error}; {OFFLINE_HINT}") from error
            wait = backoff * 2 ** (attempt - 1)
            log.warning("download of %s failed (%s); retry %d/%d in %.0f s", url, error, attempt, retries, wait)
            time.sleep(wait)


def _check_zip(path: Path, name: str, src: Source) -> None:
    """Read every member (CRCs included): a copy can match its checksum and still be damaged,
    when the checksum file was made from the damaged copy."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad_member = zf.testzip()
        problem = None if bad_member is None else f"member {bad_member!r} fails its CRC check"
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        problem = f"not a readable zip archive: {error}"
    if problem is None:
        return
    if src.is_url:
        cure = f"the download from {src.location} is damaged: download again"
    else:
        cure = (f"the mirror's copy {src.location} is itself damaged (it matches its {src.algorithm} checksum, "
                "so the checksum file was made from the damaged copy); downloading again from this mirror "
                "cannot help: replace the archive and its checksum in the mirror from a good copy")
    raise DataError(f"{name}.zip: {problem}; {cure}")


def download_archive(
    name: str,
    destination: str | os.PathLike,
    *,
    source: str = "official",
    mirror: str | None = None,
    retries: int = 4,
    backoff: float = 5.0,
) -> Path:
    """Fetch archive `name` to `destination`, verified; nothing half-written is left behind."""
    src = resolve_source(name, source, mirror)
    destination = Path(destination)
    log.info("fetching %s from %s (%s %s)", name, src.location, src.algorithm, src.digest)
    with atomic_path(destination, suffix=".zip") as tmp:
        if src.is_url:
            _fetch_url(src.location, tmp, retries, backoff)
        else:
            shutil.copyfile(src.location, tmp)
        actual = file_digest(tmp, src.algorithm)
        if actual != src.digest:
            size = tmp.stat().st_size
            cure = "download again" if src.is_url else "replace the mirror's copy from a good one"
            raise DataError(
                f"checksum mismatch for {name}.zip from {src.location}: expected {src.algorithm} "
                f"{src.digest}, got {actual} ({size} bytes; truncated or corrupt copy: {cure}). "
                f"Nothing was written to {destination}."
            )
        _check_zip(tmp, name, src)
    return destination


# ------------------------------------------------------------------ safe extraction


def _check_member(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    """Reject members that could land outside the target folder (zip-slip) or are links."""
    name = info.filename
    path = PurePosixPath(name)
    mode = info.external_attr >> 16
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or path.is_absolute():
        raise DataError(f"{archive.name}: member {name!r} has an absolute path; refusing to extract")
    if ".." in path.parts or "\\" in name:
        raise DataError(f"{archive.name}: member {name!r} escapes the target folder; refusing to extract")
    if stat.S_ISLNK(mode):
        raise DataError(f"{archive.name}: member {name!r} is a symbolic link; refusing to extract")
    return path


def iter_archive_pngs(archive: str | os.PathLike):
    """Yield (alphabet, character, file name, png bytes) for every image in an archive.

    Reads members in memory after validating every member name, so nothing is ever
    written to disk, let alone outside a target folder.
    """
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as error:
        raise DataError(
            f"{archive} is not a valid zip archive ({error}); delete it and rerun (`snakemake --cores all "
            f"--forcerun {archive}`); if it came from a mirror, the mirror's copy is damaged: replace it"
        ) from error
    with zf:
        members = [(_check_member(info, archive), info) for info in zf.infolist()]
        for path, info in sorted(members, key=lambda item: item[0].parts):
            if info.is_dir() or path.suffix.lower() != ".png":
                continue
            if len(path.parts) != 4:
                raise DataError(f"{archive.name}: unexpected member layout {info.filename!r}")
            _, alphabet, character, file_name = path.parts
            try:
                payload = zf.read(info)
            except (zipfile.BadZipFile, EOFError, OSError) as error:
                raise DataError(f"{archive.name}: member {info.filename!r} is corrupt ({error})") from error
            yield alphabet, character, file_name, payload


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract all members under `target`, after checking that none escapes it."""
    archive, target = Path(archive), Path(target).resolve()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = _check_member(info, archive)
            destination = (target / path).resolve()
            if target not in destination.parents and destination != target:
                raise DataError(f"{archive.name}: member {info.filename!r} escapes {target}")
        zf.extractall(target)
    return target


# -------------------------------------------------------------------- preprocessing


def image_to_array(png: bytes, size: int = 28, resample: str = "lanczos", name: str = "<bytes>") -> np.ndarray:
    """105x105 1-bit PNG -> (size, size) float32, strokes 1, background 0.

    Converted to 8-bit grey, resized with the named PIL filter (default Lanczos, which
    antialiases; the original code used PIL `resize` then `/255`), divided by 255 and
    inverted so that the background is exactly zero (the CNTK pads with zeros). An
    unreadable image (or a decompression bomb) is a DataError naming `name`.
    """
    return _resized(_grey(png, name), size, resample)


def _grey(png: bytes, name: str):
    from mnk.data.folder import open_image

    return open_image(png, name).convert("L")


def _resized(image, size: int, resample: str) -> np.ndarray:
    from PIL import Image

    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"resample must be one of {RESAMPLE_FILTERS}, got {resample!r}")
    image = image.resize((size, size), getattr(Image.Resampling, resample.upper()))
    return 1.0 - np.asarray(image, dtype=np.float32) / 255.0


def original_to_array(image) -> np.ndarray:
    """The decoded grey image at its own resolution as uint8, inverted: strokes 255, background 0."""
    return 255 - np.asarray(image, dtype=np.uint8)


def preprocess(archives: dict[str, str | os.PathLike], *, size: int = 28, resample: str = "lanczos",
               progress: bool = True, originals: bool = False) -> dict[str, np.ndarray]:
    """Both archives -> arrays: images, alphabet, character, drawer, split and names; with
    `originals`, also the 105x105 images (`original_to_array`) under "originals"."""
    from tqdm import tqdm

    images, alphabet_ids, character_ids, drawers, splits, kept = [], [], [], [], [], []
    alphabet_names: list[str] = []
    character_names: list[str] = []
    for split_id, name in enumerate(ARCHIVES):
        path = Path(archives[name])
        seen_alphabets, seen_characters, count = set(), set(), 0
        expected = EXPECTED_COUNTS[name]
        for alphabet, character, file_name, payload in tqdm(
            iter_archive_pngs(path), total=expected["images"], desc=name, disable=not progress
        ):
            key = f"{name}/{alphabet}/{character}"
            if alphabet not in seen_alphabets:
                seen_alphabets.add(alphabet)
                alphabet_names.append(f"{name}/{alphabet}")
            if key not in seen_characters:
                seen_characters.add(key)
                character_names.append(key)
            match = re.fullmatch(r"\d+_(\d+)\.png", file_name)
            if not match:
                raise DataError(f"{path.name}: unexpected image name {file_name!r} in {key}")
            grey = _grey(payload, f"{path}: member {key}/{file_name}")
            images.append(_resized(grey, size, resample))
            if originals:
                kept.append(original_to_array(grey))
            alphabet_ids.append(len(alphabet_names) - 1)
            character_ids.append(len(character_names) - 1)
            drawers.append(int(match.group(1)))
            splits.append(split_id)
            count += 1
        found = {"alphabets": len(seen_alphabets), "characters": len(seen_characters), "images": count}
        if found != expected:
            raise DataError(
                f"{path.name}: expected {expected}, found {found}; the archive is incomplete or not the "
                f"official Omniglot. Point $OMNIGLOT_MIRROR (or data.source/data.mirror) at a good copy, then "
                f"fetch it again: `rm {path} && snakemake --cores all --forcerun {path}`"
            )
        log.info("%s: %s", name, found)
    arrays = {"originals": np.stack(kept)} if originals else {}
    return {
        **arrays,
        "images": np.stack(images).astype(np.float32),
        "alphabet": np.asarray(alphabet_ids, dtype=np.int16),
        "character": np.asarray(character_ids, dtype=np.int16),
        "drawer": np.asarray(drawers, dtype=np.int8),
        "split": np.asarray(splits, dtype=np.int8),
        "alphabet_names": np.asarray(alphabet_names),
        "character_names": np.asarray(character_names),
    }


def write_preprocessed(path: str | os.PathLike, data: dict[str, np.ndarray], originals_path=None) -> None:
    """The arrays to `path`; their "originals" (if any) to `originals_path`, which only the
    image pools read (mnk.tasks), so that the other jobs do not load them."""
    data = dict(data)
    originals = data.pop("originals", None)
    if originals is not None:
        if originals_path is None:
            raise ValueError("the preprocessed data hold originals but no path was given for them")
        save_npz(originals_path, originals=originals)
    save_npz(path, **data)

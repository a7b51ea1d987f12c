"""Download, checksum, safe extraction and preprocessing of Omniglot."""

from __future__ import annotations

import errno
import hashlib
import io
import shutil
import socket
import zipfile

import numpy as np
import pytest

from mnk.data import archive as data
from mnk.data.archive import DataError


@pytest.fixture(autouse=True)
def no_mirror_override(monkeypatch):
    """These tests pass their mirror explicitly; $OMNIGLOT_MIRROR (CI sets it) would override it."""
    monkeypatch.delenv("OMNIGLOT_MIRROR", raising=False)


def _copy_mirror(mirror, tmp_path, corrupt=None, truncate=None):
    """A writable copy of the mirror, optionally with a corrupted or truncated archive."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in ("MD5SUMS", "SHA256SUMS", "images_background.zip", "images_evaluation.zip"):
        shutil.copyfile(mirror / name, folder / name)
        (folder / name).chmod(0o644)
    if corrupt:
        raw = bytearray((folder / corrupt).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (folder / corrupt).write_bytes(bytes(raw))
    if truncate:
        raw = (folder / truncate).read_bytes()
        (folder / truncate).write_bytes(raw[: len(raw) // 3])
    return folder


def test_mirror_download_verifies_and_writes(mirror, tmp_path):
    out = data.download_archive("images_evaluation", tmp_path / "out" / "e.zip", source="mirror", mirror=str(mirror))
    expected = (mirror / "SHA256SUMS").read_text().split()[2]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == expected
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_checksum_failure_names_file_and_both_sums_and_leaves_nothing(mirror, tmp_path, damage):
    folder = _copy_mirror(mirror, tmp_path, **{damage: "images_evaluation.zip"})
    target = tmp_path / "out" / "images_evaluation.zip"
    with pytest.raises(DataError) as error:
        data.download_archive("images_evaluation", target, source="mirror", mirror=str(folder))
    message = str(error.value)
    expected = data.read_checksum_file(folder / "SHA256SUMS")["images_evaluation.zip"]
    actual = hashlib.sha256((folder / "images_evaluation.zip").read_bytes()).hexdigest()
    assert "images_evaluation.zip" in message and expected in message and actual in message
    assert list((tmp_path / "out").iterdir()) == []  # no temp file, no half-written archive


def test_env_mirror_overrides_config(mirror, monkeypatch):
    monkeypatch.setenv("OMNIGLOT_MIRROR", str(mirror))
    src = data.resolve_source("images_background", source="official")
    assert src.location == str(mirror / "images_background.zip") and src.algorithm == "sha256"
    monkeypatch.delenv("OMNIGLOT_MIRROR")
    src = data.resolve_source("images_background", source="official")
    assert src.is_url and src.digest == "68d2efa1b9178cc56df9314c21c6e718"


def test_official_download_retries_then_fails_cleanly(tmp_path, monkeypatch):
    monkeypatch.delenv("OMNIGLOT_MIRROR", raising=False)
    calls = []

    def refuse(url, timeout):
        calls.append(url)
        raise data.urllib.error.URLError("network unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="after 3 tries"):
        data.download_archive("images_background", tmp_path / "b.zip", retries=3, backoff=0)
    assert len(calls) == 3 and not (tmp_path / "b.zip").exists()
    assert list(tmp_path.iterdir()) == []


def test_mirror_without_checksums_is_rejected(tmp_path):
    with pytest.raises(DataError, match="no checksum"):
        data.resolve_source("images_background", source="mirror", mirror=str(tmp_path))


def _zip_with(member: str, tmp_path, symlink=False):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(member)
        if symlink:
            info.external_attr = (0o120777 << 16)
        zf.writestr(info, b"payload")
    return path


@pytest.mark.parametrize("member,symlink,reason", [
    ("../escape.png", False, "escapes"),
    ("images_x/a/../../../escape.png", False, "escapes"),
    ("/abs/a/b/escape.png", False, "absolute"),
    ("images_x/alpha/char/link.png", True, "symbolic link"),
])
def test_unsafe_members_are_rejected(tmp_path, member, symlink, reason):
    archive = _zip_with(member, tmp_path, symlink)
    target = tmp_path / "target"
    with pytest.raises(DataError, match=reason):
        list(data.iter_archive_pngs(archive))
    with pytest.raises(DataError, match=reason):
        data.extract_archive(archive, target)
    assert not (tmp_path / "escape.png").exists() and not (tmp_path.parent / "escape.png").exists()


def test_not_a_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "images_background.zip"
    bad.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DataError, match="not a valid zip"):
        list(data.iter_archive_pngs(bad))


def test_incomplete_archive_fails_counts(mirror, tmp_path):
    """An archive missing one character fails loudly with both counts."""
    source = zipfile.ZipFile(mirror / "images_evaluation.zip")
    partial = tmp_path / "images_evaluation.zip"
    with zipfile.ZipFile(partial, "w") as out:
        for info in source.infolist():
            if "/character01/" not in info.filename or "Angelic" not in info.filename:
                out.writestr(info, source.read(info))
    archives = {"images_background": mirror / "images_background.zip", "images_evaluation": partial}
    with pytest.raises(DataError, match="expected .*'characters': 659.*found .*'characters': 658") as error:
        data.preprocess(archives, progress=False)
    assert f"`rm {partial} && snakemake --cores all --forcerun {partial}`" in str(error.value)  # the way out


def test_preprocessed_counts_and_ids(omniglot):
    images = omniglot["images"]
    assert images.shape == (32460, 28, 28) and images.dtype == np.float32
    assert (np.bincount(omniglot["split"]) == [19280, 13180]).all()
    assert len(np.unique(omniglot["character"][omniglot["split"] == 0])) == 964
    assert len(np.unique(omniglot["character"][omniglot["split"] == 1])) == 659
    assert (np.bincount(omniglot["character"]) == 20).all()
    assert set(np.unique(omniglot["drawer"])) == set(range(1, 21))
    # Background is zero, strokes positive, values in [0, 1].
    assert images.min() >= 0 and images.max() <= 1
    assert np.median(images) == 0 and images.mean() < 0.2
    # Documented order: background archive first, alphabets sorted by name.
    names = list(omniglot["alphabet_names"])
    assert names[0] == "images_background/Alphabet_of_the_Magi"
    assert names[:30] == sorted(names[:30]) and names[30:] == sorted(names[30:])


def test_image_to_array_matches_pil_lanczos():
    from PIL import Image

    square = np.ones((105, 105), dtype=bool)
    square[40:60, 40:60] = False  # a black stroke block on white
    buffer = io.BytesIO()
    Image.fromarray(square).save(buffer, format="PNG")
    out = data.image_to_array(buffer.getvalue())
    expected = 1 - np.asarray(Image.fromarray(square.astype(np.uint8) * 255).resize((28, 28), Image.LANCZOS)) / 255
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0, 0] == 0 and out[13, 13] == pytest.approx(1, abs=0.02)


def test_originals_are_kept_inverted_at_full_size_in_their_own_file(tmp_path):
    from PIL import Image

    square = np.ones((105, 105), dtype=bool)
    square[40:60, 30:70] = False
    buffer = io.BytesIO()
    Image.fromarray(square).save(buffer, format="PNG")
    original = data.original_to_array(data._grey(buffer.getvalue(), "square.png"))
    assert original.dtype == np.uint8 and original.shape == (105, 105)
    np.testing.assert_array_equal(original, np.where(square, 0, 255))
    arrays = {"images": np.zeros((1, 28, 28), np.float32), "originals": original[None]}
    data.write_preprocessed(tmp_path / "d.npz", arrays, tmp_path / "o.npz")
    assert set(np.load(tmp_path / "d.npz").files) == {"images"} and "originals" in arrays  # the caller's dict kept
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")["originals"], original[None])
    with pytest.raises(ValueError, match="no path was given"):
        data.write_preprocessed(tmp_path / "d.npz", arrays)


# ------------------------------------------------ offline, checksum formats, bad mirror copies


@pytest.mark.parametrize("reason", [
    socket.gaierror(-3, "Temporary failure in name resolution"),
    ConnectionRefusedError(111, "Connection refused"),
    OSError(errno.ENETUNREACH, "Network is unreachable"),
])
def test_offline_official_download_fails_at_once_and_points_at_the_mirror(tmp_path, monkeypatch, reason):
    calls = []

    def offline(url, timeout):
        calls.append(url)
        raise data.urllib.error.URLError(reason)

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    monkeypatch.setattr(data.time, "sleep", lambda s: pytest.fail("an offline machine must not be retried"))
    with pytest.raises(DataError) as error:
        data.download_archive("images_background", tmp_path / "b.zip", retries=4, backoff=30)
    message = str(error.value)
    assert len(calls) == 1
    assert "OMNIGLOT_MIRROR" in message and "data.source: mirror" in message
    assert list(tmp_path.iterdir()) == []


def test_http_not_found_is_not_retried(tmp_path, monkeypatch):
    calls = []

    def not_found(url, timeout):
        calls.append(url)
        raise data.urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    monkeypatch.setattr(data.urllib.request, "urlopen", not_found)
    with pytest.raises(DataError, match="404"):
        data.download_archive("images_background", tmp_path / "b.zip", retries=4, backoff=0)
    assert len(calls) == 1


@pytest.mark.parametrize("sums_name,algorithm", [("SHA256SUMS", "sha256"), ("MD5SUMS", "md5")])
def test_bsd_format_checksum_files_are_accepted(mirror, tmp_path, sums_name, algorithm):
    """`sha256sum --tag` / macOS `shasum -a 256 --tag` / `md5` write 'SHA256 (file) = hex'."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        (folder / name).symlink_to(mirror / name)
    lines = [f"{algorithm.upper()} ({name}) = {data.file_digest(mirror / name, algorithm)}"
             for name in ("images_background.zip", "images_evaluation.zip")]
    (folder / sums_name).write_text("\n".join(lines) + "\n")
    src = data.resolve_source("images_evaluation", source="mirror", mirror=str(folder))
    assert (src.algorithm, src.digest) == (algorithm, data.file_digest(mirror / "images_evaluation.zip", algorithm))
    out = data.download_archive("images_evaluation", tmp_path / "out.zip", source="mirror", mirror=str(folder))
    assert out.read_bytes() == (mirror / "images_evaluation.zip").read_bytes()


def test_truncated_mirror_copy_with_matching_checksum_blames_the_mirror(mirror, tmp_path):
    """The checksum file was regenerated from a truncated copy: the digest matches, the zip is
    bad, and downloading again from that mirror cannot help: say so, write nothing."""
    folder = _copy_mirror(mirror, tmp_path, truncate="images_evaluation.zip")
    digest = hashlib.sha256((folder / "images_evaluation.zip").read_bytes()).hexdigest()
    (folder / "SHA256SUMS").write_text(f"{digest}  images_evaluation.zip\n")
    target = tmp_path / "out" / "images_evaluation.zip"
    with pytest.raises(DataError) as error:
        data.download_archive("images_evaluation", target, source="mirror", mirror=str(folder))
    message = str(error.value)
    assert "mirror's copy" in message and str(folder / "images_evaluation.zip") in message
    assert "cannot help" in message
    assert list((tmp_path / "out").iterdir()) == []

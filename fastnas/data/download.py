"""Fetching and unpacking dataset archives: checksummed, atomic, and safe against hostile tar files.

Three guarantees, each for a failure users actually hit:

- **Atomic**: the archive streams into a temporary file in the destination folder and is renamed into
  place only after its MD5 matched, so an interrupted or corrupt download never leaves a file that a
  later run would take for the real one.
- **Checked**: a mismatch raises :class:`ChecksumError` and removes the partial file.
- **Safe**: every tar member is checked *before* anything is written; absolute paths, ``..`` escapes,
  links and device files are refused (dataset archives contain only regular files and folders). The
  members are unpacked into a temporary folder first and moved into place afterwards, so a failed
  extraction leaves no half-filled dataset folder behind.

Only the standard library is used (urllib, hashlib, tarfile).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Union

__all__ = ["ChecksumError", "md5sum", "download_url", "safe_extract", "download_and_extract"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
_CHUNK = 1 << 20  # 1 MiB: large enough that the Python loop costs nothing next to the network


class ChecksumError(RuntimeError):
    """A file's MD5 does not match the published checksum."""


def md5sum(path: PathLike) -> str:
    """Hex MD5 digest of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_url(url: str, dest: PathLike, md5: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, verifying ``md5``; returns ``dest``.

    The bytes go to a temporary file beside ``dest`` (same filesystem, so the final ``os.replace`` is
    atomic); the digest is computed while streaming. On a checksum mismatch the temporary file is
    removed and :class:`ChecksumError` is raised; network errors propagate as ``urllib.error.URLError``
    / ``OSError`` with the temporary file removed too. ``file://`` URLs work (used by the tests).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()
        logger.info("downloading %s to %s", url, dest)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
        got = h.hexdigest()
        if got != md5.lower():
            raise ChecksumError(
                f"MD5 mismatch for {url}: expected {md5}, got {got}. The download was corrupt or the "
                f"server returned something else (a proxy error page?); nothing was written to {dest}."
            )
        os.replace(tmp, dest)
    finally:
        # Runs on success too, where the rename already moved the file away.
        if tmp.exists():
            tmp.unlink()
    return dest


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    """Raises ValueError for a member that could write outside ``root`` or is not a plain file/folder."""
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise ValueError(
            f"refusing to extract {member.name!r}: it is a {kind}; dataset archives contain only regular "
            "files and folders"
        )
    target = (root / member.name).resolve()
    if os.path.isabs(member.name) or not target.is_relative_to(root):
        raise ValueError(f"refusing to extract {member.name!r}: its path escapes the destination {root}")


def _move_tree(src: Path, dst: Path) -> None:
    """Moves ``src`` onto ``dst``; where ``dst`` is an existing folder, merges file by file (each move
    an atomic rename, overwriting a stale file of the same name)."""
    if not dst.exists():
        os.replace(src, dst)
        return
    if src.is_dir() and dst.is_dir():
        for child in src.iterdir():
            _move_tree(child, dst / child.name)
    else:
        os.replace(src, dst)


def safe_extract(archive: PathLike, root: PathLike) -> None:
    """Extracts a (possibly gzipped) tar ``archive`` into ``root``.

    All members are validated first (see :func:`_check_member`), so a hostile archive writes nothing.
    Extraction goes to a temporary folder inside ``root`` and is moved into place afterwards.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            _check_member(m, root)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
        try:
            # The 'data' filter (Python >= 3.11.4 / 3.12) repeats the same checks inside tarfile:
            # defence in depth, and it silences the 3.12+ deprecation warning for unfiltered extraction.
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **kw)
            for child in tmp.iterdir():
                _move_tree(child, root / child.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def download_and_extract(url: str, root: PathLike, filename: str, md5: str, timeout: float = 60.0) -> Path:
    """Makes sure ``root/filename`` exists with the right MD5 (downloading it if needed), then extracts it
    into ``root``. Returns the archive path.

    An archive already in ``root`` is reused when its checksum matches (so users can place it there by
    hand) and replaced by a fresh download when it does not.
    """
    root = Path(root)
    archive = root / filename
    if archive.exists() and md5sum(archive) == md5.lower():
        logger.info("using existing archive %s", archive)
    else:
        download_url(url, archive, md5, timeout=timeout)
    safe_extract(archive, root)
    return archive

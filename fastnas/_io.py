"""Atomic file writes: a reader, or a resumed run, sees the previous complete file or the new one, never
a torn one (temp file in the same folder, fsync, ``os.replace``)."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

__all__ = ["atomic_write_bytes", "atomic_write_text", "try_lock", "PathLike"]

PathLike = Union[str, os.PathLike]


def _new_file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give: the replaced file's, else 0o666 minus the umask
    (``mkstemp`` creates 0o600, which would leave a group-shared run's genotype.txt unreadable)."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where the OS tells (Linux: /proc/self/status);
    elsewhere set and restored at once (``os.umask`` is the only portable reader)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _make_parent(path: Path) -> None:
    """Creates the folders above ``path``; a file where a folder belongs is named (mkdir's own
    FileExistsError would read as if ``path`` itself existed)."""
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder")
            break
    path.parent.mkdir(parents=True, exist_ok=True)


def atomic_write_bytes(path: PathLike, data: bytes, exclusive: bool = False) -> Path:
    """Writes ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    exclusive: only if ``path`` does not exist (FileExistsError otherwise, even when another process
    creates it meanwhile: the temp file is hard-linked into place, which fails on an existing name)."""
    path = Path(path)
    _make_parent(path)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str, exclusive: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), exclusive)


def try_lock(fd: int) -> Optional[bool]:
    """Takes an exclusive ``flock`` on the open file (or folder) ``fd`` without waiting. True: taken (it
    goes when ``fd`` is closed or the process ends, however it ends); False: another open file holds it
    (another process, or another ``open`` of this one); None: this OS or file system has no flock, and
    the caller goes on unlocked."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return False if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
    return True

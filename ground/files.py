"""Files the planner writes and reads: atomic, permission-respecting writes and bounded reads.

* A write goes to a temporary file beside the target, is flushed to disk and renamed over it: a reader
  sees the old file or the whole new one, never half of either. The file gets the mode a plain `open`
  would give it (0666 less the umask), so a cache folder shared by a team stays readable to it.
* A read takes at most `limit + 1` bytes from a regular file (a FIFO, a device or a folder is refused
  before anything is read), so a hostile path cannot hang or exhaust a CI job.
"""
from __future__ import annotations

import os
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ground.errors import PlannerError, printable

_UMASK: list[int] = []
_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """0666 less the process umask (read once: `os.umask` can only be read by setting it)."""
    with _UMASK_LOCK:
        if not _UMASK:
            current = os.umask(0o022)
            os.umask(current)
            _UMASK.append(current)
    return 0o666 & ~_UMASK[0]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def read_bounded(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """At most `limit` bytes of a regular file; PlannerError naming the path otherwise."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise PlannerError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise PlannerError(f"{path}: is a folder, not a {what}") from None
    except OSError as exc:
        raise PlannerError(f"{path}: cannot read {what} ({exc.strerror or type(exc).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PlannerError(f"{path}: not a regular file; a {what} must be one")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise PlannerError(f"{path}: larger than {limit} bytes; not a {what}")
    return b"".join(chunks)


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before any work, an output path that cannot be written: create its missing parent
    folders, and check that the folder is writable and the path is not a folder itself."""
    try:
        return _check_writable(Path(path), what)
    except OSError as exc:   # a name too long, a component that is a file, ...
        raise PlannerError(f"{what} {printable(path, 80)}: cannot write there ({exc.strerror or type(exc).__name__})") from None


def _check_writable(path: Path, what: str) -> Path:
    if path.is_dir():
        raise PlannerError(f"{what} {path}: is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlannerError(f"{what} {path}: cannot create folder {parent} ({exc.strerror or type(exc).__name__})") from None
    if not parent.is_dir():
        raise PlannerError(f"{what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PlannerError(f"{what} {path}: folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise PlannerError(f"{what} {path}: file exists and is not writable")
    return path

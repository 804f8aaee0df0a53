"""Small, careful file reads shared by the sources: bounded size, and every failure mapped to a reason."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from exporter.errors import (
    SourceMissing,
    SourceNotAFile,
    SourcePermissionError,
    SourceReadError,
    SourceTooLarge,
)

DEFAULT_LIMIT_BYTES = 16 << 20


def read_bounded(path: Path, *, source: str, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> bytes:
    """Read a whole regular file of at most `limit_bytes`, or raise a SourceError saying why not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SourceMissing(source, f"{path} does not exist") from None
    except PermissionError:
        raise SourcePermissionError(source, f"{path} is not readable") from None
    except IsADirectoryError:
        raise SourceNotAFile(source, f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise SourceReadError(source, f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not _is_regular(info.st_mode):
            raise SourceNotAFile(source, f"{path} is not a regular file")
        if info.st_size > limit_bytes:
            raise SourceTooLarge(source, f"{path} is {info.st_size} bytes, over the {limit_bytes}-byte bound")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            total += len(chunk)
            if total > limit_bytes:
                raise SourceTooLarge(source, f"{path} grew past the {limit_bytes}-byte bound while read")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise SourceNotAFile(source, f"{path} is a directory, not a file") from None
        raise SourceReadError(source, f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def present(path: Path) -> bool:
    """Something is there: it exists, or it cannot be told (inside a directory this process may not search,
    as the kubelet's 0750 one for another user). Unreadable is not absent: the read then says why."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def read_sysfs_text(path: str | Path) -> str | None:
    """A small sysfs attribute as text, or None when it is absent or unreadable (normal in sysfs).

    Plain os.open/os.read on purpose: discovery reads thousands of these per refresh, and the io and
    pathlib layers would cost more than the system calls.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def read_sysfs_int(path: str | Path) -> int | None:
    text = read_sysfs_text(path)
    if text is None:
        return None
    try:
        return int(text.strip(), 0)
    except ValueError:
        return None


def list_dir(directory: str | Path) -> list[str]:
    """Entry names of a directory; [] when it is absent or unreadable."""
    try:
        return os.listdir(directory)
    except OSError:
        return []


def list_source_dir(directory: Path, *, source: str) -> list[str]:
    """Entry names of a directory a source reads: absent is SourceMissing, unreadable SourceReadError."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        raise SourceMissing(source, f"{directory} does not exist") from None
    except OSError as exc:
        raise SourceReadError(source, f"cannot list {directory}: {exc.strerror}") from None


def list_prefixed_ids(directory: str | Path, prefix: str) -> list[int]:
    """Numeric suffixes of entries named `<prefix><N>` in a directory, sorted; [] when it is absent."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    suffixes = [name[len(prefix) :] for name in names if name.startswith(prefix)]
    return sorted(int(suffix) for suffix in suffixes if suffix.isascii() and suffix.isdigit())

"""What makes the agent refresh: one coalescing trigger, fed by file events, udev events and a timer.

* inotify on directories, not files: the kubelet replaces its state files by rename, so a watch on the
  file's inode would go quiet after the first update. Events are filtered by file name.
* pyudev's monitor for PCI and network devices appearing or leaving, only when reading the real /sys.
* a periodic resync, the only timer: between events nothing wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")


class Trigger:
    """A coalescing trigger: any number of `fire()` calls before the refresher wakes become one refresh. An
    urgent fire (a pod newly bound to the node) ends the debounce at once."""

    def __init__(self) -> None:
        self._fired = asyncio.Event()
        self._urgent = asyncio.Event()
        self.reasons: set[str] = set()

    def fire(self, reason: str, *, urgent: bool = False) -> None:
        self.reasons.add(reason)
        self._fired.set()
        if urgent:
            self._urgent.set()

    async def next(self, debounce_seconds: float = 0.0) -> set[str]:
        """The reasons of the next refresh: once something fired, up to `debounce_seconds` more for a burst of
        events to gather, unless an urgent one comes."""
        await self._fired.wait()
        if debounce_seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), debounce_seconds)
        self._fired.clear()
        self._urgent.clear()
        reasons, self.reasons = self.reasons, set()
        return reasons


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchSpec:
    """A directory to watch, and the entry names in it whose change should trigger a refresh
    (None: any entry, e.g. the pod log directory where every pod has its own subdirectory)."""

    directory: Path
    names: frozenset[str] | None
    reason: str


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class DirectoryWatcher:
    """inotify over a few directories, through libc (the standard library has no binding).

    A directory that does not exist yet is watched for from its parent, and picked up when created.
    """

    def __init__(self, specs: Iterable[WatchSpec], trigger: Trigger) -> None:
        self._libc = _Libc()
        self._specs = list(specs)
        self._trigger = trigger
        self._fd = self._libc.init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        self._watches: dict[int, Path] = {}
        self._parents: dict[int, Path] = {}
        self.arm()

    def arm(self) -> bool:
        """(Re)establish a watch on every directory; for one that does not exist yet, on its nearest existing
        parent (unless that is watched already), so that its creation re-arms. True when a directory we
        want came into view (what it holds may have been written before its watch existed)."""
        added = False
        for spec in self._specs:
            if spec.directory not in self._watches.values():
                added = self._add(spec.directory, self._watches) or added
        watched = set(self._watches.values()) | set(self._parents.values())
        for spec in self._specs:
            if spec.directory in watched:
                continue
            parent = spec.directory.parent
            while parent != parent.parent and not parent.is_dir():
                parent = parent.parent
            if parent not in watched and self._add(parent, self._parents):
                watched.add(parent)
        return added

    def _missing(self) -> bool:
        return any(spec.directory not in self._watches.values() for spec in self._specs)

    def _add(self, directory: Path, table: dict[int, Path]) -> bool:
        wd = self._libc.add_watch(self._fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:
            code = ctypes.get_errno()
            if code not in (errno.ENOENT, errno.ENOTDIR):
                log.warning("cannot watch %s: %s", directory, os.strerror(code))
            return False
        table[wd] = directory
        return True

    def fileno(self) -> int:
        return int(self._fd)

    def read_events(self) -> None:
        """Drain the inotify fd and fire the trigger for events that matter. Called when it is readable."""
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        rearm = False
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0").decode(errors="replace")
            offset += _EVENT.size + length
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                self._watches.pop(wd, None)
                self._parents.pop(wd, None)
                rearm = True
                self._trigger.fire("directory-replaced")
                continue
            if wd in self._parents or (mask & (IN_CREATE | IN_MOVED_TO) and self._missing()):
                rearm = True  # something appeared where a directory we want may now exist
            directory = self._watches.get(wd)
            if directory is None:
                continue
            for spec in self._specs:
                if spec.directory == directory and (spec.names is None or name in spec.names):
                    self._trigger.fire(spec.reason)
        if rearm and self.arm():
            self._trigger.fire("directory-created")

    def close(self) -> None:
        os.close(self._fd)


def attach_watcher(loop: asyncio.AbstractEventLoop, watcher: DirectoryWatcher) -> None:
    loop.add_reader(watcher.fileno(), watcher.read_events)


def udev_monitor(trigger: Trigger) -> tuple[int, Callable[[], None]] | None:
    """A pyudev monitor for PCI and network device add/remove: (fd, on_readable), or None when udev
    events cannot be received here (no netlink socket in this sandbox, no libudev)."""
    try:
        import pyudev  # noqa: PLC0415 - libudev is optional at run time

        context = pyudev.Context()
        monitor: Any = pyudev.Monitor.from_netlink(context)
        monitor.filter_by("pci")
        monitor.filter_by("net")
        monitor.start()
    except Exception as exc:  # pyudev raises OSError subclasses and its own errors
        log.info("udev events unavailable (%s); relying on the periodic resync for device changes", exc)
        return None

    def on_readable() -> None:
        while True:
            device = monitor.poll(timeout=0)
            if device is None:
                return
            if device.action in ("add", "remove", "bind", "unbind", "change"):
                trigger.fire(f"udev-{device.subsystem}-{device.action}")

    return int(monitor.fileno()), on_readable


async def resync(trigger: Trigger, *, interval_seconds: float) -> None:
    """Fire a full refresh every interval: the one timer in the process."""
    while True:
        await asyncio.sleep(interval_seconds)
        trigger.fire("resync")

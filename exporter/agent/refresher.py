"""The one owner of the snapshot: waits on the trigger, debounces, builds off the event loop, swaps.

Blocking reads run in a worker thread; the new Snapshot replaces the old one with a single reference
assignment, so a scrape sees either the old or the new, never half of one. Listeners (the NRT publisher)
are told about each new snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from exporter.agent.threads import in_daemon_thread
from exporter.agent.triggers import Trigger
from exporter.errors import SourceError
from exporter.snapshot import Snapshot, SnapshotBuilder
from exporter.views.metrics import RefreshStats

log = logging.getLogger(__name__)

Listener = Callable[[Snapshot, set[str]], Awaitable[None]]


class Refresher:
    def __init__(
        self,
        builder: SnapshotBuilder,
        trigger: Trigger,
        *,
        debounce_seconds: float,
        stats: RefreshStats | None = None,
        stall_seconds: float = 60.0,
    ) -> None:
        self._builder = builder
        self._trigger = trigger
        self._debounce = debounce_seconds
        self.stats = stats or RefreshStats()
        self._stall = stall_seconds
        self.snapshot: Snapshot | None = None
        self.refreshes = 0
        self._busy_since: float | None = None
        self._building = threading.Event()
        self._listeners: list[Listener] = []
        self.first_snapshot = asyncio.Event()
        self.failure: SourceError | None = None  # why there is no snapshot yet (sysfs never readable)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def current(self) -> Snapshot | None:
        return self.snapshot

    @property
    def healthy(self) -> bool:
        """False when a refresh has been running for longer than the stall bound (a hung read)."""
        busy = self._busy_since
        return busy is None or time.monotonic() - busy < self._stall

    @property
    def building(self) -> bool:
        """A build is running in its thread (which outlives a cancelled refresh: a read cannot be interrupted)."""
        return self._building.is_set()

    def _build(self) -> Snapshot:
        try:
            return self._builder.build()
        finally:
            self._building.clear()

    async def refresh_once(self, reasons: set[str]) -> None:
        self._busy_since = time.monotonic()
        started = time.perf_counter()
        try:
            self._building.set()
            snapshot = await in_daemon_thread(self._build, name="refresh")
        except SourceError as exc:
            if self.failure is None or str(exc) != str(self.failure):
                log.error("refresh failed and there is no earlier snapshot to keep: %s", exc)
            self.failure = exc
            return
        finally:
            self._busy_since = None
            self.stats.observe(time.perf_counter() - started)
        self.snapshot = snapshot
        self.failure = None
        self.refreshes += 1
        self.first_snapshot.set()
        for listener in self._listeners:
            await listener(snapshot, reasons)

    async def run(self) -> None:
        await self.refresh_once({"start"})
        while True:
            reasons = await self._trigger.next(self._debounce)
            log.debug("refresh: %s", ", ".join(sorted(reasons)))
            await self.refresh_once(reasons)

"""The exposition text: rendered once per change of what it shows (serve), or once for one snapshot (the CLI
and tests)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import generate_latest

from exporter.kubelet.placement import PlacementView
from exporter.snapshot import Snapshot
from exporter.views.metrics import PROCESS_SECONDS, NrtStats, RefreshStats, SnapshotCollector


class CachedExposition:
    """The exposition text, rendered once per change of what it shows and served as bytes.

    A snapshot is immutable, and refresh and NRT statistics change only when a refresh or a write
    happens, so between those every scrape would render the same text: it is rendered once instead.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        version: Callable[[], object],
        *,
        process: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._version = version
        self._seen: object = object()
        self._body = b""
        # The process's own CPU, memory and file descriptors (`process_*`, as every exporter has them), read
        # from /proc/self at start and then after a scrape has been answered, at most once every
        # PROCESS_SECONDS (`refresh_process`): a scrape itself reads nothing, and no timer wakes an idle agent.
        self._process: CollectorRegistry | None = None
        self._process_body = b""
        self._process_at = float("-inf")
        self._clock = clock
        if process:
            self._process = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=self._process)
            self.refresh_process()

    def body(self) -> bytes:
        version = self._version()
        if version != self._seen:
            self._body = generate_latest(self._registry)
            self._seen = version
        return self._body + self._process_body

    def refresh_process(self) -> None:
        """`process_*` read again where the last reading is PROCESS_SECONDS old (the next scrape serves it)."""
        if self._process is not None and self._clock() - self._process_at >= PROCESS_SECONDS:
            self._process_body = generate_latest(self._process)
            self._process_at = self._clock()


def registry_for(collector: SnapshotCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render_exposition(
    snapshot: Snapshot,
    *,
    refresh: RefreshStats | None = None,
    nrt: NrtStats | None = None,
    placement: PlacementView | None = None,
) -> bytes:
    """The text exposition for one snapshot: what `serve` answers on /metrics for it."""
    collector = SnapshotCollector(lambda: snapshot, refresh=refresh, nrt=nrt, placement=lambda: placement)
    return generate_latest(registry_for(collector))

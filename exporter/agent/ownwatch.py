"""A watch on this node's own NodeResourceTopology object.

A deletion or a foreign edit is repaired at once rather than at the next resync, and a resync needs no
request at all: the writer compares its content with the object as last seen here. The watch lists once
(field selector `metadata.name=<node>`), then resumes from the newest resourceVersion (bookmarks
included); only an expired resourceVersion (410 Gone) or a failure lists again. While the NRT API is not
served (the CRD is absent or being deleted) it retries with backoff, and the writer is told the watch is
not synced, so it falls back to reading the object itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from exporter.errors import ApiError
from exporter.kubeapi import GONE, NRT_COLLECTION, KubeApi

log = logging.getLogger(__name__)
WATCH_TIMEOUT_SECONDS = 300
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0

# Called on the event loop: (the object as the server has it, None when absent; whether the watch is synced).
Observer = Callable[[dict[str, Any] | None, bool], None]


class NrtWatcher:
    def __init__(
        self,
        api: KubeApi,
        *,
        node_name: str,
        observer: Observer,
        watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
    ) -> None:
        self._api = api
        self._node_name = node_name
        self._observer = observer
        self._watch_timeout = watch_timeout_seconds
        self._retry = retry_seconds
        self._retry_max = retry_max_seconds
        self._stopped = threading.Event()
        self.lists = 0
        self.watches = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def deliver(obj: dict[str, Any] | None, synced: bool) -> None:
            if self._stopped.is_set():
                return
            try:
                loop.call_soon_threadsafe(self._observer, obj, synced)
            except RuntimeError:  # the loop closed under a watch still reporting: the agent is stopping
                self._stopped.set()

        threading.Thread(target=self._loop, args=(deliver,), name="nrt-watch", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self, deliver: Observer) -> None:
        selector = f"metadata.name={self._node_name}"
        version = ""
        failures = 0
        while not self._stopped.is_set():
            try:
                if not version:
                    items, version = self._api.list(NRT_COLLECTION, selector)
                    self.lists += 1
                    deliver(dict(items[0]) if items else None, True)
                self.watches += 1
                for kind, obj in self._api.watch(
                    NRT_COLLECTION, selector, version, timeout_seconds=self._watch_timeout
                ):
                    if self._stopped.is_set():
                        return
                    version = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or version)
                    if kind in ("ADDED", "MODIFIED"):
                        deliver(dict(obj), True)
                    elif kind == "DELETED":
                        deliver(None, True)
                failures = 0
            except ApiError as exc:
                version = ""
                if exc.status == GONE:
                    continue
                failures += 1
                delay = min(self._retry * 2 ** min(failures - 1, 10), self._retry_max)
                if failures == 1:
                    log.warning("watch on NodeResourceTopology %s: %s; retrying", self._node_name, exc)
                deliver(None, False)
                self._stopped.wait(delay)

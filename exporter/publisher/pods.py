"""The pods on this node, from a watch filtered by `spec.nodeName`: names and specs for the fingerprint
and the alignment audit, and the UIDs that tell stale kubelet entries apart.

The list-then-watch loop runs in a daemon thread (the client is synchronous); each change fires the
refresh trigger on the event loop. Until the first list succeeds, `synced` is False and callers fall back
to the kubelet's pod log directories.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from exporter.errors import ApiError
from exporter.model import PodRef
from exporter.publisher.api import GONE, KubeApi, pod_ref

log = logging.getLogger(__name__)
WATCH_TIMEOUT_SECONDS = 300
RETRY_SECONDS = 5.0


class PodWatcher:
    def __init__(
        self,
        api: KubeApi,
        *,
        node_name: str,
        on_change: Callable[[], None],
        retry_seconds: float = RETRY_SECONDS,
        watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
    ) -> None:
        self._api = api
        self._node_name = node_name
        self._on_change = on_change
        self._retry = retry_seconds
        self._watch_timeout = watch_timeout_seconds
        self.lists = 0
        self.watches = 0
        self._lock = threading.Lock()
        self._pods: dict[str, PodRef] = {}
        self.synced = False
        self._stopped = threading.Event()

    def pods(self) -> tuple[PodRef, ...]:
        with self._lock:
            return tuple(sorted(self._pods.values(), key=lambda pod: (pod.namespace, pod.name)))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def notify() -> None:
            loop.call_soon_threadsafe(self._on_change)

        threading.Thread(target=self._loop, args=(notify,), name="pod-watch", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self, notify: Callable[[], None]) -> None:
        """List once, then watch from the list's resourceVersion; when the server ends a watch, resume from
        the newest resourceVersion seen (bookmarks included) without listing again. Only an expired
        resourceVersion (410 Gone) or a failure re-lists."""
        version = ""
        while not self._stopped.is_set():
            try:
                if not version:
                    pods, version = self._api.list_pods(self._node_name)
                    self.lists += 1
                    with self._lock:
                        changed = pods != self._pods
                        self._pods = pods
                    self.synced = True
                    if changed:
                        notify()
                self.watches += 1
                for kind, pod in self._api.watch_pods(self._node_name, version, timeout_seconds=self._watch_timeout):
                    if self._stopped.is_set():
                        return
                    version = str(((pod or {}).get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self._apply(kind, pod, notify)
            except ApiError as exc:
                if exc.status == GONE:
                    log.info("pod watch on %s: resourceVersion %s expired; re-listing", self._node_name, version)
                    version = ""
                    continue
                log.warning("pod watch on %s: %s; re-listing in %.0f s", self._node_name, exc, self._retry)
                version = ""
                self._stopped.wait(self._retry)

    def _apply(self, kind: str, pod: object, notify: Callable[[], None]) -> None:
        ref = pod_ref(pod)
        uid = (pod.get("metadata") or {}).get("uid") if isinstance(pod, dict) else None
        with self._lock:
            before = self._pods.get(str(uid)) if uid else None
            if kind == "DELETED" or ref is None:
                if uid:
                    self._pods.pop(str(uid), None)
            else:
                self._pods[ref.uid] = ref
            after = self._pods.get(str(uid)) if uid else None
        if before != after:
            notify()

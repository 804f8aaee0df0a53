"""What the agent watches on the API server, each filtered to this node by `spec.nodeName`:

* the pods on this node: names and specs for the fingerprint, the alignment audit and the DRA claims they
  use, and the UIDs that tell stale kubelet entries apart;
* this node's ResourceSlices (`resource.k8s.io/v1`): the DRA devices and where they are.

Each list-then-watch loop runs in a daemon thread (the client is synchronous); each change fires the
refresh trigger on the event loop. Until the first list succeeds, `synced` is False and callers fall back
(pods: to the kubelet's pod log directories).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Generic, TypeVar

from exporter.errors import ApiCrdMissing, ApiError
from exporter.kubeapi import GONE, KubeApi, pod_ref
from exporter.model import DraClaim, PodRef
from exporter.sources.dra_api import resource_claim

log = logging.getLogger(__name__)
WATCH_TIMEOUT_SECONDS = 300
RETRY_SECONDS = 5.0
ORPHAN_MAX_SECONDS = 60.0  # a claim whose pods are gone, read again at most this far apart
NOT_SERVED_RETRY_SECONDS = 300.0
PODS = "/api/v1/pods"
RESOURCE_SLICES = "/apis/resource.k8s.io/v1/resourceslices"
V = TypeVar("V")


class ListWatcher(Generic[V]):
    """Objects of one collection on this node (`spec.nodeName`), keyed by UID, each kept as `parse(object)`
    (None: dropped). Subclasses name the collection (`what`, `path`) and how an object is kept."""

    what: ClassVar[str]
    path: ClassVar[str]

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
        self._what = self.what
        self._path = self.path
        self._selector = f"spec.nodeName={node_name}"
        self._on_change = on_change
        self._retry = retry_seconds
        self._watch_timeout = watch_timeout_seconds
        self.lists = 0
        self.watches = 0
        self._lock = threading.Lock()
        self._items: dict[str, V] = {}
        self.synced = False
        self.served = True  # False once the API server said it has no such collection (404)
        self.error: str | None = None  # the last failure, until a list succeeds again
        self._stopped = threading.Event()

    def _parse(self, obj: Any) -> V | None:
        raise NotImplementedError

    def values(self) -> list[V]:
        with self._lock:
            return list(self._items.values())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def notify() -> None:
            loop.call_soon_threadsafe(self._on_change)

        threading.Thread(target=self._loop, args=(notify,), name=f"{self._what}-watch", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def _list(self) -> tuple[dict[str, V], str]:
        items, version = self._api.list(self._path, self._selector)
        parsed = {}
        for item in items:
            uid = _uid(item)
            value = self._parse(item) if uid else None
            if value is not None:
                parsed[uid] = value
        return parsed, version

    def _loop(self, notify: Callable[[], None]) -> None:
        """List once, then watch from the list's resourceVersion; when the server ends a watch, resume from
        the newest resourceVersion seen (bookmarks included) without listing again. Only an expired
        resourceVersion (410 Gone) or a failure re-lists."""
        version = ""
        while not self._stopped.is_set():
            try:
                if not version:
                    items, version = self._list()
                    self.lists += 1
                    with self._lock:
                        changed = items != self._items or not self.synced
                        self._items = items
                    self.synced = True
                    self.served = True
                    self.error = None
                    if changed:
                        notify()
                self.watches += 1
                events = self._api.watch(self._path, self._selector, version, timeout_seconds=self._watch_timeout)
                for kind, obj in events:
                    if self._stopped.is_set():
                        return
                    version = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self._apply(kind, obj, notify)
            except ApiCrdMissing:
                if self.served:
                    log.warning("%s watch: the API server does not serve %s; trying again every %.0f s",
                                self._what, self._path, NOT_SERVED_RETRY_SECONDS)  # fmt: skip
                self.served = False
                version = ""
                self._stopped.wait(NOT_SERVED_RETRY_SECONDS)
            except ApiError as exc:
                if exc.status == GONE:
                    log.info("%s watch: resourceVersion %s expired; re-listing", self._what, version)
                    version = ""
                    continue
                if str(exc) != self.error:
                    log.warning("%s watch: %s; re-listing every %.0f s", self._what, exc, self._retry)
                self.error = str(exc)
                version = ""
                self._stopped.wait(self._retry)

    def _apply(self, kind: str, obj: Any, notify: Callable[[], None]) -> None:
        uid = _uid(obj)
        if not uid:
            return
        value = None if kind == "DELETED" else self._parse(obj)
        with self._lock:
            before = self._items.get(uid)
            if value is None:
                self._items.pop(uid, None)
            else:
                self._items[uid] = value
        if before != value:
            notify()


def _uid(obj: Any) -> str:
    return str(((obj or {}).get("metadata") or {}).get("uid") or "") if isinstance(obj, dict) else ""


class PodWatcher(ListWatcher[PodRef]):
    what = "pod"
    path = PODS

    def _parse(self, obj: Any) -> PodRef | None:
        return pod_ref(obj, finished_too=True)

    def pods(self) -> tuple[PodRef, ...]:
        """The pods on this node that have not finished."""
        return tuple(sorted((p for p in self.values() if not p.finished), key=lambda pod: (pod.namespace, pod.name)))

    def finished(self) -> tuple[PodRef, ...]:
        """The pods bound here that finished or that the kubelet rejected, until they are deleted: they hold
        nothing, but the consumer's Dedicated informer counts them in its fingerprint."""
        return tuple(sorted((p for p in self.values() if p.finished), key=lambda pod: (pod.namespace, pod.name)))


class SliceWatcher(ListWatcher[dict[str, Any]]):
    """This node's ResourceSlices, each kept whole (sources/dra_api.py reads them)."""

    what = "resourceslice"
    path = RESOURCE_SLICES

    def _parse(self, obj: Any) -> dict[str, Any] | None:
        return _slice(obj)


def _slice(obj: Any) -> dict[str, Any] | None:
    """Only the spec is kept: status and metadata change without changing a device."""
    spec = obj.get("spec") if isinstance(obj, dict) else None
    return {"spec": spec} if isinstance(spec, dict) else None


class ClaimFetcher:
    """The ResourceClaims this node's pods use, each read with one GET (`resourceclaims` `get` only: a
    cluster-wide claim watch would carry every claim of the cluster to every node).

    A claim is read again when the set of pods using it changes (a claim deleted and made again under the
    same name, for a new pod) and, while it has no allocation yet, every `retry_seconds`. `want()` is
    called with the pods whenever they change; the fetching runs in a daemon thread, and a change fires
    the refresh trigger. A claim that cannot be read keeps its last reading (or none).

    A claim whose pods are gone stays allocated until something deallocates it (the ResourceClaim
    controller), and the scheduler allocates around its devices until then: it is kept, and read again
    `retry_seconds` later, then at doubling intervals up to ORPHAN_MAX_SECONDS, until it is deallocated or
    deleted.
    """

    def __init__(
        self,
        api: KubeApi,
        *,
        on_change: Callable[[], None],
        retry_seconds: float = RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._on_change = on_change
        self._retry = retry_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._wanted: dict[tuple[str, str], frozenset[str]] = {}  # (namespace, name) -> pod UIDs using it
        self._read: dict[tuple[str, str], tuple[frozenset[str], DraClaim | None]] = {}
        self._orphans: dict[tuple[str, str], tuple[float, float]] = {}  # pods gone, allocated: (due, interval)
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self.gets = 0
        self.failures = 0

    def want(self, pods: Iterable[PodRef]) -> None:
        wanted: dict[tuple[str, str], set[str]] = {}
        for pod in pods:
            for use in pod.claims:
                wanted.setdefault((pod.namespace, use.claim), set()).add(pod.uid)
        with self._lock:
            now = self._clock()
            for key in set(self._wanted) - set(wanted):
                claim = self._read.get(key, (frozenset(), None))[1]
                if claim is not None and claim.devices:
                    self._orphans[key] = (now + self._retry, self._retry)
            for key in set(wanted) & set(self._orphans):
                del self._orphans[key]
            self._wanted = {key: frozenset(uids) for key, uids in wanted.items()}
        self._wake.set()

    def claims(self) -> tuple[DraClaim, ...]:
        with self._lock:
            kept = self._wanted.keys() | self._orphans.keys()
            found = [claim for key, (_, claim) in self._read.items() if key in kept and claim]
        return tuple(sorted(found, key=lambda claim: (claim.namespace, claim.name)))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        def notify() -> None:
            loop.call_soon_threadsafe(self._on_change)

        threading.Thread(target=self._loop, args=(notify,), name="resourceclaim-get", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _due(self) -> list[tuple[tuple[str, str], frozenset[str]]]:
        with self._lock:
            for key in set(self._read) - set(self._wanted) - set(self._orphans):
                del self._read[key]
            now = self._clock()
            return [
                (key, uids)
                for key, uids in self._wanted.items()
                if key not in self._read or self._read[key][0] != uids or not (self._read[key][1] or _NONE).devices
            ] + [(key, frozenset()) for key, (due, _) in self._orphans.items() if due <= now]

    def _next_orphan(self) -> float | None:
        with self._lock:
            return min((due for due, _ in self._orphans.values()), default=None)

    def _loop(self, notify: Callable[[], None]) -> None:
        while not self._stopped.is_set():
            self._wake.clear()
            pending = False
            for key, uids in self._due():
                namespace, name = key
                try:
                    self.gets += 1
                    claim = resource_claim(self._api.get(f"{CLAIMS.format(namespace=namespace)}/{name}"))
                except ApiError as exc:
                    self.failures += 1
                    log.warning("resourceclaim %s/%s: %s; trying again in %.0f s", namespace, name, exc, self._retry)
                    pending = True
                    continue
                with self._lock:
                    before = self._read.get(key, (frozenset(), None))[1]
                    self._read[key] = (uids, claim)
                    if key in self._orphans:
                        if claim is None or not claim.devices:  # deallocated or deleted: its devices are free
                            del self._orphans[key]
                        else:
                            interval = min(self._orphans[key][1] * 2, ORPHAN_MAX_SECONDS)
                            self._orphans[key] = (self._clock() + interval, interval)
                        orphan = True
                    else:
                        orphan = False
                pending = pending or (not orphan and (claim is None or not claim.devices))
                if claim != before or (orphan and key not in self._orphans):
                    notify()
            timeout = self._retry if pending else None
            due = self._next_orphan()
            if due is not None:
                wait = max(due - self._clock(), 0.0)
                timeout = wait if timeout is None else min(timeout, wait)
            self._wake.wait(timeout)


_NONE = DraClaim(namespace="", name="", uid="", devices=())
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims"

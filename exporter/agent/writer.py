"""Writes this node's NodeResourceTopology: early at start-up, then only when its content changes, and
re-asserted on every periodic resync (compared with the server's copy, rewritten only if it differs).

The server's copy comes from a watch on the object (ownwatch.py): a deletion or someone else's edit is
repaired as soon as the watch reports it, and a resync costs no request. Without that watch (not yet
synced, or not allowed) the writer reads the object back itself, as it does after a conflict.

With `min_interval_seconds`, changes closer together than that are coalesced into one write of the
newest content (freshness traded for API load; off by default).

With `requeue_after_seconds` (the NUMA-aware scheduler's cache resync period and a margin), each write the
cache can resync from is followed, once the cache has had time to, by one update of the object's
REQUEUE_ANNOTATION: the NRT update event that NodeResourceTopologyMatch requeues the pods it turned away on
(its flush requeues nothing). Coalesced: one update covers every write made `requeue_after_seconds` before
it, and two are at least that far apart; an idle node costs nothing (docs/product.md, "Pods that fit do not
wait"). A write whose fingerprint names a pod the kubelet has not admitted yet (`#pending`) is one the cache
never resyncs from, so it is followed by no requeue update; and while the object already names such a pod,
a newer content that still does is held back (PENDING_HOLD_SECONDS at most): the cache could use neither,
and every update is an event on which the scheduler retries each pod it turned away, against a cache that
has not changed. The write that names no pending pod any more goes out at once.

Failures: 404 creates; 409 re-reads and retries; 422 logs the server's message, is counted and not
retried until the content changes; 429, 5xx and connection errors back off exponentially with jitter;
a missing CRD is reported clearly and retried slowly. None of it blocks metrics.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from exporter.agent.threads import in_daemon_thread
from exporter.errors import ApiConflict, ApiCrdMissing, ApiError, ApiForbidden, ApiInvalid, ApiNotFound
from exporter.fingerprint import ATTRIBUTE, METHOD_WITH_EXCLUSIVE_RESOURCES
from exporter.kubeapi import KubeApi
from exporter.model import PodRef
from exporter.snapshot import Snapshot
from exporter.views.metrics import NrtStats
from exporter.views.nrt import PENDING, build_nrt, content, fingerprint_pods

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 8
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 60.0
SLOW_RETRY_SECONDS = 60.0
REQUEUE_ANNOTATION = "numa-topology-exporter.io/requeue"
REQUEUE_MARGIN_SECONDS = 0.5  # the scheduler's informer lag and its flush waiting for the cache's lock (~0.1 s seen)
# The longest a content the reserve cache cannot resync from waits behind another such one (a burst's admissions
# on one node took 0.2-1 s here): its numbers still reach readers other than that cache within this.
PENDING_HOLD_SECONDS = 1.0


class NrtWriter:
    def __init__(
        self,
        api: KubeApi,
        *,
        node_name: str,
        stats: NrtStats,
        method: str = METHOD_WITH_EXCLUSIVE_RESOURCES,
        backoff_base_seconds: float = BACKOFF_BASE_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        slow_retry_seconds: float = SLOW_RETRY_SECONDS,
        min_interval_seconds: float = 0.0,
        requeue_after_seconds: float = 0.0,
        finished_pods: Callable[[], Sequence[PodRef]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self.node_name = node_name
        self.stats = stats
        self.method = method
        # The pods bound here that finished, named for a consumer with the Dedicated informer (None: Shared).
        self._finished: Callable[[], Sequence[PodRef]] = finished_pods or tuple
        self._backoff_base = backoff_base_seconds
        self._backoff_max = backoff_max_seconds
        self._slow_retry = slow_retry_seconds
        self._min_interval = min_interval_seconds
        self._requeue_after = requeue_after_seconds
        self._uncovered: list[float] = []  # monotonic times of the writes no requeue update has followed yet
        self._requeue_wake = asyncio.Event()
        self._last_requeue_at: float | None = None
        self._hold_pending = self._requeue_after > 0  # a reserve cache reads the object: hold what it cannot use
        # The object as we last wrote it names a pod not admitted yet. After a failed write the server may hold
        # what we sent or not: False then, so that nothing is held behind an object we do not know.
        self._published_pending = False
        self._unanswered = False  # a write failed after it was sent: the server may have taken it
        self._held_since: float | None = None
        self._api_lock = asyncio.Lock()  # one write at a time: a requeue update never races a content write
        self._sleep = sleep
        self._clock = clock
        self._monotonic = monotonic
        self._last_write_at: float | None = None
        self._snapshot: Snapshot | None = None
        self._wake = asyncio.Event()
        self._resync = asyncio.Event()  # cuts a backoff short: every resync is a chance to recover
        self._reassert = True
        self._written: dict[str, Any] | None = None
        self._sending: dict[str, Any] | None = None  # the content of the write in flight
        self._rejected: dict[str, Any] | None = None
        self._node_uid: str | None = None
        self._server: dict[str, Any] | None = None  # the object as the server last returned it
        self._node_lookup_due = True  # at start, then again on each resync while the Node is unknown
        self._said_node_missing = False
        self._said_crd_missing = False
        self._watched = False  # the own-object watch is synced: self._server is the server's copy
        self.writes = 0
        self.repairs = 0
        self.requeues = 0

    def observe(self, obj: dict[str, Any] | None, synced: bool) -> None:
        """Own-object watch listener (on the event loop): the object as the server now has it."""
        was_watched, self._watched = self._watched, synced
        if not synced:
            return
        if obj is not None and _older(obj, self._server):
            return  # an event from before our own last write
        self._server = obj
        if self._snapshot is None:
            return
        if obj is None and self._written is not None:
            # Deleted: by the garbage collector when its Node went away (ownerReference), so the Node may have
            # been registered again under a new UID. The owner is looked up again before it is recreated.
            self._node_uid, self._node_lookup_due = None, True
        # Ours: what we last wrote, or what we are writing (the watch may report it before the response comes).
        ours = [want for want in (self._written, self._sending) if want is not None] or [content(self.desired())]
        if obj is None or content(obj) not in ours:
            if self._written is not None:
                self.repairs += 1
                log.info(
                    "NodeResourceTopology %s was %s: repairing", self.node_name, "deleted" if obj is None else "changed"
                )
            self._reassert = True
            self._wake.set()
        if not was_watched:
            self._resync.set()  # the API may be back (the CRD installed): cut a slow retry short

    async def on_snapshot(self, snapshot: Snapshot, reasons: set[str]) -> None:
        """Refresher listener: note the newest snapshot and wake the writer."""
        self._snapshot = snapshot
        if "resync" in reasons:
            self._reassert = True
            self._node_lookup_due = self._node_uid is None
            self._resync.set()
        self._wake.set()

    def desired(self, finished: Sequence[PodRef] | None = None) -> dict[str, Any]:
        assert self._snapshot is not None
        return build_nrt(
            self._snapshot,
            node_name=self.node_name,
            node_uid=self._node_uid,
            method=self.method,
            finished=self._finished() if finished is None else finished,
        )

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.sync()

    async def sync(self) -> None:
        """Bring the server's object to the newest snapshot's content, retrying until it is there."""
        failures = 0
        while self._snapshot is not None:
            if self._node_uid is None and self._node_lookup_due:
                await self._learn_node_uid()
            snapshot, finished = self._snapshot, self._finished()
            body = self.desired(finished)
            want = content(body)
            if not self._reassert and want in (self._written, self._rejected):
                self._held_since = None
                return
            named: Callable[[], Sequence[PodRef]] = functools.partial(
                fingerprint_pods, snapshot, method=self.method, finished=finished
            )
            if self._hold_pending:  # computed once, for the hold and for the debug log
                named = functools.partial(tuple, named())
            pending = self._hold_pending and any(pod.name.endswith(PENDING) for pod in named())
            if pending and self._published_pending and not self._reassert:
                now = self._monotonic()
                self._held_since = now if self._held_since is None else self._held_since
                wait = self._held_since + PENDING_HOLD_SECONDS - now
                if wait > 0:
                    await self._until_woken(wait)  # a newer snapshot, or the hold is over
                    continue
            if self._last_write_at is not None and self._min_interval > 0:
                wait = self._last_write_at + self._min_interval - self._monotonic()
                if wait > 0:
                    await self._sleep(wait)  # coalesce: publish the newest content once the interval is over
                    continue
            self._held_since = None
            try:
                async with self._api_lock:
                    await self._write(body, want, named, pending=pending)
                self._reassert = False
                self._said_crd_missing = False
                return
            except ApiInvalid as exc:
                log.error("the API server rejected NodeResourceTopology %s: %s", self.node_name, exc)
                self._rejected = want
                self._reassert = False
                return
            except (ApiConflict, ApiNotFound):
                failures += 1
                if failures <= CONFLICT_RETRIES:
                    continue  # someone wrote in between: re-read and try again at once
                await self._pause(self._backoff(failures - CONFLICT_RETRIES))
            except ApiCrdMissing as exc:
                if not self._said_crd_missing:
                    log.error("%s; retrying every %.0f s", exc, self._slow_retry)
                    self._said_crd_missing = True
                await self._pause(self._slow_retry)
            except ApiForbidden as exc:
                log.error("not allowed to write NodeResourceTopology %s (check RBAC): %s", self.node_name, exc)
                await self._pause(self._slow_retry)
            except ApiError as exc:
                failures += 1
                delay = self._backoff(failures)
                log.warning("NodeResourceTopology write failed (%s); retrying in %.1f s", exc, delay)
                await self._pause(delay)

    async def _until_woken(self, seconds: float) -> None:
        """Wait `seconds`, or until a newer snapshot wakes the writer, whichever comes first."""
        await self._until(self._wake, seconds)

    async def _pause(self, seconds: float) -> None:
        """Wait before retrying: `seconds`, or until the next resync, whichever comes first."""
        await self._until(self._resync, seconds)

    async def _until(self, event: asyncio.Event, seconds: float) -> None:
        event.clear()
        set_ = asyncio.ensure_future(event.wait())
        pause = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({set_, pause}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            set_.cancel()
            pause.cancel()

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** min(failures - 1, 16))
        return random.uniform(ceiling / 2, ceiling)

    async def _learn_node_uid(self) -> None:
        self._node_lookup_due = False
        try:
            self._node_uid = await in_daemon_thread(lambda: self._api.node_uid(self.node_name))
        except ApiError as exc:
            if not self._said_node_missing:
                log.warning(
                    "cannot read Node %s for the owner reference (%s); publishing without it, retrying on resync",
                    self.node_name,
                    exc,
                )
                self._said_node_missing = True

    async def _write(
        self, body: dict[str, Any], want: dict[str, Any], named: Callable[[], Sequence[PodRef]], *, pending: bool
    ) -> None:
        """One attempt. Between resyncs, when our last write's resourceVersion is known, the object is
        replaced directly (one request per change; a 409 means someone else wrote, and the retry re-reads).
        At start, on a resync and after a conflict, it is read back first and written only if it differs.
        Any failure, of the read or of the write, is counted under the operation it was for."""
        operation = "update" if self._server is not None else "create"
        try:
            if not self._watched and (self._reassert or self._server is None):
                self._server = await in_daemon_thread(lambda: self._api.get_nrt(self.node_name))
                operation = "update" if self._server is not None else "create"
            if self._server is not None and content(self._server) == want:
                if self._unanswered and not pending:
                    self._requeue_later(self._monotonic())  # our failed write had landed: it needs its requeue
                self._published_pending, self._unanswered = pending, False
                self._confirmed(want)  # the server's copy (read back, or as the watch last saw it) is current
                return
            current = self._server
            self._sending = want
            if current is None:
                written = await in_daemon_thread(lambda: self._api.create_nrt(body))
            else:
                metadata = current.get("metadata") or {}
                update = {
                    **body,
                    "metadata": {
                        **body["metadata"],
                        "annotations": {**(metadata.get("annotations") or {}), **body["metadata"]["annotations"]},
                        "labels": metadata.get("labels") or {},
                        "resourceVersion": metadata.get("resourceVersion"),
                    },
                }
                written = await in_daemon_thread(lambda: self._api.replace_nrt(self.node_name, update))
        except ApiError as exc:
            if self._sending is not None:
                self._sending, self._unanswered, self._published_pending = None, True, False
            if isinstance(exc, ApiConflict | ApiNotFound):
                self._server = None  # someone else wrote or deleted it: read it back before the retry
                self._watched = False  # until the watch reports again
            self.stats.record(operation=operation, result=exc.result)
            raise
        self._server, self._sending = written, None
        self.writes += 1
        self._last_write_at = self._monotonic()
        self.stats.record(operation=operation, result="success", when=self._clock())
        self._published_pending, self._unanswered = pending, False
        if not pending:
            self._requeue_later(self._last_write_at)  # the cache never resyncs from an object naming a pending pod
        self._confirmed(want)
        log.info("NodeResourceTopology %s: %s", self.node_name, operation)
        if log.isEnabledFor(logging.DEBUG):
            zones = {z["name"]: {r["name"]: r["available"] for r in z["resources"]} for z in body.get("zones", [])}
            fingerprint = {a["name"]: a["value"] for a in body.get("attributes", [])}.get(ATTRIBUTE)
            pods = sorted(f"{pod.namespace}/{pod.name}" for pod in named())  # only the debug log needs them
            log.debug(
                "NodeResourceTopology %s written: %s, available %s, pods %s", self.node_name, fingerprint, zones, pods
            )

    @property
    def requeue_pending(self) -> bool:
        """Whether a write still waits for its requeue update."""
        return bool(self._uncovered)

    def _requeue_later(self, written_at: float) -> None:
        if self._requeue_after <= 0:
            return
        self._uncovered.append(written_at)
        self._requeue_wake.set()

    async def run_requeues(self) -> None:
        """The requeue updates' own task (idle, without a timer, while nothing is written)."""
        while True:
            await self._requeue_wake.wait()
            self._requeue_wake.clear()
            await self.requeue_covering()

    async def requeue_covering(self) -> None:
        """Until every write is covered: wait for the oldest uncovered one's cache resync (and for a period
        since the last update), then update the object once."""
        while self._uncovered:
            due = self._uncovered[0] + self._requeue_after
            if self._last_requeue_at is not None:
                due = max(due, self._last_requeue_at + self._requeue_after)
            wait = due - self._monotonic()
            if wait > 0:
                await self._sleep(wait)
                continue
            started = self._monotonic()
            async with self._api_lock:
                await self._requeue()
            self._last_requeue_at = started
            self._uncovered = [t for t in self._uncovered if t > started - self._requeue_after]

    async def _requeue(self) -> None:
        """One update of the object as the server has it, REQUEUE_ANNOTATION set to now: the event the
        scheduler requeues its pending pods on. A conflict means someone wrote in between, itself an event."""
        current = self._server
        if current is None:
            return
        metadata = {k: v for k, v in (current.get("metadata") or {}).items() if k != "managedFields"}
        body = {
            **current,
            "metadata": {
                **metadata,
                "annotations": {**(metadata.get("annotations") or {}), REQUEUE_ANNOTATION: f"{self._clock():.3f}"},
            },
        }
        try:
            written = await in_daemon_thread(lambda: self._api.replace_nrt(self.node_name, body))
        except ApiError as exc:
            self.stats.record(operation="requeue", result=exc.result)
            log.debug("NodeResourceTopology %s: requeue update not made (%s)", self.node_name, exc)
            return
        self._server = written
        self.requeues += 1
        self.stats.record(operation="requeue", result="success")
        log.debug("NodeResourceTopology %s: requeue update", self.node_name)

    def _confirmed(self, want: dict[str, Any]) -> None:
        self._written = want
        self.stats.last_success_timestamp = self._clock()


def _older(obj: dict[str, Any], than: dict[str, Any] | None) -> bool:
    """Whether `obj` is an older version of `than` (etcd's resourceVersions are increasing integers; any
    other form is opaque and never called older)."""
    if than is None:
        return False
    mine = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    theirs = str((than.get("metadata") or {}).get("resourceVersion") or "")
    return mine.isascii() and theirs.isascii() and mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs)

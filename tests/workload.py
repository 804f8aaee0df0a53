"""A seeded workload of Guaranteed pods for real nodes: bursts (many pods created before any is admitted) and
churn (Running pods deleted while others arrive), with what became of every pod as the API says it.

Shared by tests/integration/test_real_nodes.py (the judge: 0 pods rejected after binding) and bench/admission.py (the
same workload under four scheduler arms). Nothing here plays the kubelet: the real kubelets admit or reject.
"""

from __future__ import annotations

import ast
import json
import random
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from exporter.agent.writer import REQUEUE_MARGIN_SECONDS
from tests.controlplane import NRT_PATH, ControlPlane, wait_until
from tests.realnodes import CHART_DEBOUNCE_SECONDS, GPU, RealNode, pending_that_fit

REJECTIONS = ("TopologyAffinityError", "UnexpectedAdmissionError")
BACKOFF_MAX_SECONDS = 10.0  # the scheduler's podMaxBackoffSeconds default


def allowance(resync: int, backoff: float = BACKOFF_MAX_SECONDS) -> float:
    """How long a pod that fits may wait once nothing changes, by the scheduler's own delays: two cache resync
    periods (the agent's write lands just after one; the cache flushes on the next), the agent's requeue
    update's margin, the scheduler's longest retry backoff (podMaxBackoffSeconds) and the chart's debounce
    (tests/realnodes.py agent())."""
    return 2 * resync + REQUEUE_MARGIN_SECONDS + backoff + CHART_DEBOUNCE_SECONDS


def shape(rng: random.Random, *, gpu_share: float = 0.3) -> dict[str, str]:
    """A container's requests (= limits): whole CPUs, memory, sometimes a GPU. The fixture machine has 14 and
    16 allocatable CPUs, about 63 GiB and 2 GPUs per NUMA node."""
    resources = {
        "cpu": str(rng.choice([1, 2, 2, 4, 4, 6, 8])),
        "memory": rng.choice(["1Gi", "2Gi", "4Gi", "8Gi", "16Gi", "24Gi"]),
    }
    if rng.random() < gpu_share:
        resources[GPU] = "1"
    return resources


def pod_body(name: str, scheduler: str, resources: dict[str, str], *, containers: int = 1) -> dict[str, Any]:
    spec = {
        "schedulerName": scheduler,
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {"name": f"c{index}", "image": "pause", "resources": {"requests": resources, "limits": resources}}
            for index in range(containers)
        ],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@dataclass
class Outcome:
    """What became of the workload's pods."""

    created: int = 0
    deleted: int = 0
    rejected: list[str] = field(default_factory=list)
    to_running: list[float] = field(default_factory=list)
    # From first seen bound to first seen admitted (Running) or rejected (Failed), at the 0.1 s the workload
    # polls: the window in which the scheduler must not trust zones that do not subtract the pod yet.
    bind_to_admission: list[float] = field(default_factory=list)
    running: int = 0
    pending: list[dict[str, Any]] = field(default_factory=list)

    def percentile(self, q: float, samples: list[float] | None = None) -> float:
        ordered = sorted(self.to_running if samples is None else samples)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def watch_objects(
    kube: ControlPlane, path: str, version: str, on_object: Callable[[Mapping[str, Any]], None], stop: threading.Event
) -> threading.Thread:
    """A thread that hands every object added or modified under `path` after `version` to `on_object` as the
    event arrives, until `stop` (the test's own watch: independent of the agent and of any polling)."""

    def run() -> None:
        since = version
        while not stop.is_set():
            request = urllib.request.Request(
                f"{kube.url}{path}?watch=1&allowWatchBookmarks=true&resourceVersion={since}&timeoutSeconds=5"
            )
            request.add_header("Authorization", f"Bearer {kube.tokens['admin']}")
            try:
                with urllib.request.urlopen(request, context=kube._context, timeout=15) as response:
                    for line in response:
                        event = json.loads(line)
                        if event["type"] == "ERROR":  # 410 Gone: the version compacted away; list again
                            listing = kube.ok("GET", path)
                            for item in listing.get("items") or []:
                                on_object(item)
                            since = listing["metadata"]["resourceVersion"]
                            break
                        if event["type"] in ("ADDED", "MODIFIED"):
                            on_object(event["object"])
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                            since = event["object"]["metadata"]["resourceVersion"]
            except (OSError, ValueError) as exc:
                if not stop.is_set():
                    raise AssertionError(f"the test's watch of {path} failed: {exc}") from exc

    thread = threading.Thread(target=run, name=f"watch {path}", daemon=True)
    thread.start()
    return thread


class Workload:
    def __init__(
        self, kube: ControlPlane, namespace: str, *, scheduler: str, seed: int, gpu_share: float = 0.3
    ) -> None:
        self.kube, self.namespace, self.scheduler = kube, namespace, scheduler
        self.rng = random.Random(seed)
        self.gpu_share = gpu_share
        self.outcome = Outcome()
        self._created_at: dict[str, float] = {}
        self._seen_running: set[str] = set()
        self._bound_at: dict[str, float] = {}
        self._decided: set[str] = set()
        self._rejected: set[str] = set()
        self._index = 0
        self._lock = threading.Lock()  # _observe runs on the watch's thread and on the caller's
        kube.ensure_namespace(namespace)
        # Times to Running and to admission come from the test's own watch of the pods, as each change arrives:
        # a poll (every 0.1 s at best, and not during the kubelet-oracle checks) would add its own lag.
        self._stop = threading.Event()
        listing = kube.ok("GET", self.path)
        self._watch = watch_objects(kube, self.path, listing["metadata"]["resourceVersion"],
                                    lambda pod: self._observe([pod]), self._stop)  # fmt: skip

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    def burst(self, count: int) -> list[str]:
        """Create `count` pods back to back, none waited for."""
        names = []
        for _ in range(count):
            name = f"p{self._index:04d}"
            self._index += 1
            resources = shape(self.rng, gpu_share=self.gpu_share)
            self._created_at[name] = time.monotonic()
            self.kube.ok("POST", self.path, pod_body(name, self.scheduler, resources))
            names.append(name)
        self.outcome.created += count
        return names

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.kube.ok("GET", self.path)["items"]
        self._observe(items)
        return items

    def _observe(self, items: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            self._observe_locked(items, time.monotonic())

    def _observe_locked(self, items: Iterable[Mapping[str, Any]], now: float) -> None:
        for pod in items:
            name, status = pod["metadata"]["name"], pod.get("status") or {}
            if pod["spec"].get("nodeName") and name not in self._bound_at:
                self._bound_at[name] = now
            if status.get("phase") in ("Running", "Failed") and name not in self._decided and name in self._bound_at:
                self._decided.add(name)
                self.outcome.bind_to_admission.append(now - self._bound_at[name])
            if status.get("phase") == "Running" and name not in self._seen_running:
                self._seen_running.add(name)
                if name in self._created_at:
                    self.outcome.to_running.append(now - self._created_at[name])
            # Failed while not being deleted: the kubelet's verdict, not a churned pod's end.
            if status.get("phase") == "Failed" and name not in self._rejected and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                self._rejected.add(name)
                node = pod["spec"].get("nodeName")
                self.outcome.rejected.append(f"{name} on {node}: {status.get('reason')}: {status.get('message')}")

    def settled(self) -> list[dict[str, Any]] | None:
        """Every pod decided: bound and Running or Failed, or not bound and found unschedulable."""
        items = self.pods()
        for pod in items:
            status = pod.get("status") or {}
            if pod["metadata"].get("deletionTimestamp"):
                return None
            if pod["spec"].get("nodeName"):
                if status.get("phase") not in ("Running", "Failed"):
                    return None
            elif not any(
                c["type"] == "PodScheduled" and c["status"] == "False" for c in status.get("conditions") or []
            ):
                return None
        return items or None

    def settle(self, *, timeout: float = 120) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = wait_until(self.settled, timeout=timeout, what="every pod decided", interval=0.1)
        self.outcome.running = sum(1 for pod in items if pod["status"].get("phase") == "Running")
        self.outcome.pending = [pod for pod in items if not pod["spec"].get("nodeName")]
        return items

    def churn(self, fraction: float) -> list[str]:
        """Delete `fraction` of the Running pods (and every Failed one), without waiting for them to go."""
        items = self.pods()
        running = sorted(p["metadata"]["name"] for p in items if p["status"].get("phase") == "Running")
        failed = [p["metadata"]["name"] for p in items if p["status"].get("phase") == "Failed"]
        victims = self.rng.sample(running, k=round(len(running) * fraction)) + failed
        for name in victims:
            self.kube.request("DELETE", f"{self.path}/{name}")
        self.outcome.deleted += len(victims)
        return victims

    def gone(self, names: Iterable[str]) -> bool:
        present = {pod["metadata"]["name"] for pod in self.pods()}
        return not present & set(names)

    def cleanup(self) -> None:
        self._stop.set()
        for pod in self.kube.ok("GET", self.path)["items"]:
            self.kube.request("DELETE", f"{self.path}/{pod['metadata']['name']}")
        wait_until(lambda: not self.kube.ok("GET", self.path)["items"], timeout=120, what=f"{self.namespace} empty")


def scheduler_log_since(kube: ControlPlane, offset: int) -> tuple[list[str], int]:
    """The scheduler's log lines written since byte `offset`, and the new offset (its log grows to tens of
    MiB at --v=5: never read whole in a polling loop)."""
    path = kube.root / "kube-scheduler-nrt.log"
    try:
        with path.open("rb") as log:
            log.seek(offset)
            data = log.read()
    except FileNotFoundError:
        return [], 0
    complete = data.rfind(b"\n") + 1
    return data[:complete].decode(errors="replace").splitlines(), offset + complete


def log_size(kube: ControlPlane) -> int:
    path = kube.root / "kube-scheduler-nrt.log"
    return path.stat().st_size if path.exists() else 0


def now_stamp() -> str:
    return datetime.now().strftime("%m%d %H:%M:%S.%f")


def pending_that_fit_after(
    work: Workload, nodes: Sequence[RealNode], points: Sequence[float], *, interval: float = 0.5,
    limit: float = 180.0,
) -> dict[float, list[str]]:
    """Nothing outside the scheduler and the agents acts: the pods still Pending that some node's kubelet would
    admit (kubelet-oracle), seen `points` seconds after the last change of the workload's pods (one created,
    bound, started, failed or deleted; the scheduler's own binds are changes too, and each may make the next
    pod wait for another cache resync). A pod that fits and waits through that many quiet seconds is counted.
    Once every pod is decided and none that fits waits, nothing can change in a quiet cluster: the later
    points are that answer. `limit`: the most seconds in all, for a cluster that never goes quiet."""
    started = last_change = time.monotonic()
    state: frozenset[tuple[str, str, str, bool]] | None = None
    seen: dict[float, list[str]] = {}
    for point in sorted(points):
        while True:
            items = work.pods()
            now = time.monotonic()
            current = frozenset((pod["metadata"]["name"], pod["spec"].get("nodeName") or "",
                                 (pod.get("status") or {}).get("phase") or "",
                                 bool(pod["metadata"].get("deletionTimestamp"))) for pod in items)  # fmt: skip
            if current != state:
                state, last_change = current, now
            pending = [pod for pod in items if not pod["spec"].get("nodeName")]
            fit = pending_that_fit(work.kube, nodes, pending)
            if (not fit and work.settled() is not None) or now - last_change >= point or now - started >= limit:
                break
            time.sleep(interval)
        seen[point] = fit
        if not fit and work.settled() is not None:
            seen.update({later: [] for later in points if later > point})
            break
    work.settle()
    return seen


EPOCH_DAY = date(2000, 1, 1).toordinal()


def _seconds(stamp: str, day: date | None = None) -> float:
    """A klog "HH:MM:SS.ffffff" or a Python logging "HH:MM:SS,mmm" time on `day` (today where not given), in
    seconds on one scale for every day: a run that passes midnight compares its times rightly."""
    hours, minutes, seconds = stamp.replace(",", ".").split(":")
    days = (day or date.today()).toordinal() - EPOCH_DAY  # a small number keeps microseconds in a float
    return days * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _klog_day(header: str, today: date | None = None) -> date:
    """klog's `Lmmdd` says month and day, not the year: the latest such day not after tomorrow."""
    today = today or date.today()
    month, day = int(header[1:3]), int(header[3:5])
    for year in (today.year + 1, today.year, today.year - 1):
        try:
            candidate = date(year, month, day)
        except ValueError:
            continue
        if candidate.toordinal() <= today.toordinal() + 1:
            return candidate
    return today


def _klog_time(line: str) -> float | None:
    parts = line.split()
    if len(parts) > 2 and len(parts[0]) == 5 and parts[0][0] in "IWEF" and parts[0][1:].isdigit():
        return _seconds(parts[1], _klog_day(parts[0]))
    return None


def _agent_time(line: str, stamp: str) -> float:
    """An agent log line's time (Python logging: `YYYY-MM-DD HH:MM:SS,mmm ...`)."""
    try:
        return _seconds(stamp, date.fromisoformat(line.split(" ", 1)[0]))
    except ValueError:
        return _seconds(stamp)


def time_of_day() -> float:
    """Now, on the scale the klog and agent log times are compared in."""
    now = datetime.now()
    return _seconds(now.strftime("%H:%M:%S.%f"), now.date())


FINGERPRINT_ANNOTATION = "topology.node.k8s.io/fingerprint"
# The longest the agent may take from a bind to the write that names the bound pod (its pod watch, one refresh,
# one write) for a rejection that follows to be the scheduler's race: 0.12-0.16 s seen on the 2-core CI machine
# (the write alone ~0.1 s), `reaction` below holds the median of every bind to less.
REACTION_BOUND_SECONDS = 0.3


class NrtChanges:
    """Every change of the NodeResourceTopology objects' pod fingerprint as the test's own watch sees it, with
    the time it arrived: the evidence of when an object named a pod, independent of the agent's account."""

    def __init__(self, kube: ControlPlane) -> None:
        self._kube = kube
        self.changes: dict[str, list[tuple[float, str]]] = {}
        self._stop = threading.Event()
        listing = kube.ok("GET", NRT_PATH)
        for item in listing.get("items") or []:
            self._note(item)
        self._thread = watch_objects(kube, NRT_PATH, listing["metadata"]["resourceVersion"], self._note, self._stop)

    def _note(self, obj: Mapping[str, Any]) -> None:
        name = obj["metadata"]["name"]
        value = (obj["metadata"].get("annotations") or {}).get(FINGERPRINT_ANNOTATION, "")
        seen = self.changes.setdefault(name, [])
        if not seen or seen[-1][1] != value:
            seen.append((time_of_day(), value))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def at(self, node: str, t: float) -> str | None:
        """The fingerprint the object of `node` carried at `t`."""
        return next((value for when, value in reversed(self.changes.get(node, [])) if when <= t), None)

    def next_change(self, node: str, t: float) -> float | None:
        """When the object of `node` first carried another fingerprint than at `t`."""
        before = self.at(node, t)
        return next((when for when, value in self.changes.get(node, []) if when > t and value != before), None)

    def reaction(self, namespace: str, scheduler_log: list[str]) -> list[float]:
        """Seconds from each bind of a pod of `namespace` (the scheduler's log) to its node's object changing."""
        found = []
        for line in scheduler_log:
            m = re.search(rf'"Successfully bound pod to node" pod="{re.escape(namespace)}/[^"]+" node="([^"]+)"', line)
            if m and (bound := _klog_time(line)) is not None and (changed := self.next_change(m.group(1), bound)):
                found.append(changed - bound)
        return found


def race_seen(
    namespace: str, pod: str, node: str, *, scheduler_log: list[str], changes: NrtChanges,
    bound: float = REACTION_BOUND_SECONDS,
) -> str | None:  # fmt: skip
    """The scheduler cache's race, shown by the scheduler's log and the test's own watch of the objects, never
    by the agent's account: before `pod` was reserved on `node`, the cache flushed `node` on a fingerprint check
    that ran after another pod Q's reservation there, and either before Q's bind (no object can name a pod not
    bound) or after it, from the object as it was at the bind (the check's expected fingerprint is the one the
    watch saw then), which changed within `bound` of the bind, after the check, and no flush of `node` came
    between that change and `pod`'s reservation. None where that is not shown: then the rejection is a failure."""

    def when(what: str, who: str) -> float | None:
        line = next((line for line in scheduler_log if what in line and f'pod="{namespace}/{who}"' in line
                     and f'node="{node}"' in line), None)  # fmt: skip
        return _klog_time(line) if line is not None else None

    reserved_at = when('"post reserve"', pod)
    if reserved_at is None:
        return None
    checks = [(t, m.group(2)) for line in scheduler_log if (m := FLUSH.search(line)) and m.group(1) == node
              and m.group(2) == m.group(3) and (t := _klog_time(line)) is not None and t <= reserved_at]  # fmt: skip
    ns = re.escape(namespace)
    for line in scheduler_log:
        found = re.search(rf'"post reserve".* pod="{ns}/([^"]+)".* node="{re.escape(node)}"', line)
        if found is None or found.group(1) == pod or (q_reserved := _klog_time(line)) is None:
            continue
        other = found.group(1)
        q_bound = when('"Successfully bound pod to node"', other)
        if q_bound is None:
            continue
        for checked, expected in checks:
            if not q_reserved < checked:
                continue
            if checked < q_bound:
                return (f"the scheduler flushed {node} at {_clock(checked)}, after {other}'s reservation "
                        f"({_clock(q_reserved)}) and before its bind ({_clock(q_bound)}): no object names a pod "
                        "before it is bound")  # fmt: skip
            changed = changes.next_change(node, q_bound)
            later = [t for t, _ in checks if changed is not None and changed < t]
            if (changes.at(node, q_bound) == expected and changed is not None and checked < changed
                    and changed - q_bound <= bound and not later):  # fmt: skip
                return (f"the scheduler flushed {node} at {_clock(checked)}, {(checked - q_bound) * 1000:.0f} ms "
                        f"after {other}'s bind ({_clock(q_bound)}), from the object as it was at the bind; the "
                        f"test's watch saw it change {(changed - q_bound) * 1000:.0f} ms after the bind")  # fmt: skip
    return None


FLUSH = re.compile(r'"podset fingerprint check".* node="([^"]+)" expected="([^"]+)" computed="([^"]+)"')
WRITTEN = re.compile(r"^\S+ (\S+) .*NodeResourceTopology (\S+) written: (\S+), available .*?(?:, pods (\[.*\]))?$")


def scheduler_race(
    namespace: str,
    pod: str,
    node: str,
    *,
    scheduler_log: list[str],
    agent_log: str,
    kubelet_log: str = "",
    admitted: Mapping[str, float] | None = None,
    rejected: Iterable[str] = (),
) -> str | None:
    """Why the scheduler's cache placed `pod` where the kubelet rejected it, when the cause is the cache's own
    race and not our object: before the pod's reservation, the cache resynced `node` from an object of ours
    (fingerprints equal) that did not account for another pod Q already bound there, so the cache dropped Q's
    reservation while our zones could not subtract Q yet (the kubelet had not admitted it, or the agent had
    not read that admission when it wrote). None where no such Q exists (then the rejection is ours to explain).

    Whether the object accounted for Q is read from what it named: the agent logs, with each write, the pods
    its fingerprint covers, and its zones subtract exactly those (the agreement checks hold it to that). Where
    the log does not list them, the write's time is compared with Q's admission instead, which misjudges a
    write that carried a snapshot read before Q's admission. When each pod was admitted comes from the
    kubelet's log, or from `admitted` (pod name -> time of day in seconds) where a test plays the kubelet. Pods
    the kubelet `rejected` held nothing, and a pod gone before the resync rightly lost its reservation."""
    reserved = next((line for line in scheduler_log if '"post reserve"' in line and f'pod="{namespace}/{pod}"' in line
                     and f'node="{node}"' in line), None)  # fmt: skip
    if reserved is None or (reserved_at := _klog_time(reserved)) is None:
        return None
    # The cache drops every reservation on the node when it flushes it, a little after the check that matched
    # (FlushNodes waits for the cache's lock): reservations made between the two go too.
    flushing = [t for line in scheduler_log if '"flushing"' in line and f'node="{node}"' in line
                and (t := _klog_time(line)) is not None]  # fmt: skip
    resyncs = []
    for line in scheduler_log:
        matched = (m := FLUSH.search(line)) and m.group(1) == node and m.group(2) == m.group(3)
        if m and matched and (checked_at := _klog_time(line)) is not None:
            flushed_at = min((t for t in flushing if t >= checked_at), default=checked_at)
            if flushed_at <= reserved_at:
                resyncs.append((checked_at, flushed_at, m.group(2)))
    if not resyncs:
        return None
    checked_at, flushed_at, fingerprint = resyncs[-1]
    writes = [(_agent_time(line, m.group(1)), m.group(4)) for line in agent_log.splitlines()
              if (m := WRITTEN.search(line)) and m.group(2) == node and m.group(3) == fingerprint]  # fmt: skip
    written_at, named_text = max((w for w in writes if w[0] <= checked_at), default=(checked_at, None))
    named = set(ast.literal_eval(named_text)) if named_text else None
    allocated: dict[str, float] = dict(admitted or {})
    removed: dict[str, float] = {}
    for line in kubelet_log.splitlines():
        if (t := _klog_time(line)) is None:
            continue
        if '"AllocateCPUs"' in line and "result=" in line:
            found = re.search(rf'pod="{re.escape(namespace)}/([^"]+)"', line)
            if found:
                allocated.setdefault(found.group(1), t)
        elif '"SyncLoop REMOVE"' in line:
            for name in re.findall(rf'"{re.escape(namespace)}/([^"]+)"', line):
                removed.setdefault(name, t)
    held_nothing = set(rejected)
    # The other pods whose reservation on the node the flush dropped: reserved (or bound) there before it,
    # bound there in the end (a pod whose bind failed held nothing), neither unreserved nor gone first.
    ns = re.escape(namespace)
    reserved_before: dict[str, float] = {}
    bound_to_node: set[str] = set()
    unreserved: dict[str, float] = {}
    for line in scheduler_log:
        if (t := _klog_time(line)) is None or f'node="{node}"' not in line:
            continue
        if found := re.search(rf'"Successfully bound pod to node" pod="{ns}/([^"]+)"', line):
            bound_to_node.add(found.group(1))
            if t <= flushed_at:
                reserved_before.setdefault(found.group(1), t)
        elif (found := re.search(rf'"post reserve" .*pod="{ns}/([^"]+)"', line)) and t <= flushed_at:
            reserved_before[found.group(1)] = min(t, reserved_before.get(found.group(1), t))
        elif found := re.search(rf'"post unreserve" .*pod="{ns}/([^"]+)"', line):
            unreserved.setdefault(found.group(1), t)
    for other, t in sorted(reserved_before.items(), key=lambda item: item[1]):
        if other == pod or other not in bound_to_node or flushed_at - t >= 10 or other in held_nothing:
            continue
        if min(removed.get(other, float("inf")), unreserved.get(other, float("inf"))) <= flushed_at:
            continue
        if named is not None:
            unaccounted = f"{namespace}/{other}" not in named
        else:
            unaccounted = allocated.get(other, float("inf")) > written_at
        if unaccounted:
            return (f"{other} was reserved on {node} before the scheduler's cache flushed it on a resync from our "
                    f"object (fingerprint {fingerprint}, which did not account for {other} yet): the cache "
                    f"dropped that reservation though our zones could not subtract {other}")  # fmt: skip
    return None


def timeline(
    namespace: str, pod: str, node: str, *, scheduler_log: list[str], agent_log: str, kubelet_log: str, limit: int = 60
) -> list[str]:
    """What the scheduler, the agent and the kubelet logged about `pod` and `node` in the 10 s up to the pod's
    reservation and just after (the bind, the kubelet's verdict), in time order: the evidence of a rejection
    that `scheduler_race` could not explain, short enough for a CI log."""
    reserved = next((t for line in scheduler_log if '"post reserve"' in line and f'pod="{namespace}/{pod}"' in line
                     and (t := _klog_time(line)) is not None), None)  # fmt: skip
    if reserved is None:
        return [f"no reservation of {namespace}/{pod} in the scheduler's log"]
    start, end = reserved - 10, reserved + 5
    events: list[tuple[float, str]] = []
    for line in scheduler_log:
        t = _klog_time(line)
        if t is None or not start <= t <= end:
            continue
        if (f'pod="{namespace}/{pod}"' in line and ("reserve" in line or "bound" in line)) or (
            f'node="{node}"' in line and ("podset fingerprint check" in line or "flushing" in line
                                          or ("bound pod" in line and f'pod="{namespace}/' in line))):  # fmt: skip
            events.append((t, "scheduler " + line.split("]", 1)[-1].strip()[:400]))
    for line in agent_log.splitlines():
        if (m := WRITTEN.search(line)) and m.group(2) == node and start <= (t := _agent_time(line, m.group(1))) <= end:
            events.append((t, "agent " + line.split(": ", 1)[-1][:600]))
    for line in kubelet_log.splitlines():
        t = _klog_time(line)
        if (
            t is not None
            and start <= t <= end
            and f"{namespace}/" in line
            and any(key in line for key in ('"AllocateCPUs"', "SyncLoop", "admit", "Admit", "TopologyAffinity"))
        ):
            events.append((t, "kubelet " + line.split("]", 1)[-1].strip()[:300]))
    events.sort()
    return [f"{_clock(t)} {text}" for t, text in events][-limit:]


def _clock(t: float) -> str:
    """HH:MM:SS.ffffff of a time on the scale of `_seconds`."""
    micros = round(t * 1e6) % (86400 * 10**6)
    seconds, micros = divmod(micros, 10**6)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{micros:06d}"

"""Pods the kubelet rejects after the scheduler bound them, and pods that fit left waiting: on real kubelets.

Real kubelets v1.36.2 (../shared/k8s/start-node, 2 NUMA nodes, 32 CPUs, 64 GiB and 2 GPUs per NUMA node each,
single-numa-node, container scope), one agent per node, the real scheduler, one seeded workload of Guaranteed
pods in bursts (many bound before any is admitted) and churn (Running pods deleted while the next burst
arrives), under these arms:

  blind       the default scheduler: no NUMA filter at all
  ours        NodeResourceTopologyMatch over our objects as users run it: scheduler-plugins' defaults (Dedicated
              informer, Reserve on) with cacheResyncPeriodSeconds 5 (its documented example), the agents with the
              chart's defaults (told Dedicated and 5 s)
  ours-1s     the same with a 1 s resync and the Shared informer, the agents told so
  ours-1s-backoff2
              the same with the scheduler's podMaxBackoffSeconds at 2 (10 by default): its retries of the pods
              it turned away come sooner
  rte         the same scheduler as `ours` over the real resource-topology-exporter v0.19 (../shared/k8s/start-rte,
              upstream's DaemonSet flags: a 60 s poll of podresources, the pods fingerprint)
  rte-hook    the same, its notify file touched whenever a kubelet's podresources pods change (polled every
              50 ms), as upstream's OCI hook does at every container start and stop in production
  no-reserve  ours without the scheduler's reserve cache (cacheResyncPeriodSeconds 0, no Reserve plugin)
  ours-at-flush, ours-1s-at-flush
              not the product: ours and ours-1s with one outside hand, a requeue at the moment the scheduler's
              log says its cache flushed (an update of an NRT object of its own, REQUEUE_OBJECT, named for no
              node: the event the plugin retries every pod it turned away on, and no agent's write to wait
              on). The agents' own requeues still come; this one comes at the flush, which no agent sees

Nothing outside the scheduler, the kubelets and the agents acts: no requeue, retry or touch of any object.
Per arm and seed: pods rejected after binding (TopologyAffinityError / UnexpectedAdmissionError: the kubelet's
own verdict); time from creation to Running (p50, p99, max); after the last change, the pods left Pending that
some node's kubelet would admit right now (kubelet-oracle on that node's state files, the kubelet's own
managers) at 10 s, at the scheduler's own delays (two resync periods, the requeue margin, its longest retry
backoff, 10 s by default, the debounce) and at 60 s; CPUs held by Running pods at the end; how many times the scheduler tried
each pod (p50, p99: its log; each failed try doubles that pod's backoff); NRT writes per node (the API
server's own count of create, update and patch requests on noderesourcetopologies).

    .venv/bin/python bench/admission.py [--nodes 5] [--pods 300] [--seeds 1,2,3] [--arms blind,ours,...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, real_control_plane
from tests.controlplane import AGENT_USER, NRT_PATH, ControlPlane, wait_until
from tests.daemon import Daemon
from tests.oracle import SHARED_K8S
from tests.realnodes import (
    RealNode,
    agent,
    kubelet_account,
    real_machine,
    require_real_nodes,
    start_real_node,
)
from tests.workload import (
    BACKOFF_MAX_SECONDS,
    Workload,
    allowance,
    log_size,
    pending_that_fit_after,
    scheduler_log_since,
    scheduler_race,
)


@dataclass(frozen=True)
class Arm:
    scheduler: str
    agent_flags: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # ControlPlane.start_scheduler keyword arguments
    rte: bool = False  # the real resource-topology-exporter instead of our agent
    hook: bool = False  # its notify file touched on every change of a kubelet's pods, as upstream's OCI hook
    at_flush: bool = False  # an outside requeue at each flush of the scheduler's cache (its log)

    @property
    def resync(self) -> int:
        return int(dict(self.options).get("resync_seconds", 0))

    @property
    def allowance(self) -> float:
        return allowance(self.resync, float(dict(self.options).get("max_backoff_seconds", BACKOFF_MAX_SECONDS)))


DEDICATED_5S = (("informer_mode", "Dedicated"), ("resync_seconds", 5))
ARMS = {
    "blind": Arm("default-scheduler"),
    "ours": Arm("topo-aware-scheduler", options=DEDICATED_5S),
    "ours-1s": Arm(
        "topo-aware-scheduler",
        agent_flags=("--nrt-scheduler-informer-mode", "Shared", "--nrt-scheduler-resync-seconds", "1"),
        options=(("informer_mode", "Shared"), ("resync_seconds", 1)),
    ),
    "ours-1s-backoff2": Arm(
        "topo-aware-scheduler",
        agent_flags=("--nrt-scheduler-informer-mode", "Shared", "--nrt-scheduler-resync-seconds", "1"),
        options=(("informer_mode", "Shared"), ("resync_seconds", 1), ("max_backoff_seconds", 2)),
    ),
    "ours-at-flush": Arm("topo-aware-scheduler", options=DEDICATED_5S, at_flush=True),
    "ours-1s-at-flush": Arm(
        "topo-aware-scheduler",
        agent_flags=("--nrt-scheduler-informer-mode", "Shared", "--nrt-scheduler-resync-seconds", "1"),
        options=(("informer_mode", "Shared"), ("resync_seconds", 1)),
        at_flush=True,
    ),
    "rte": Arm("topo-aware-scheduler", options=DEDICATED_5S, rte=True),
    "rte-hook": Arm("topo-aware-scheduler", options=DEDICATED_5S, rte=True, hook=True),
    "no-reserve": Arm(
        "topo-aware-scheduler",
        agent_flags=("--nrt-scheduler-resync-seconds", "0"),
        options=(("resync_seconds", 0), ("reserve", False)),
    ),
}


@dataclass
class Result:
    arm: str
    seed: int
    rejected: int
    running: int
    p50: float
    p99: float
    slowest: float
    pending: int
    fit_at: dict[float, int]  # seconds after the last change -> pods Pending that a kubelet would admit
    cpus: int  # held by Running pods at the end
    writes_per_node: float
    seconds: float
    races: int = 0  # rejections the scheduler cache's own race explains (tests/workload.py scheduler_race)
    allowance: float = 0.0  # the scheduler's own delays in this arm (allowance())
    tries: tuple[float, float] = (0.0, 0.0)  # scheduling attempts per pod, p50 and p99 (the scheduler's log)
    at_flush: int = 0  # the -at-flush arms' outside requeues (not in writes_per_node: the agents' own)


class Agents:
    """One agent per node: ours (tests/realnodes.py agent) or the real RTE (start-rte), and the hook player."""

    def __init__(self, kube: ControlPlane, nodes: list[RealNode], arm: Arm, bin_dir: Path) -> None:
        self.kube, self.nodes, self.arm = kube, nodes, arm
        self.daemons: list[Daemon] = []
        self._stop = threading.Event()
        self._hook: threading.Thread | None = None
        self._at_flush: threading.Thread | None = None
        self.flush_updates = 0  # the -at-flush arms' requeues the API server was asked for (answered or not)
        self.hand_writes = 0  # and the creation of their object
        self.flush_error: str | None = None
        for node in nodes:
            kube.delete_nrt(node.name)
            if arm.rte:
                env = {**os.environ, "BIN_DIR": str(bin_dir)}
                subprocess.run([str(SHARED_K8S / "start-rte"), str(node.directory), node.name,
                                str(kube.kubeconfig("admin"))], env=env, check=True, timeout=120)  # fmt: skip
            else:
                # agent() runs the chart's resync and debounce; an arm's own flags come later and win.
                self.daemons.append(agent(kube, node, user=AGENT_USER, extra=list(arm.agent_flags)))
        for node in nodes:
            wait_until(lambda node=node: kube.nrt(node.name), timeout=60, what=f"the NRT of {node.name}")
        if arm.hook:
            self._hook = threading.Thread(target=self._play_hook, daemon=True)
            self._hook.start()

    def _play_hook(self) -> None:
        """Upstream runs an OCI hook at every container start and stop that touches RTE's notify file; the fake
        runtime runs none, so a change of the pods in a kubelet's podresources List (polled every 50 ms) plays it."""
        seen: dict[str, frozenset[tuple[str, str]]] = {}
        while not self._stop.wait(0.05):
            for node in self.nodes:
                try:
                    pods = kubelet_account(node).pods
                except Exception:  # the kubelet restarting: the next poll sees it
                    continue
                if seen.get(node.name, pods) != pods:
                    (node.directory / "run" / "rte" / "notify").touch()
                seen[node.name] = pods

    def requeue_at_flush(self, offset: int) -> None:
        """Start the -at-flush arms' hand, reading the scheduler's log from `offset` (the scheduler started there:
        call it once the scheduler runs, its log past the previous one's lines)."""
        body = {"apiVersion": "topology.node.k8s.io/v1alpha2", "kind": "NodeResourceTopology",
                "metadata": {"name": REQUEUE_OBJECT}, "zones": [], "attributes": []}  # fmt: skip
        self.kube.request("DELETE", f"{NRT_PATH}/{REQUEUE_OBJECT}")
        self.kube.ok("POST", NRT_PATH, body)
        self.hand_writes = 1
        self._at_flush = threading.Thread(target=self._requeue_at_flush, args=(offset,), daemon=True)
        self._at_flush.start()

    def _requeue_at_flush(self, offset: int) -> None:
        """The scheduler's log, polled every 20 ms, says when its cache flushed nodes (one tick flushes every
        dirty node); REQUEUE_OBJECT is updated once per batch of such lines."""
        buffered = b""
        try:
            with (self.kube.root / "kube-scheduler-nrt.log").open("rb") as stream:
                stream.seek(offset)
                while not self._stop.wait(0.02):
                    flushed, buffered = flushes(buffered + stream.read())
                    if flushed & {node.name for node in self.nodes}:
                        patch = {"metadata": {"annotations": {"bench/flushed": str(self.flush_updates)}}}
                        self.flush_updates += 1
                        self.hand_writes += 1
                        self.kube.request("PATCH", f"{NRT_PATH}/{REQUEUE_OBJECT}", patch,
                                          content_type="application/merge-patch+json")  # fmt: skip
        except OSError as exc:  # said by run_arm, which fails the arm
            self.flush_error = f"the requeue at each flush stopped: {exc}"

    def logs(self, index: int) -> str:
        if self.arm.rte:
            return (self.nodes[index].directory / "rte.log").read_text(errors="replace")
        return self.daemons[index].text

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._hook, self._at_flush):
            if thread is not None:
                thread.join(timeout=5)
        if self._at_flush is not None:
            self.kube.request("DELETE", f"{NRT_PATH}/{REQUEUE_OBJECT}")
        for daemon in self.daemons:
            daemon.stop()
        for node in self.nodes:
            node.kill("resource-topology-exporter")


FLUSHING = re.compile(r'"flushing" .*node="([^"]+)"')
REQUEUE_OBJECT = "bench-requeue-at-flush"  # an NRT object for no node: its updates are the -at-flush arms' events


def flushes(data: bytes) -> tuple[set[str], bytes]:
    """The nodes the scheduler's cache flushed in the complete lines of `data`, and the partial last line."""
    *lines, rest = data.split(b"\n")
    return {m.group(1) for line in lines if (m := FLUSHING.search(line.decode(errors="replace")))}, rest


NRT_WRITE = re.compile(r'^apiserver_request_total\{(?=[^}]*resource="noderesourcetopologies")(?=[^}]*verb="(\w+)")[^}]*\} (\S+)$')


def nrt_writes(kube: ControlPlane) -> float:
    """Create, update and patch requests on noderesourcetopologies the API server has served (its own count)."""
    text = kube.request("GET", "/metrics", raw=True).body.decode()
    return sum(float(m.group(2)) for line in text.splitlines()
               if (m := NRT_WRITE.match(line)) and m.group(1).upper() in ("POST", "PUT", "PATCH", "APPLY", "CREATE", "UPDATE"))  # fmt: skip


SYSTEM = "numa-system"


def system_pods(kube: ControlPlane, nodes: list[RealNode]) -> None:
    """What every node of a cluster runs whatever the workload: the agent's own DaemonSet pod (BestEffort, bound
    by the DaemonSet controller). It matters to the scheduler's cache: scheduler-plugins 903da7df resyncs only
    nodes where it lists a pod ("cannot find any pod for node": a node emptied by churn stays overreserved for
    good), and on a cluster no node is ever without one."""
    kube.ensure_namespace(SYSTEM)
    for node in nodes:
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"agent-{node.name}"},
                "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 0,
                         "containers": [{"name": "agent", "image": "numa-topology-exporter"}]}}  # fmt: skip
        kube.ok("POST", f"/api/v1/namespaces/{SYSTEM}/pods", body)
    for node in nodes:
        path = f"/api/v1/namespaces/{SYSTEM}/pods/agent-{node.name}"
        wait_until(lambda path=path: kube.ok("GET", path)["status"].get("phase") == "Running", timeout=60,
                   what=f"the system pod on {node.name}")  # fmt: skip


def quiet(kube: ControlPlane, nodes: list[RealNode]) -> None:
    """Every kubelet holds no pod but the system ones."""
    for node in nodes:
        wait_until(lambda node=node: not {p for p in kubelet_account(node).pods if p[0] != SYSTEM}, timeout=120,
                   what=f"{node.name} empty")  # fmt: skip


ATTEMPT = re.compile(r'"Attempting to schedule pod" pod="([^"]+)"')


def tries(scheduler_log: list[str], namespace: str) -> list[float]:
    """How many times the scheduler tried each pod of `namespace` (its `--v=3` "Attempting to schedule pod"):
    every try that fails doubles the pod's backoff."""
    counts: dict[str, int] = {}
    for line in scheduler_log:
        if (match := ATTEMPT.search(line)) and match.group(1).startswith(namespace + "/"):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return [float(count) for count in counts.values()]


def cpus_held(work: Workload) -> int:
    return sum(
        int(container["resources"]["requests"]["cpu"])
        for pod in work.pods()
        if pod["status"].get("phase") == "Running"
        for container in pod["spec"]["containers"]
    )


def run_arm(kube: ControlPlane, nodes: list[RealNode], name: str, seed: int, *, pods: int, bin_dir: Path) -> Result:
    arm = ARMS[name]
    agents = Agents(kube, nodes, arm, bin_dir)
    started = time.monotonic()
    writes_before = nrt_writes(kube)
    log_from = log_size(kube)  # the scheduler appends to one log across its restarts: this arm's part only
    try:
        kube.stop_scheduler()
        started_at = log_size(kube)
        # --v=4: the cache's fingerprint checks and flushes are logged (the race column reads them), not every
        # filter step of every attempt (--v=5 writes ~10 lines per node per attempt, and this machine's 2 cores
        # are the scheduler's too).
        kube.start_scheduler(**{"verbosity": 4, **dict(arm.options)})
        if arm.at_flush:
            agents.requeue_at_flush(started_at)
        work = Workload(kube, f"bench-{name}-{seed}", scheduler=arm.scheduler, seed=seed)
        burst = max(10, pods // 10)
        while work.outcome.created < pods:
            work.burst(min(burst, pods - work.outcome.created))
            work.settle(timeout=300)
            if work.outcome.created >= pods:
                break
            victims = work.churn(0.4)
            work.burst(min(burst // 3, pods - work.outcome.created))
            wait_until(lambda v=victims: work.gone(v), timeout=120, what="the deleted pods gone", interval=0.2)
            work.settle(timeout=300)
        points = sorted({10.0, arm.allowance, 60.0})
        fit = pending_that_fit_after(work, nodes, points)
        outcome = work.outcome
        items = work.pods()
        if arm.at_flush and (agents.flush_error or not agents.flush_updates):
            raise AssertionError(agents.flush_error or f"{name}: the scheduler's log showed no flush to requeue at")
        scheduler_log = scheduler_log_since(kube, log_from)[0]
        attempts = tries(scheduler_log, work.namespace)
        result = Result(
            arm=name, seed=seed, rejected=len(outcome.rejected), running=outcome.running,
            p50=outcome.percentile(0.5), p99=outcome.percentile(0.99), slowest=outcome.percentile(1.0),
            pending=sum(1 for pod in items if not pod["spec"].get("nodeName")),
            fit_at={point: len(names) for point, names in fit.items()}, cpus=cpus_held(work),
            writes_per_node=(nrt_writes(kube) - writes_before - agents.hand_writes) / len(nodes),
            seconds=time.monotonic() - started, at_flush=agents.flush_updates, allowance=arm.allowance,
            tries=(outcome.percentile(0.5, attempts), outcome.percentile(0.99, attempts)),
        )  # fmt: skip
        for line in outcome.rejected:
            pod, node = line.split(" ", 1)[0], line.split(" on ", 1)[1].split(":", 1)[0]
            index = [n.name for n in nodes].index(node)
            why = scheduler_race(work.namespace, pod, node, scheduler_log=scheduler_log,
                                 kubelet_log=nodes[index].log(), agent_log=agents.logs(index))  # fmt: skip
            result.races += why is not None
            print(f"  {name} seed {seed} rejected: {line[:160]}" + (f" [scheduler race: {why[:120]}]" if why else ""),
                  flush=True)  # fmt: skip
        work.cleanup()
        quiet(kube, nodes)
        return result
    finally:
        agents.stop()


GOAL_RATIO = 2.0  # p99 to Running at most this many times the blind scheduler's (issue 30)


def missed(result: Result, blind: Result | None, *, p99: bool = True) -> list[str]:
    """What `result` misses of the goal: 0 rejected after binding but for the scheduler cache's own race, 0 pods
    that fit left Pending past the scheduler's own delays, as many CPUs held as blind, p99 within GOAL_RATIO
    (unless `p99` is False)."""
    misses = [f"{result.rejected - result.races} rejected"] if result.rejected > result.races else []
    for point, count in sorted(result.fit_at.items()):
        if point >= result.allowance and count:
            misses.append(f"{count} that fit Pending at {point:g} s")
    if blind is None:
        return [*misses, "CPUs and p99 not judged: no blind run of this seed"]
    if result.cpus < blind.cpus:
        misses.append(f"{result.cpus} CPUs held against {blind.cpus}")
    if p99 and not result.p99 <= GOAL_RATIO * blind.p99:  # NaN (no pod ran) is a miss too
        misses.append(f"p99 {result.p99:.1f} s > {GOAL_RATIO:g} x {blind.p99:.1f} s")
    return misses


def reach(result: Result, blind: Result | None, results: list[Result]) -> str:
    """Where `result` misses the p99 goal, how the same arm did with a requeue at each flush of the scheduler's
    cache (its -at-flush arm, same seed): within the goal (the rest is the flush's moment, which no agent
    sees) or not either."""
    other = next((r for r in results if r.arm == f"{result.arm}-at-flush" and r.seed == result.seed), None)
    if blind is None or not blind.p99 > 0 or other is None or not other.at_flush:
        return ""
    goal = GOAL_RATIO * blind.p99
    if result.p99 <= goal:
        return ""
    verdict = "within it: the rest is the flush's moment" if other.p99 <= goal else "not within it either"
    ratio = other.p99 / blind.p99
    return f"; with a requeue at each flush ({other.arm}): p99 {other.p99:.1f} s, {ratio:.1f} x blind, {verdict}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--pods", type=int, default=300)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--arms", default=",".join(ARMS))
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    arms = args.arms.split(",")
    bin_dir = require_real_nodes()
    root = Path(tempfile.mkdtemp(prefix="bench-admission-"))
    results: list[Result] = []
    with real_control_plane() as kube:
        nodes = [
            RealNode(f"bench-{i}", root / f"node-{i}", real_machine(root / f"machine-{i}"), kube.kubeconfig("admin"))
            for i in range(args.nodes)
        ]
        for node in nodes:
            # RTE reads each NUMA node's hugepages directory and refuses to start without one: an empty one, no
            # hugepages (what the kubelet sees on this machine either way).
            for numa in node.machine.node_dir.glob("node[0-9]*"):
                (numa / "hugepages").mkdir(exist_ok=True)
        try:
            for node in nodes:
                start_real_node(kube, node, bin_dir)
            system_pods(kube, nodes)
            for seed in seeds:
                for name in arms:
                    result = run_arm(kube, nodes, name, seed, pods=args.pods, bin_dir=bin_dir)
                    results.append(result)
                    print(f"{name} seed {seed}: {result}", flush=True)
        finally:
            for node in nodes:
                node.kill("resource-topology-exporter")
                node.stop()
    print(f"\n{args.nodes} real kubelets, {args.pods} pods per run, seeds {args.seeds}; nothing requeued by hand but in "
          "the -at-flush arms (a requeue at each flush the scheduler's log shows)\n")
    rows = []
    for name in arms:
        mine = [r for r in results if r.arm == name]
        if not mine:
            continue
        rows.append((
            name,
            " / ".join(f"{r.rejected} ({r.races})" if r.rejected else "0" for r in mine),
            "; ".join(f"{r.p50:.1f} / {r.p99:.1f} / {r.slowest:.1f}" for r in mine),
            " / ".join(str(r.pending) for r in mine),
            " / ".join(":".join(str(r.fit_at[point]) for point in (10.0, r.allowance, 60.0)) for r in mine),
            " / ".join(str(r.cpus) for r in mine),
            "; ".join(f"{r.tries[0]:.0f} / {r.tries[1]:.0f}" for r in mine),
            " / ".join(f"{r.writes_per_node:.0f} ({r.writes_per_node * 3600 / r.seconds:.0f}/h)" for r in mine),
        ))  # fmt: skip
    print_table(("arm", "rejected after binding (scheduler cache race), per seed", "s to Running p50 / p99 / max; ...",
                 "pending at end", "pending that fit at 10 s : delays : 60 s", "CPUs held", "tries per pod p50 / p99; ...",
                 "NRT writes per node (per hour of run)"), rows)  # fmt: skip
    print()
    for result in results:
        if result.arm in ("blind", "rte", "rte-hook"):
            continue
        blind = next((r for r in results if r.arm == "blind" and r.seed == result.seed), None)
        misses = missed(result, blind)
        ratio = f", p99 {result.p99 / blind.p99:.1f} x blind" if blind is not None and blind.p99 > 0 else ""
        print(f"goal, {result.arm} seed {result.seed}: " + ("met" if not misses else "missed: " + "; ".join(misses))
              + ratio + reach(result, blind, results))  # fmt: skip
    return headline(results)


def headline(results: list[Result]) -> int:
    """The exit status: 1 where the chart's defaults (`ours`) miss a part of the goal that is the agent's to
    reach: a rejection the cache's race does not explain, a pod that fits left Pending past the scheduler's own
    delays, fewer CPUs held than blind. The p99 is judged above, beside its bound."""
    owed = []
    for result in results:
        blind = next((r for r in results if r.arm == "blind" and r.seed == result.seed), None)
        if result.arm == "ours" and blind is not None:
            owed += [f"seed {result.seed}: {miss}" for miss in missed(result, blind, p99=False)]
    if any(result.arm == "ours" for result in results):
        print("goal of the chart's defaults (ours), the p99 aside: " + ("; ".join(owed) if owed else "met"))
    return 1 if owed else 0


if __name__ == "__main__":
    sys.exit(main())

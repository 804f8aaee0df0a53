"""Pods the kubelet rejects after the scheduler bound them: the number this product exists for, on real kubelets.

Real kubelets v1.36.2 (../shared/k8s/start-node, 2 NUMA nodes, 32 CPUs, 64 GiB and 2 GPUs per NUMA node each,
single-numa-node, container scope), one agent per node, the real scheduler, one seeded workload of Guaranteed
pods in bursts (many bound before any is admitted) and churn (Running pods deleted while the next burst
arrives), under five arms:

  blind            the default scheduler: no NUMA filter at all
  ours             NodeResourceTopologyMatch over our objects (Shared informer, 1 s resync, Reserve on; the
                   agents told Shared)
  dedicated        the same with scheduler-plugins' default informer mode (Dedicated: it also counts finished
                   and rejected pods in its fingerprint; the agents told so, their default)
  reference-style  the same scheduler over objects published the way resource-topology-exporter publishes by
                   default: a full write at most every 60 s, no pod fingerprint (our agent with
                   --nrt-min-interval 60 --resync-interval 60 --nrt-fingerprint-method none)
  no-reserve       ours without the scheduler's reserve cache (cacheResyncPeriodSeconds 0, no Reserve plugin)

Per arm and seed: pods rejected after binding (TopologyAffinityError / UnexpectedAdmissionError: the kubelet's
own verdict), pods Running at the end, time from creation to Running (p50, p99), the bind-to-admission window
(from first seen bound to first seen Running or Failed, polled every 0.1 s), pods left Pending at the end,
and of those the ones some node's kubelet would admit right now (kubelet-oracle on that node's state files,
the kubelet's own managers). The headline is the first number.

    .venv/bin/python bench/admission.py [--nodes 5] [--pods 300] [--seeds 1,2,3] [--arms blind,ours,...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, real_control_plane
from tests.controlplane import AGENT_USER, ControlPlane, wait_until
from tests.daemon import Daemon
from tests.realnodes import (
    RealNode,
    agent,
    kubelet_account,
    kubelet_would_admit,
    real_machine,
    require_real_nodes,
    start_real_node,
)
from tests.workload import Workload, retry_pending, scheduler_race


@dataclass(frozen=True)
class Arm:
    scheduler: str
    agent_flags: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # ControlPlane.start_scheduler keyword arguments


ARMS = {
    "blind": Arm("default-scheduler"),
    "ours": Arm(
        "topo-aware-scheduler",
        agent_flags=("--nrt-scheduler-informer-mode", "Shared"),
        options=(("informer_mode", "Shared"), ("resync_seconds", 1)),
    ),
    "dedicated": Arm("topo-aware-scheduler", options=(("informer_mode", "Dedicated"), ("resync_seconds", 1))),
    "reference-style": Arm(
        "topo-aware-scheduler",
        agent_flags=(
            "--nrt-min-interval",
            "60",
            "--resync-interval",
            "60",
            "--nrt-fingerprint-method",
            "none",
            "--nrt-scheduler-informer-mode",
            "Shared",
        ),
        options=(("informer_mode", "Shared"), ("resync_seconds", 1)),
    ),
    "no-reserve": Arm("topo-aware-scheduler", options=(("resync_seconds", 0), ("reserve", False))),
}


@dataclass
class Result:
    arm: str
    seed: int
    rejected: int
    running: int
    p50: float
    p99: float
    bind_p50: float
    bind_p99: float
    pending: int
    pending_that_fit: int
    seconds: float
    races: int = 0  # rejections the scheduler cache's own race explains (tests/workload.py scheduler_race)


def start_agents(kube: ControlPlane, nodes: list[RealNode], flags: tuple[str, ...]) -> list[Daemon]:
    agents = []
    for node in nodes:
        kube.delete_nrt(node.name)
        # --resync-interval 5 comes first in agent(); a later one in `flags` wins (argparse keeps the last).
        agents.append(agent(kube, node, user=AGENT_USER, extra=list(flags)))
    for node in nodes:
        wait_until(lambda node=node: kube.nrt(node.name), timeout=60, what=f"the NRT of {node.name}")
    return agents


def quiet(kube: ControlPlane, nodes: list[RealNode]) -> None:
    """Every kubelet holds no pod and every NRT says so."""
    for node in nodes:
        wait_until(lambda node=node: not kubelet_account(node).pods, timeout=120, what=f"{node.name} empty")


def pending_that_fit(kube: ControlPlane, nodes: list[RealNode], pending: list[dict[str, Any]]) -> int:
    live: dict[str, frozenset[str]] = {}
    for node in nodes:
        pods = kube.ok("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={node.name}")["items"]
        live[node.name] = frozenset(p["metadata"]["uid"] for p in pods if p["status"].get("phase") != "Failed")
    verdicts: dict[tuple[tuple[str, str], ...], bool] = {}
    fit = 0
    for pod in pending:
        resources = pod["spec"]["containers"][0]["resources"]["requests"]
        key = tuple(sorted(resources.items()))
        if key not in verdicts:
            verdicts[key] = any(kubelet_would_admit(node, live[node.name], resources) for node in nodes)
        fit += verdicts[key]
    return fit


def run_arm(kube: ControlPlane, nodes: list[RealNode], name: str, seed: int, pods: int) -> Result:
    arm = ARMS[name]
    agents = start_agents(kube, nodes, arm.agent_flags)
    started = time.monotonic()
    try:
        kube.stop_scheduler()
        options = dict(arm.options)
        kube.start_scheduler(**options)
        cache = arm.scheduler != "default-scheduler" and options.get("resync_seconds", 1) > 0
        names = [node.name for node in nodes]
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
            retry_pending(work, names, cache=cache, cache_timeout=10)
        items = retry_pending(work, names, cache=cache, cache_timeout=10)
        outcome = work.outcome
        pending = [pod for pod in items if not pod["spec"].get("nodeName")]
        result = Result(
            arm=name, seed=seed, rejected=len(outcome.rejected), running=outcome.running,
            p50=outcome.percentile(0.5), p99=outcome.percentile(0.99), pending=len(pending),
            bind_p50=outcome.percentile(0.5, outcome.bind_to_admission),
            bind_p99=outcome.percentile(0.99, outcome.bind_to_admission),
            pending_that_fit=pending_that_fit(kube, nodes, pending), seconds=time.monotonic() - started,
        )  # fmt: skip
        for line in outcome.rejected:
            pod, node = line.split(" ", 1)[0], line.split(" on ", 1)[1].split(":", 1)[0]
            index = [n.name for n in nodes].index(node)
            why = scheduler_race(work.namespace, pod, node, scheduler_log=kube.log("kube-scheduler-nrt").splitlines(),
                                 kubelet_log=nodes[index].log(), agent_log=agents[index].text)  # fmt: skip
            result.races += why is not None
            print(f"  {name} seed {seed} rejected: {line[:160]}" + (f" [scheduler race: {why[:120]}]" if why else ""),
                  flush=True)  # fmt: skip
        work.cleanup()
        quiet(kube, nodes)
        return result
    finally:
        for daemon in agents:
            daemon.stop()


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
        try:
            for node in nodes:
                start_real_node(kube, node, bin_dir)
            for seed in seeds:
                for name in arms:
                    result = run_arm(kube, nodes, name, seed, args.pods)
                    results.append(result)
                    print(f"{name} seed {seed}: {result}", flush=True)
        finally:
            for node in nodes:
                node.stop()
    print(f"\n{args.nodes} real kubelets, {args.pods} pods per run, seeds {args.seeds}\n")
    rows = []
    for name in arms:
        mine = [r for r in results if r.arm == name]
        rows.append((
            name,
            " / ".join(f"{r.rejected} ({r.races})" if r.rejected else "0" for r in mine),
            sum(r.rejected for r in mine),
            " / ".join(str(r.running) for r in mine),
            " / ".join(f"{r.p50:.1f}" for r in mine),
            " / ".join(f"{r.p99:.1f}" for r in mine),
            " / ".join(f"{r.bind_p50:.2f} / {r.bind_p99:.2f}" for r in mine),
            " / ".join(str(r.pending) for r in mine),
            " / ".join(str(r.pending_that_fit) for r in mine),
        ))  # fmt: skip
    print_table(("arm", "rejected after binding (of which the scheduler cache's race), per seed", "total", "running at end", "p50 s to Running",
                 "p99 s", "bind to admission p50 / p99 s", "pending at end", "pending that would fit"), rows)  # fmt: skip
    blind = sum(r.rejected for r in results if r.arm == "blind")
    ours = sum(r.rejected for r in results if r.arm == "ours")
    if "blind" in arms and "ours" in arms:
        print(f"\nheadline: a blind scheduler lost {blind} pods to the kubelet's admission, ours {ours}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

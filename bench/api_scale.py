"""API cost at scale: N agents (default 50) publishing to one real kube-apiserver v1.36.2.

Each agent is the real daemon, run as the chart runs it (every capability dropped, the chart's
ServiceAccount token and RBAC, default resync of 60 s), over its own fixture host and kubelet directory,
with its own Node. All of them talk through one recording proxy (tests/faultproxy.py, no faults), which
counts every request they make; this benchmark's own requests (creating pods, marking them Running) go
to the server directly and are not counted. Phases:

  baseline          the control plane alone (its own CPU use, subtracted below)
  start             N agents start: each creates its NRT, lists and watches its pods and its NRT
  idle              nothing changes for --idle seconds (longer than the 300 s watch timeout, so every
                    watch is renewed at least once)
  churn-ordinary    every 10 s on every node a BestEffort pod starts (created, Running) or stops (deleted)
  churn-exclusive   every 10 s on every node a Guaranteed pod with 2 pinned CPUs starts (created, its CPUs
                    in cpu_manager_state, Running) or stops

Per agent and hour: requests by kind (list, watch, get, create, update), writes, open watch connections,
and the API server's and etcd's CPU seconds beyond the baseline. Compared with resource-topology-exporter's
policy (one write per 60 s scan) and the pod-list storm reported against node-feature-discovery's
topology-updater (about 900 GET pods/s at 700 nodes), extrapolated to 5,000 nodes.

    .venv/bin/python bench/api_scale.py [--agents 50] [--idle 330] [--churn 120]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import print_table, real_control_plane
from tests.controlplane import AGENT_USER, NRT_PATH, ControlPlane
from tests.daemon import Daemon, wait_for
from tests.faultproxy import FaultProxy, Seen
from tests.hosttree import HostTree, fixture_machine
from tests.kubelet_files import cpu_state, fixture_config, install, replace_atomically

HOUR = 3600.0
CHURN_EVERY = 10.0
NODES = 5000
REFERENCE_WRITES_PER_HOUR = 60  # resource-topology-exporter: one update per 60 s scan
NFD_GETS_PER_SECOND, NFD_NODES = 900, 700  # the reported topology-updater pod-list storm
NAMESPACE = "scale"
ALL_CPUS = range(32)


@dataclass
class Phase:
    name: str
    seconds: float
    requests: list[Seen]
    apiserver_cpu: float
    etcd_cpu: float
    watches_open: int


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kind(seen: Seen) -> str:
    if seen.method == "GET":
        if seen.watch:
            return "watch"
        parts = seen.path.strip("/").split("/")
        resource = parts[2:] if parts[0] == "api" else parts[3:]
        return "get" if len(resource) > 1 else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(seen.method, seen.method)


def pod(name: str, node: str, *, exclusive: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "pause"}
    if exclusive:
        amounts = {"cpu": "2", "memory": "64Mi"}
        container["resources"] = {"requests": amounts, "limits": amounts}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [container]}}  # fmt: skip


class Fleet:
    def __init__(self, kube: ControlPlane, proxy: FaultProxy, agents: int, stack: contextlib.ExitStack) -> None:
        self.kube, self.proxy = kube, proxy
        self.nodes = [f"scale-{index:03d}" for index in range(agents)]
        self.hosts: dict[str, HostTree] = {}
        self.daemons: list[Daemon] = []
        self.stack = stack
        self.running: dict[str, str] = {}  # node -> uid of its churn pod, while it runs

    def start(self) -> None:
        kubeconfig = self.kube.kubeconfig(AGENT_USER, server=self.proxy.url)
        for node in self.nodes:
            self.kube.add_node(node)
            host = fixture_machine(Path(tempfile.mkdtemp(prefix=f"bench-{node}-")))
            install(host, cpu=cpu_state(default=ALL_CPUS, entries={}), config=fixture_config(memory="None"))
            self.hosts[node] = host
            extra = ["--kubeconfig", str(kubeconfig), "--node-name", node, "--debounce", "0", "--no-nvml",
                     "--log-level", "warning"]  # fmt: skip
            self.daemons.append(self.stack.enter_context(Daemon(host.paths, extra=extra)))
        wait_for(self._all_published, timeout=300, interval=1, what="every agent's NRT object and watches")

    def _all_published(self) -> bool:
        listed = self.kube.ok("GET", NRT_PATH)["items"]
        names = {item["metadata"]["name"] for item in listed}
        return set(self.nodes) <= names and self.proxy.open_streams() >= 2 * len(self.nodes)

    def step(self, *, exclusive: bool, tick: int) -> None:
        """Every node's churn pod starts on odd ticks and stops on even ones."""
        for node in self.nodes:
            name = f"churn-{node}-{tick // 2}"
            if node not in self.running:
                created = self.kube.ok(
                    "POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod(name, node, exclusive=exclusive)
                )
                uid = created["metadata"]["uid"]
                if exclusive:
                    pinned = {uid: {"app": [4, 20]}}
                    state = cpu_state(default=[c for c in ALL_CPUS if c not in (4, 20)], entries=pinned)
                    replace_atomically(self.hosts[node].paths.cpu_manager_state, state)
                created["status"] = {"phase": "Running"}
                self.kube.ok("PUT", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status", created)
                self.running[node] = name
            else:
                old = self.running.pop(node)
                self.kube.ok("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{old}?gracePeriodSeconds=0")
                if exclusive:
                    replace_atomically(
                        self.hosts[node].paths.cpu_manager_state, cpu_state(default=ALL_CPUS, entries={})
                    )

    def stop_churn(self, *, exclusive: bool) -> None:
        if self.running:
            self.step(exclusive=exclusive, tick=0)


def measure(kube: ControlPlane, proxy: FaultProxy, name: str, seconds: float, action: Callable[[float], None]) -> Phase:
    apiserver, etcd = kube.processes["kube-apiserver"].pid, kube.processes["etcd"].pid
    mark, cpu0, etcd0, started = proxy.mark(), cpu_seconds(apiserver), cpu_seconds(etcd), time.monotonic()
    action(seconds)
    elapsed = time.monotonic() - started
    return Phase(name, elapsed, proxy.requests(since=mark), cpu_seconds(apiserver) - cpu0, cpu_seconds(etcd) - etcd0,
                 proxy.open_streams())  # fmt: skip


def churning(fleet: Fleet, *, exclusive: bool) -> Callable[[float], None]:
    def run(seconds: float) -> None:
        deadline, tick = time.monotonic() + seconds, 1
        while time.monotonic() < deadline:
            next_tick = time.monotonic() + CHURN_EVERY
            fleet.step(exclusive=exclusive, tick=tick)
            tick += 1
            time.sleep(max(0.0, next_tick - time.monotonic()))
        fleet.stop_churn(exclusive=exclusive)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--baseline", type=float, default=60)
    parser.add_argument("--idle", type=float, default=330)
    parser.add_argument("--churn", type=float, default=120)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(real_control_plane())
        kube.ensure_namespace(NAMESPACE)
        proxy = FaultProxy(kube.url)
        stack.callback(proxy.close)
        fleet = Fleet(kube, proxy, args.agents, stack)
        phases = [measure(kube, proxy, "baseline (no agents)", args.baseline, time.sleep)]
        phases.append(measure(kube, proxy, "start", 0, lambda _: fleet.start()))
        phases.append(measure(kube, proxy, "idle", args.idle, time.sleep))
        phases.append(measure(kube, proxy, "churn-ordinary", args.churn, churning(fleet, exclusive=False)))
        phases.append(measure(kube, proxy, "churn-exclusive", args.churn, churning(fleet, exclusive=True)))
        report(phases, args.agents)


def report(phases: list[Phase], agents: int) -> None:
    baseline = phases[0]
    idle_cpu = baseline.apiserver_cpu / baseline.seconds
    idle_etcd = baseline.etcd_cpu / baseline.seconds
    kinds = ("list", "watch", "get", "create", "update")
    print(f"{agents} agents on one kube-apiserver v1.36.2; per agent, per hour (start: per agent, once)")
    rows = []
    for phase in phases[1:]:
        per = 1.0 / agents if phase.name == "start" else HOUR / phase.seconds / agents
        counts = Counter(kind(seen) for seen in phase.requests)
        writes = counts["create"] + counts["update"] + counts["patch"]
        extra_cpu = phase.apiserver_cpu - idle_cpu * phase.seconds
        extra_etcd = phase.etcd_cpu - idle_etcd * phase.seconds
        rows.append((
            phase.name, f"{phase.seconds:.0f}", *(f"{counts[k] * per:.1f}" for k in kinds),
            f"{sum(counts.values()) * per:.1f}", f"{writes * per:.1f}",
            f"{(extra_cpu + extra_etcd) * per:.3f}", phase.watches_open,
            f"{sum(counts.values()) * per * NODES / (1 if phase.name == 'start' else HOUR):.1f}",
        ))  # fmt: skip
    print_table(
        ("phase", "s", *kinds, "requests", "writes", "apiserver+etcd CPU s", "open watches (all agents)",
         "requests/s @5k nodes (start: total)"),
        rows,
    )  # fmt: skip
    print(f"control plane alone: apiserver {idle_cpu:.3f} CPU s/s, etcd {idle_etcd:.3f} CPU s/s")
    nfd_per_node_hour = NFD_GETS_PER_SECOND / NFD_NODES * HOUR
    print_table(
        ("peer (policy or report, not a run)", "requests per node per hour", "requests/s @5k nodes"),
        [("resource-topology-exporter: one update per 60 s", REFERENCE_WRITES_PER_HOUR,
          f"{REFERENCE_WRITES_PER_HOUR * NODES / HOUR:.1f}"),
         ("node-feature-discovery topology-updater: 900 GET pods/s at 700 nodes", f"{nfd_per_node_hour:.0f}",
          f"{nfd_per_node_hour * NODES / HOUR:.0f}")],
    )  # fmt: skip


if __name__ == "__main__":
    main()

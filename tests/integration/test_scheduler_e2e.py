"""End to end with the real consumer: several simulated nodes, one agent each, the real kube-scheduler with
NodeResourceTopologyMatch, and the kubelet played by the kubelet's own code.

Each node is a host tree (the fixture machine: 2 NUMA nodes, 32 CPUs, hugepages, 4 GPUs) with its own
kubelet directory and agent. Guaranteed pods of varied shapes are created one after another with
`schedulerName: topo-aware-scheduler`. Whenever the scheduler binds one, kubelet-oracle admits it on that
node's current state exactly as the kubelet would; the state files it writes (with the pod's real UID)
replace the node's, and the pod is marked Running, so the agent republishes. The measure of the product:
no pod is bound where the kubelet then rejects it (the mismatch count, goal 0), and the scheduler's cache
resyncs from our fingerprint rather than keeping nodes dirty.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.sources import device_checkpoint
from exporter.sources.kubelet_json import spew_checksum
from tests.controlplane import AGENT_USER, ControlPlane, wait_until
from tests.daemon import Daemon
from tests.hosttree import fixture_machine
from tests.kubelet_files import replace_atomically
from tests.oracle import GIB, MachineSpec, ask
from tests.workload import NrtChanges, race_seen

NODES = 3
PODS = int(os.environ.get("E2E_PODS", "200"))
NAMESPACE = "e2e"
GPU = "nvidia.com/gpu"
GPUS = (("0000:1a:00.0", 0), ("0000:1b:00.0", 0), ("0000:8a:00.0", 1), ("0000:8b:00.0", 1))
# The fixture machine (tests/hosttree.py): CPU i is core i % 16, socket (i % 16) // 8; siblings i, i + 16.
MACHINE = MachineSpec(
    cpus=[(i, (i % 16) // 8, i % 16, (i % 16) // 8) for i in range(32)],
    memory={0: 64 * GIB, 1: 64 * GIB},
    hugepages={0: {GIB: 4, 2 << 20: 512}, 1: {GIB: 4, 2 << 20: 512}},
    devices={GPU: [(address, (numa,), numa) for address, numa in GPUS]},
)
CONFIG: dict[str, Any] = {
    "cpuManagerPolicy": "static",
    "reservedSystemCPUs": "0,16",
    "memoryManagerPolicy": "Static",
    "kubeReserved": {"memory": "1948Mi"},
    "reservedMemory": [{"numaNode": 0, "limits": {"memory": "1Gi"}}, {"numaNode": 1, "limits": {"memory": "1Gi"}}],
    "topologyManagerPolicy": "single-numa-node",
    "topologyManagerScope": "container",
}
CONFIG_YAML = """\
kind: KubeletConfiguration
cpuManagerPolicy: static
reservedSystemCPUs: "0,16"
memoryManagerPolicy: Static
kubeReserved: {memory: 1948Mi}
reservedMemory:
- {numaNode: 0, limits: {memory: 1Gi}}
- {numaNode: 1, limits: {memory: 1Gi}}
topologyManagerPolicy: single-numa-node
topologyManagerScope: container
"""
CAPACITY = {"cpu": "32", "memory": "128Gi", "hugepages-1Gi": "8Gi", "hugepages-2Mi": "2Gi", GPU: "4", "pods": "110"}
COUNTS: dict[str, int] = {}


class KubeletPlayer:
    """The kubelet of one simulated node: admission by kubelet-oracle, state files written as it writes them."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.tree = fixture_machine(root / name)
        self.tree.kubelet.joinpath("config.yaml").write_text(CONFIG_YAML)
        fresh = ask(
            {
                "machine": MACHINE.oracle_machine(),
                "kubeletConfig": CONFIG,
                "devices": MACHINE.oracle_devices(),
                "queries": [{"type": "fit", "pod": {"requests": {"cpu": "1000", "memory": "1Gi"}}, "maxPods": 1}],
            }
        )
        self.state: dict[str, Any] = fresh["results"][0]["finalState"]
        self.write()

    def write(self) -> None:
        """The state as files. Renaming the oracle's pod UID changed what the checksums cover: the CPU and
        memory files take checksum 0 (both verifiers accept it), the device checkpoint is re-hashed."""
        self.state["cpu_manager_state"]["checksum"] = 0
        self.state["memory_manager_state"]["checksum"] = 0
        checkpoint = self.state["kubelet_internal_checkpoint"]
        checkpoint["Checksum"] = spew_checksum(device_checkpoint.hash_text(checkpoint["Data"], v1=False))
        files = {
            self.tree.paths.cpu_manager_state: self.state["cpu_manager_state"],
            self.tree.paths.memory_manager_state: self.state["memory_manager_state"],
            self.tree.paths.device_checkpoint: checkpoint,
        }
        for path, body in files.items():
            replace_atomically(path, json.dumps(body, separators=(",", ":")).encode())

    def _admit_on(self, pod: dict[str, Any], *, keep: bool) -> dict[str, Any]:
        """The oracle's `admit_on` for this pod's containers on this node's current state."""
        spec = {"containers": [{"name": c["name"], "resources": c["resources"]} for c in pod["spec"]["containers"]]}
        query = {"type": "admit_on", "pod": {"spec": spec}, "omitFinalState": not keep}
        request = {"machine": MACHINE.oracle_machine(), "kubeletConfig": CONFIG, "devices": MACHINE.oracle_devices(),
                   "state": self.state, "queries": [query]}  # fmt: skip
        result: dict[str, Any] = ask(request)["results"][0]
        return result

    def admit(self, pod: dict[str, Any]) -> tuple[bool, str]:
        result = self._admit_on(pod, keep=True)
        if "error" in result or not result.get("admitted"):
            return False, str(result.get("error") or result.get("rejection"))
        oracle_uid = result["pods"][0]["uid"]
        text = json.dumps(result["finalState"]).replace(oracle_uid, pod["metadata"]["uid"])
        self.state = json.loads(text)
        self.write()
        return True, ""

    def would_admit(self, pod: dict[str, Any]) -> bool:
        return bool(self._admit_on(pod, keep=False).get("admitted"))


def shape(rng: random.Random) -> dict[str, str]:
    resources = {
        "cpu": str(rng.choice([1, 2, 2, 4, 6, 8, 12])),
        "memory": rng.choice(["1Gi", "2Gi", "8Gi", "24Gi", "48Gi"]),
    }
    if rng.random() < 0.2:
        resources["hugepages-1Gi"] = rng.choice(["1Gi", "2Gi"])
    if rng.random() < 0.25:
        resources[GPU] = "1"
    return resources


@pytest.fixture(scope="module")
def cluster(
    kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[KubeletPlayer, Daemon]]]:
    kube.ensure_namespace(NAMESPACE)
    root = tmp_path_factory.mktemp("e2e")
    nodes: dict[str, tuple[KubeletPlayer, Daemon]] = {}
    try:
        for index in range(NODES):
            name = f"e2e-node-{index}"
            kube.add_node(name, capacity=CAPACITY)
            player = KubeletPlayer(root, name)
            extra = ["--kubeconfig", str(kube.kubeconfig(AGENT_USER)), "--node-name", name, "--resync-interval", "5",
                     "--debounce", "0.05", "--no-nvml", "--log-level", "debug",
                     "--nrt-scheduler-informer-mode", "Shared", "--nrt-scheduler-resync-seconds", "1"]  # fmt: skip
            nodes[name] = (player, Daemon(player.tree.paths, extra=extra))
        # Shared, the agents told so (the real-node tests run both modes): pods the played kubelet fails stay,
        # and Shared does not count them.
        kube.start_scheduler_after_nrts(nodes, informer_mode="Shared")
        yield nodes
    finally:
        for _, daemon in nodes.values():
            daemon.stop()


def test_no_pod_is_bound_where_the_kubelet_rejects_it(
    kube: ControlPlane, cluster: dict[str, tuple[KubeletPlayer, Daemon]]
) -> None:
    rng = random.Random(20261202)
    changes = NrtChanges(kube)
    bound: dict[str, str] = {}
    mismatches: list[Mismatch] = []
    pending: list[dict[str, Any]] = []
    for index in range(PODS):
        resources = shape(rng)
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{index:03d}", "namespace": NAMESPACE},
            "spec": {
                "schedulerName": "topo-aware-scheduler",
                "containers": [
                    {"name": "c", "image": "pause", "resources": {"requests": resources, "limits": resources}}
                ],
            },
        }
        created = kube.ok("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body)
        path = f"/api/v1/namespaces/{NAMESPACE}/pods/{created['metadata']['name']}"

        def decided(path: str = path) -> dict[str, Any] | None:
            pod: dict[str, Any] = kube.ok("GET", path)
            if pod["spec"].get("nodeName"):
                return pod
            conditions = pod.get("status", {}).get("conditions") or []
            if any(c["type"] == "PodScheduled" and c["status"] == "False" for c in conditions):
                return pod
            return None

        pod = wait_until(decided, timeout=30, what=f"the scheduler's decision on {path}", interval=0.05)
        # Like a kubelet, admit every pod bound to a node, the ones the scheduler retried meanwhile first.
        for late in _bound_since(kube, pending):
            pending = [p for p in pending if p["metadata"]["name"] != late["metadata"]["name"]]
            play(kube, cluster, late, bound, mismatches)
        if pod["spec"].get("nodeName"):
            play(kube, cluster, pod, bound, mismatches)
        else:
            pending.append(pod)

    # Nothing outside the product acts: pods found unschedulable while a node's cache was still overreserved
    # are retried on the agents' requeue update, a cache resync period after their write. Play the kubelet for
    # every pod bound meanwhile, until none is bound within the scheduler's own delays (two resync periods,
    # the update's margin, its backoff of at most 10 s).
    for _ in range(len(pending)):
        try:
            late_pods = wait_until(lambda p=pending: _bound_since(kube, p), timeout=2 * 1 + 0.5 + 10 + 1,
                                   what="a pending pod bound")  # fmt: skip
        except AssertionError:
            break
        for late in late_pods:
            pending = [p for p in pending if p["metadata"]["name"] != late["metadata"]["name"]]
            play(kube, cluster, late, bound, mismatches)

    fits_somewhere = [
        pod["metadata"]["name"] for pod in pending if any(player.would_admit(pod) for player, _ in cluster.values())
    ]
    # Goal 0, but for the scheduler cache's own race where its log and the test's own watch of the objects show
    # it, never the agent's account (tests/workload.py `race_seen`; test_real_nodes.py `judge` says why):
    # printed and counted apart; any other rejection fails.
    changes.stop()
    lines = kube.log("kube-scheduler-nrt").splitlines()
    rejected: list[str] = []
    races: list[str] = []
    for mismatch in mismatches:
        why = race_seen(NAMESPACE, mismatch.pod, mismatch.node, scheduler_log=lines, changes=changes)
        if why is not None:
            races.append(f"{mismatch.text}: {why}")
            continue
        rejected.append(mismatch.text)
    for line in races:
        print("E2E SCHEDULER RACE", line)
    COUNTS.update(pods=PODS, bound=len(bound), pending=len(pending), mismatches=len(rejected),
                  pending_that_fit=len(fits_somewhere),
                  **{"rejections from the scheduler cache's race": len(races)})  # fmt: skip
    print("E2E COUNTS", COUNTS)
    if rejected and os.environ.get("E2E_TRACE"):  # the scheduler's own account of each mismatched node
        Path(os.environ["E2E_TRACE"]).write_text(kube.log("kube-scheduler-nrt"))
    assert not rejected, rejected
    assert not fits_somewhere, f"pods a kubelet would admit left Pending with nothing outside the product acting: {fits_somewhere}"
    assert len(bound) >= 20, COUNTS
    assert pending, "the nodes fill up: some shapes must stay Pending"
    reasons = {
        c.get("message", "")
        for pod in pending
        for c in (kube.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}")["status"].get("conditions") or [])
    }  # fmt: skip
    assert any("NUMA" in reason or "Insufficient" in reason or "resource" in reason for reason in reasons), reasons
    log = kube.log("kube-scheduler-nrt")
    # The scheduler's log is shared with other tests: only this test's nodes, and only checks that matched (the
    # cache took our object: a resync from our fingerprint), count.
    checks = [m.groups() for line in log.splitlines() if (m := CHECK.search(line)) and m.group(1) in cluster]
    synced = sum(1 for _, expected, computed in checks if expected == computed)
    assert synced > 0, f"the scheduler's cache took our object on no resync ({len(checks)} checks, none equal)"
    COUNTS["fingerprint checks"] = len(checks)
    COUNTS["resyncs from our fingerprint"] = synced
    COUNTS["fingerprint mismatches logged"] = log.count("fingerprint mismatch")


CHECK = re.compile(r'"podset fingerprint check".* node="([^"]+)" expected="([^"]+)" computed="([^"]+)"')


def _bound_since(kube: ControlPlane, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    waiting = {pod["metadata"]["name"] for pod in pending}
    items = kube.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
    return [pod for pod in items if pod["metadata"]["name"] in waiting and pod["spec"].get("nodeName")]


@dataclass(frozen=True)
class Mismatch:
    """A pod bound where the played kubelet then rejected it."""

    pod: str
    node: str
    text: str


def play(
    kube: ControlPlane,
    cluster: dict[str, tuple[KubeletPlayer, Daemon]],
    pod: dict[str, Any],
    bound: dict[str, str],
    mismatches: list[Mismatch],
) -> None:
    """The kubelet's part for one bound pod: admission by the oracle, the status it reports, and then the
    wait until the agent has republished (its fingerprint names the pod)."""
    node, name = pod["spec"]["nodeName"], pod["metadata"]["name"]
    admitted, why = cluster[node][0].admit(pod)
    if admitted:
        bound[name] = node
        pod["status"] = {**pod.get("status", {}), "phase": "Running"}
    else:
        zones = {
            z["name"]: {r["name"]: r["available"] for r in z["resources"]} for z in (kube.nrt(node) or {})["zones"]
        }
        requests = pod["spec"]["containers"][0]["resources"]["requests"]
        mismatches.append(Mismatch(name, node, f"{name} {requests} on {node}: {why}; {zones}"))
        pod["status"] = {**pod.get("status", {}), "phase": "Failed", "reason": "TopologyAffinityError"}
    kube.ok("PUT", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/status", pod)
    if admitted:
        wait_until(lambda: _fingerprinted(kube, cluster, node), timeout=15, what=f"{node}'s republish")


def _fingerprinted(kube: ControlPlane, cluster: dict[str, tuple[KubeletPlayer, Daemon]], node: str) -> bool:
    """The node's NRT fingerprint is what the agent publishes for the pods bound there (every pod here is
    Guaranteed with whole CPUs): Running pods by name, bound ones the played kubelet has not admitted yet as
    `<name>#pending`. So the agent has seen the latest pod events and rebuilt its zones with the state
    files written for them."""
    from exporter.fingerprint import fingerprint
    from exporter.views.nrt import PENDING

    pods = kube.ok("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={node}")["items"]
    running = [
        (p["metadata"]["namespace"], p["metadata"]["name"] + ("" if p["status"].get("phase") == "Running" else PENDING))
        for p in pods
        if p["status"].get("phase") not in ("Succeeded", "Failed")
    ]
    obj = kube.nrt(node)
    attributes = {a["name"]: a["value"] for a in (obj or {}).get("attributes", [])}
    return attributes.get("nodeTopologyPodsFingerprint") == fingerprint(running)

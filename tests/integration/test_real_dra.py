"""DRA on a real kubelet: the kubelet's own DRA path, end to end.

A real kubelet v1.36.2 (../shared/k8s/start-node) with `dra-plugin` (a DRA driver's kubelet plugin built from
the kubelet's helper, ../shared/k8s/README.md "DRA on a real node") publishing five devices: two on each NUMA
node (one with a `pcieRoot`), one without a NUMA node. The real scheduler allocates the claims (one device; two
devices constrained to one NUMA node by `matchAttribute`; one device chosen by a CEL selector on NUMA 1, for a
pod with 2 pinned CPUs; one claim shared by two pods), the kubelet prepares them through the plugin and records
them in `dra_manager_state` and its podresources API. After each step the agent's per-NUMA DRA numbers are
held to the claims' allocations, the kubelet's checkpoint and podresources; `container_dra_misaligned` to the
CPUs the CPU manager pinned; `/snapshot.json` answers with every device. Then the lifecycle: a pod deleted
while its claim stays allocated, the plugin stopped and started again, the kubelet restarted.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.cpuset import parse_cpuset
from tests.controlplane import AGENT_USER, ControlPlane, wait_until
from tests.daemon import Daemon
from tests.realnodes import RealNode, agent, real_machine, require_real_nodes, start_real_node

DRIVER = "gpu.example.com"
RESOURCE = f"dra:{DRIVER}"
NAMESPACE = "real-dra"
DRA = "/apis/resource.k8s.io/v1"
NODE = "dra-real-0"
# NAME:NUMA[:PCIEROOT]; -1: the driver publishes no numaNode attribute.
DEVICES = {"gpu-0": 0, "gpu-1": 0, "gpu-2": 1, "gpu-3": 1, "acc-0": -1}
PCIE_ROOTS = {"gpu-0": "pci0000:00", "gpu-2": "pci0000:80"}
NUMA_ATTRIBUTE = "resource.kubernetes.io/numaNode"
PLUGINS: list[subprocess.Popen[bytes]] = []  # the dra-plugin processes of this module, the running one last


@pytest.fixture(scope="module")
def dra_cluster(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealNode, Daemon]]:
    bin_dir = require_real_nodes()
    root = tmp_path_factory.mktemp("real-dra")
    node = RealNode(NODE, root / NODE, real_machine(root / "machine"), kube.kubeconfig("admin"))
    kube.ensure_namespace(NAMESPACE)
    kube.put(f"{DRA}/deviceclasses", {
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": DRIVER},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    })  # fmt: skip
    daemon: Daemon | None = None
    try:
        start_real_node(kube, node, bin_dir)
        kube.ok("PATCH", f"/api/v1/nodes/{NODE}", {"metadata": {"labels": {"real-dra": NODE}}},
                content_type="application/merge-patch+json")  # fmt: skip
        PLUGINS.append(start_plugin(kube, node, bin_dir))
        wait_until(lambda: published(kube) == set(DEVICES), timeout=60, what="the plugin's ResourceSlice")
        daemon = agent(kube, node, user=AGENT_USER)
        kube.start_scheduler(verbosity=2)
        yield node, daemon
    finally:
        if daemon is not None:
            daemon.stop()
        for pod in kube.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]:
            kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}?gracePeriodSeconds=0")
        for claim in kube.ok("GET", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims")["items"]:
            release(kube, claim["metadata"]["name"])
        for process in PLUGINS:
            process.terminate()
            process.wait(timeout=15)
        node.stop()
        kube.request("DELETE", f"/api/v1/nodes/{NODE}")
        kube.delete_nrt(NODE)


def start_plugin(kube: ControlPlane, node: RealNode, bin_dir: Path) -> subprocess.Popen[bytes]:
    devices = ",".join(
        f"{name}:{numa}" + (f":{PCIE_ROOTS[name]}" if name in PCIE_ROOTS else "") for name, numa in DEVICES.items()
    )
    log = (node.directory / "dra-plugin.log").open("ab")
    return subprocess.Popen(
        [str(bin_dir / "dra-plugin"), "--kubeconfig", str(kube.kubeconfig("admin")), "--node", node.name,
         "--kubelet-dir", str(node.kubelet_dir), "--driver", DRIVER, "--devices", devices],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def published(kube: ControlPlane) -> set[str]:
    slices = kube.ok("GET", f"{DRA}/resourceslices?fieldSelector=spec.nodeName={NODE}")["items"]
    return {d["name"] for s in slices if s["spec"]["driver"] == DRIVER for d in s["spec"].get("devices") or []}


def claim_body(name: str, count: int = 1, *, same_numa: bool = False, numa: int | None = None) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": DRIVER, "count": count}
    if numa is not None:
        exactly["selectors"] = [{"cel": {"expression": f'device.attributes["resource.kubernetes.io"].numaNode == {numa}'}}]
    devices: dict[str, Any] = {"requests": [{"name": "gpu", "exactly": exactly}]}
    if same_numa:
        devices["constraints"] = [{"matchAttribute": NUMA_ATTRIBUTE}]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name},
            "spec": {"devices": devices}}  # fmt: skip


def pod_body(name: str, claim: str, *, cpu: str = "2") -> dict[str, Any]:
    amounts = {"cpu": cpu, "memory": "256Mi"}
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"real-dra": NODE}, "terminationGracePeriodSeconds": 0,
            "resourceClaims": [{"name": "gpu", "resourceClaimName": claim}],
            "containers": [{"name": "c", "image": "pause",
                            "resources": {"requests": amounts, "limits": amounts, "claims": [{"name": "gpu"}]}}],
        },
    }  # fmt: skip


def run(kube: ControlPlane, pod: str, claim: str, **claim_spec: Any) -> dict[str, Any]:
    """The claim (where new) and a pod naming it, allocated by the real scheduler and prepared by the kubelet:
    the pod Running. Returns the claim as allocated."""
    if kube.request("GET", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims/{claim}").status == 404:
        kube.ok("POST", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims", claim_body(claim, **claim_spec))
    kube.ok("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", pod_body(pod, claim))
    wait_until(lambda: phase(kube, pod) == "Running", timeout=60, what=f"{pod} Running")
    allocated: dict[str, Any] = kube.ok("GET", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims/{claim}")
    return allocated


def phase(kube: ControlPlane, pod: str) -> str | None:
    response = kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")
    return (response.body.get("status") or {}).get("phase") if response.status == 200 else None


def allocated_devices(kube: ControlPlane) -> set[str]:
    """Every device of this driver that an allocated claim holds, as the API says (what the scheduler sees)."""
    held = set()
    for claim in kube.ok("GET", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims")["items"]:
        for result in ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []:
            if result["driver"] == DRIVER and result["pool"] == NODE:
                held.add(result["device"])
    return held


def expected_per_numa(published: set[str], held: set[str]) -> tuple[dict[int, float], dict[int, float]]:
    """Per NUMA node: the devices the node's slices publish, and those no allocated claim holds."""
    capacity = Counter(DEVICES[name] for name in published)
    available = Counter(DEVICES[name] for name in published if name not in held)
    return ({n: float(c) for n, c in capacity.items()}, {n: float(available.get(n, 0)) for n in capacity})


def per_numa(text: str, family: str) -> dict[int, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(family + "{") and f'resource="{RESOURCE}"' in line:
            match = re.search(r'numa_node="(-?\d+)"', line)
            if match:
                found[int(match.group(1))] = float(line.rsplit(" ", 1)[1])
    return found


def agent_differs(kube: ControlPlane, daemon: Daemon, held: set[str]) -> list[str]:
    text = daemon.metrics()
    capacity, available = expected_per_numa(published(kube), held)
    got = (per_numa(text, "numa_topology_resource_capacity"), per_numa(text, "numa_topology_resource_available"))
    return [] if got == (capacity, available) else [f"agent (capacity, available) {got}, API {(capacity, available)}"]


def kubelet_checkpoint(node: RealNode) -> dict[str, set[str]]:
    """claim name -> the devices the kubelet's DRA manager prepared for it: its dra_manager_state
    (checkpoint.dra.kubelet.k8s.io/v1: `Data` holds the JSON of a ClaimInfoStateList)."""
    state = json.loads((node.kubelet_dir / "dra_manager_state").read_text())
    data = json.loads(state["Data"])
    assert data["kind"] == "DRACheckpoint", data
    return {
        str(claim["ClaimName"]): {str(d) for d in _device_names(claim.get("DriverState"))}
        for claim in data.get("ClaimInfoStateList") or []
    }


def _device_names(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return ([value["DeviceName"]] if "DeviceName" in value else []) + [
            name for item in value.values() for name in _device_names(item)
        ]
    if isinstance(value, list):
        return [name for item in value for name in _device_names(item)]
    return []


def podresources_claims(node: RealNode) -> dict[tuple[str, str], set[str]]:
    """(pod, claim) -> the devices the kubelet's podresources List reports for it (dynamic_resources)."""
    import grpc

    from exporter.sources.podresources_v1 import api_pb2, api_pb2_grpc

    with grpc.insecure_channel(f"unix://{node.podresources_socket}") as channel:
        stub: Any = api_pb2_grpc.PodResourcesListerStub(channel)
        listed = stub.List(api_pb2.ListPodResourcesRequest(), timeout=10)
    found: dict[tuple[str, str], set[str]] = {}
    for pod in listed.pod_resources:
        for container in pod.containers:
            for resource in container.dynamic_resources:
                devices = {r.device_name for r in resource.claim_resources if r.driver_name == DRIVER}
                found.setdefault((pod.name, resource.claim_name), set()).update(devices)
    return found


def pinned_numa(node: RealNode, pod_uid: str) -> set[int]:
    """The NUMA nodes of the CPUs the CPU manager pinned for the pod (its cpu_manager_state)."""
    state = json.loads((node.kubelet_dir / "cpu_manager_state").read_text())
    cpus: set[int] = set()
    for cpuset in (state.get("entries") or {}).get(pod_uid, {}).values():
        cpus |= parse_cpuset(cpuset)
    numa_of = {
        cpu: int(directory.name[4:])
        for directory in node.machine.node_dir.glob("node[0-9]*")
        for cpu in parse_cpuset((directory / "cpulist").read_text().strip())
    }
    return {numa_of[cpu] for cpu in cpus}


def misaligned(daemon: Daemon, pod: str) -> float | None:
    for line in daemon.metrics().splitlines():
        if line.startswith("numa_topology_container_dra_misaligned{") and f'pod="{pod}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def uid(kube: ControlPlane, pod: str) -> str:
    return str(kube.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}")["metadata"]["uid"])


def check(kube: ControlPlane, node: RealNode, daemon: Daemon, step: str) -> set[str]:
    """The agent's per-NUMA DRA capacity and available equal the claims' allocations (what the scheduler
    allocates from); the kubelet's checkpoint and podresources name the same devices for the claims of the
    pods it runs; /snapshot.json answers with them."""
    held = allocated_devices(kube)
    last: list[str] = []

    def agrees() -> bool:
        last[:] = agent_differs(kube, daemon, held)
        return not last

    try:
        wait_until(agrees, timeout=20, what="")
    except AssertionError:
        raise AssertionError(f"{step}: the agent's DRA numbers: {last}") from None
    running = {p["metadata"]["name"]: p for p in kube.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
               if (p.get("status") or {}).get("phase") == "Running"}  # fmt: skip
    claims = {c["metadata"]["name"]: c for c in kube.ok("GET", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims")["items"]}
    want = {
        (pod, spec["resourceClaimName"]): {
            r["device"] for r in claims[spec["resourceClaimName"]]["status"]["allocation"]["devices"]["results"]
        }
        for pod, body in running.items()
        for spec in body["spec"].get("resourceClaims") or []
    }
    assert wait_until(lambda: podresources_claims(node) == want or None, timeout=20,
                      what=f"{step}: podresources to report the claims"), step  # fmt: skip
    checkpoint = kubelet_checkpoint(node)
    for (_, claim), devices in want.items():
        assert checkpoint.get(claim) == devices, (step, claim, checkpoint)
    status, body = daemon.get("/snapshot.json")
    assert status == 200, body[:500]
    snapshot = json.loads(body)
    text = json.dumps(snapshot)
    assert all(f'"{device}"' in text for device in held), (step, held)
    return held


def test_the_kubelets_dra_path_end_to_end(kube: ControlPlane, dra_cluster: tuple[RealNode, Daemon]) -> None:
    node, daemon = dra_cluster
    assert check(kube, node, daemon, "no claim") == set()

    numa1 = run(kube, "pinned", "on-numa-1", numa=1)
    devices = [r["device"] for r in numa1["status"]["allocation"]["devices"]["results"]]
    assert len(devices) == 1
    assert DEVICES[devices[0]] == 1, "the CEL selector's NUMA node"
    check(kube, node, daemon, "one device by a CEL selector")
    # The Topology Manager aligns no DRA device (no hint provider in v1.36): the pod's CPUs are where the CPU
    # manager put them, and the audit says whether they are the device's NUMA node.
    cpus_numa = pinned_numa(node, uid(kube, "pinned"))
    assert len(cpus_numa) == 1, cpus_numa
    want = 0.0 if cpus_numa == {1} else 1.0
    assert wait_until(lambda: misaligned(daemon, "pinned") is not None, timeout=20, what="the DRA audit") is not None
    assert misaligned(daemon, "pinned") == want, (cpus_numa, devices)

    pair = run(kube, "paired", "two-on-one-numa", count=2, same_numa=True)
    pair_devices = [r["device"] for r in pair["status"]["allocation"]["devices"]["results"]]
    assert len(pair_devices) == 2
    assert len({DEVICES[d] for d in pair_devices}) == 1, "matchAttribute numaNode: one NUMA node"
    check(kube, node, daemon, "a claim of two devices")  # /snapshot.json once answered 500 here

    run(kube, "any", "one-device")
    shared = run(kube, "shared-a", "shared")
    run(kube, "shared-b", "shared")
    assert len(shared["status"].get("reservedFor") or []) >= 1
    held = check(kube, node, daemon, "every device allocated, one claim shared by two pods")
    assert held == set(DEVICES), held
    assert published(kube) == set(DEVICES)
    assert per_numa(daemon.metrics(), "numa_topology_resource_available") == {0: 0.0, 1: 0.0, -1: 0.0}
    assert all(device in kubelet_checkpoint(node).get("shared", set()) for device in
               [r["device"] for r in shared["status"]["allocation"]["devices"]["results"]])  # fmt: skip


def clear(kube: ControlPlane) -> None:
    """No pod and no claim left in the namespace (what the claims' controller does once their pods are gone)."""
    for pod in kube.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]:
        kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod['metadata']['name']}?gracePeriodSeconds=0")
    wait_until(lambda: not kube.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")["items"], timeout=60,
               what="the pods gone")  # fmt: skip
    for claim in kube.ok("GET", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims")["items"]:
        release(kube, claim["metadata"]["name"])
    wait_until(lambda: not kube.ok("GET", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims")["items"], timeout=60,
               what="the claims gone")  # fmt: skip


def release(kube: ControlPlane, name: str) -> None:
    """What the ResourceClaim controller (not running here) does for a claim no pod uses: deallocate it and
    let it go (status cleared, its delete-protection finalizer removed), then the claim deleted."""
    path = f"{DRA}/namespaces/{NAMESPACE}/resourceclaims/{name}"
    merge = "application/merge-patch+json"
    kube.ok("PATCH", f"{path}/status", {"status": {"allocation": None, "reservedFor": None}}, content_type=merge)
    kube.ok("PATCH", path, {"metadata": {"finalizers": None}}, content_type=merge)
    kube.request("DELETE", path)


def unpublished(daemon: Daemon) -> set[str]:
    found = set()
    for line in daemon.metrics().splitlines():
        if line.startswith("numa_topology_dra_device_unpublished{") and line.endswith(" 1.0"):
            match = re.search(r'device="([\w-]+)"', line)
            if match:
                found.add(match.group(1))
    return found


def test_lifecycle_a_pod_gone_before_its_claim_the_plugin_and_the_kubelet_restarted(
    kube: ControlPlane, dra_cluster: tuple[RealNode, Daemon]
) -> None:
    node, daemon = dra_cluster
    clear(kube)
    check(kube, node, daemon, "cleared")
    kept = run(kube, "leaver", "kept", count=2, same_numa=True)
    kept_devices = {r["device"] for r in kept["status"]["allocation"]["devices"]["results"]}
    run(kube, "stayer", "stays")
    check(kube, node, daemon, "two claims")

    # The pod goes, its claim stays allocated (no kube-controller-manager runs: nothing deallocates it). The
    # kubelet unprepares it; the scheduler still allocates around its devices, and so does the agent count
    # them: not available until the claim is deallocated.
    kube.ok("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/leaver?gracePeriodSeconds=0")
    wait_until(lambda: phase(kube, "leaver") is None, timeout=60, what="leaver gone")
    wait_until(lambda: "kept" not in kubelet_checkpoint(node), timeout=60, what="the kubelet to unprepare the claim")
    assert kept_devices <= check(kube, node, daemon, "a claim allocated, its pod gone")
    release(kube, "kept")
    wait_until(lambda: not kept_devices & allocated_devices(kube), timeout=30, what="the claim deallocated")
    assert not kept_devices & check(kube, node, daemon, "the claim deleted: its devices free again")

    # The plugin stops and its pool is withdrawn (by the plugin, or by the kubelet once it unregistered): the
    # device a claim still holds stays
    # where it was and is said to be unpublished; it comes back with the plugin.
    stayer = {r["device"] for r in kube.ok("GET", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims/stays")
              ["status"]["allocation"]["devices"]["results"]}  # fmt: skip
    PLUGINS[-1].terminate()
    PLUGINS[-1].wait(timeout=15)
    wait_until(lambda: not published(kube), timeout=90, what="the pool withdrawn")
    assert wait_until(lambda: unpublished(daemon) == stayer or None, timeout=30, what="the held device unpublished")
    # Capacity is what the node publishes (what the scheduler can allocate from): nothing while the pool is gone.
    assert per_numa(daemon.metrics(), "numa_topology_resource_capacity") == {}
    bin_dir = require_real_nodes()
    PLUGINS.append(start_plugin(kube, node, bin_dir))
    try:
        wait_until(lambda: published(kube) == set(DEVICES), timeout=60, what="the pool published again")
        wait_until(lambda: not unpublished(daemon), timeout=30, what="no device unpublished")
        check(kube, node, daemon, "the plugin back")

        # The kubelet restarts with a prepared claim: it reads its checkpoint back, the pod keeps its device.
        node.stop()
        start_real_node(kube, node, bin_dir)
        wait_until(lambda: "stays" in kubelet_checkpoint(node), timeout=60, what="the checkpoint read back")
        assert kubelet_checkpoint(node)["stays"] == stayer
        wait_until(lambda: published(kube) == set(DEVICES), timeout=60, what="the pool published after the restart")
        assert stayer <= check(kube, node, daemon, "the kubelet restarted")
        assert phase(kube, "stayer") == "Running"
    finally:
        clear(kube)


"""Faults on a real kubelet v1.36.2 (../shared/k8s/start-node) under a running agent: nothing stale published.

Each fault is applied to the real node, then the agent's NRT must equal the kubelet's own podresources account
again (tests/realnodes.py `disagreements`); the seconds from the fault's end to that agreement are recorded
(RECOVERY_SECONDS, printed at the end of the session with the other faults' figures):

* a device plugin goes away (the kubelet withdraws its devices) and comes back;
* the kubelet restarts with a pod running (its state files re-read and rewritten);
* the kubelet's configuration changes, with the state reset the kubelet requires (drained, state removed);
* the Node object is deleted and registered again (a new UID: the NRT object's owner follows);
* the podresources socket is gone while the kubelet is down (the last good reading kept, the source down).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane import AGENT_USER, ControlPlane, wait_until
from tests.daemon import Daemon
from tests.realnodes import (
    DEFAULT_CONFIG,
    GPU,
    RealNode,
    agent,
    disagreements,
    kubelet_account,
    node_ready,
    real_machine,
    require_real_nodes,
    start_real_node,
    untaint,
)
from tests.workload import pod_body

NAMESPACE = "real-faults"
RECOVERY_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="module")
def faulty(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealNode, Daemon, Path]]:
    bin_dir = require_real_nodes()
    root = tmp_path_factory.mktemp("faults")
    node = RealNode("real-faults", root / "node", real_machine(root / "machine"), kube.kubeconfig("admin"))
    daemon = None
    try:
        start_real_node(kube, node, bin_dir)
        daemon = agent(kube, node, user=AGENT_USER)
        kube.ensure_namespace(NAMESPACE)
        yield node, daemon, bin_dir
    finally:
        if daemon is not None:
            daemon.stop()
        node.stop()
        kube.request("DELETE", f"/api/v1/nodes/{node.name}")
        kube.delete_nrt(node.name)


def converged(
    kube: ControlPlane, node: RealNode, fault: str, *, since: float, timeout: float = 60
) -> dict[str, object]:
    """Wait until the NRT equals the kubelet's account; record how long that took from `since`."""
    last: list[str] = []

    def agrees() -> dict[str, object] | None:
        obj = kube.nrt(node.name)
        try:
            last[:] = disagreements(kubelet_account(node), obj or {}) if obj else ["no NRT object"]
        except Exception as exc:
            last[:] = [f"podresources: {exc}"]
        return obj if not last else None

    try:
        obj = wait_until(agrees, timeout=timeout, what=f"agreement after {fault}", interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last}") from None
    RECOVERY_SECONDS[f"real kubelet: {fault}"] = time.monotonic() - since
    return obj


def zone_value(obj: dict[str, object], numa: int, resource: str, field: str = "allocatable") -> int:
    zones = {z["name"]: z for z in obj["zones"]}  # type: ignore[attr-defined]
    for entry in zones[f"node-{numa}"]["resources"]:
        if entry["name"] == resource:
            return int(entry[field])
    return 0


def running_pod(kube: ControlPlane, node: RealNode, name: str, resources: dict[str, str]) -> dict[str, object]:
    body = pod_body(name, "default-scheduler", resources)
    body["spec"]["nodeName"] = node.name
    kube.ok("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body)
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/{name}"
    pod: dict[str, object] = wait_until(lambda: (p := kube.ok("GET", path))["status"].get("phase") == "Running" and p,
                                        timeout=30, what=f"{name} Running")  # fmt: skip
    return pod


def delete_pod(kube: ControlPlane, name: str) -> None:
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/{name}"
    kube.request("DELETE", path)
    wait_until(lambda: kube.request("GET", path).status == 404, timeout=60, what=f"{name} gone")


def test_a_device_plugin_going_away_and_coming_back(kube: ControlPlane, faulty: tuple[RealNode, Daemon, Path]) -> None:
    node, _, bin_dir = faulty
    before = converged(kube, node, "start", since=time.monotonic())
    assert zone_value(before, 0, GPU) == 2
    node.kill("stub-device-plugin")
    gone = time.monotonic()
    # The kubelet withdraws the plugin's devices from what it can hand out; the NRT follows, never later than
    # the kubelet's own API.
    wait_until(lambda: kubelet_account(node).allocatable[0][GPU] == 0, timeout=60, what="the kubelet to drop the GPUs")
    after = converged(kube, node, "device plugin gone", since=gone)
    assert zone_value(after, 0, GPU) == 0
    node.start_device_plugins(bin_dir)
    back = time.monotonic()
    wait_until(lambda: kubelet_account(node).allocatable[0][GPU] == 2, timeout=60, what="the GPUs back")
    assert zone_value(converged(kube, node, "device plugin back", since=back), 0, GPU) == 2


def test_a_kubelet_restart_with_a_pod_running(kube: ControlPlane, faulty: tuple[RealNode, Daemon, Path]) -> None:
    node, _, bin_dir = faulty
    running_pod(kube, node, "survivor", {"cpu": "4", "memory": "4Gi", GPU: "1"})
    during = converged(kube, node, "pod admitted", since=time.monotonic())
    node.stop()
    start_real_node(kube, node, bin_dir)
    restarted = time.monotonic()
    wait_until(lambda: (NAMESPACE, "survivor") in kubelet_account(node).pods, timeout=60, what="the pod re-admitted")
    after = converged(kube, node, "kubelet restarted", since=restarted)
    assert after["zones"] == during["zones"], "the same pod holds the same resources after the restart"
    delete_pod(kube, "survivor")
    converged(kube, node, "pod deleted after the restart", since=time.monotonic())


def test_a_configuration_change_with_the_state_reset(kube: ControlPlane, faulty: tuple[RealNode, Daemon, Path]) -> None:
    """The documented procedure: drain, stop the kubelet, change the config, remove the CPU and memory manager
    state, start it. The agent publishes the new policy and the new reserved CPUs, nothing of the old ones."""
    node, _, bin_dir = faulty
    node.stop()
    node.config = {**DEFAULT_CONFIG, "topologyManagerPolicy": "restricted", "reservedSystemCPUs": "0-1,16-17"}
    for name in ("cpu_manager_state", "memory_manager_state"):
        (node.kubelet_dir / name).unlink()
    start_real_node(kube, node, bin_dir)
    changed = time.monotonic()

    def restricted() -> bool:
        obj = kube.nrt(node.name) or {}
        return {a["name"]: a["value"] for a in obj.get("attributes", [])}.get("topologyManagerPolicy") == "restricted"

    wait_until(restricted, timeout=60, what="the new policy published")
    after = converged(kube, node, "configuration changed", since=changed)
    assert zone_value(after, 0, "cpu") == 12, "CPUs 0, 1, 16 and 17 reserved on NUMA node 0"
    node.stop()
    node.config = dict(DEFAULT_CONFIG)
    for name in ("cpu_manager_state", "memory_manager_state"):
        (node.kubelet_dir / name).unlink()
    start_real_node(kube, node, bin_dir)
    assert zone_value(converged(kube, node, "configuration changed back", since=time.monotonic()), 0, "cpu") == 14


def test_the_node_deleted_and_registered_again(kube: ControlPlane, faulty: tuple[RealNode, Daemon, Path]) -> None:
    node, _, bin_dir = faulty
    old_uid = kube.ok("GET", f"/api/v1/nodes/{node.name}")["metadata"]["uid"]
    node.stop()
    kube.ok("DELETE", f"/api/v1/nodes/{node.name}")
    kube.delete_nrt(node.name)  # what the garbage collector does with the Node's dependents (none runs here)
    start_real_node(kube, node, bin_dir)
    registered = time.monotonic()
    new_uid = kube.ok("GET", f"/api/v1/nodes/{node.name}")["metadata"]["uid"]
    assert new_uid != old_uid

    def owned() -> bool:
        references = (kube.nrt(node.name) or {}).get("metadata", {}).get("ownerReferences") or []
        return [r["uid"] for r in references] == [new_uid]

    wait_until(owned, timeout=60, what="the NRT owned by the new Node")
    converged(kube, node, "node registered again", since=registered)


def test_the_podresources_socket_gone(kube: ControlPlane, faulty: tuple[RealNode, Daemon, Path]) -> None:
    """The kubelet stops (its socket gone): the agent says the source is down and keeps its last good numbers;
    once the kubelet is back, the numbers follow it again."""
    node, daemon, bin_dir = faulty
    converged(kube, node, "before the socket goes", since=time.monotonic())
    node.stop()
    node.podresources_socket.unlink(missing_ok=True)
    wait_until(lambda: daemon.sample('numa_topology_source_up{source="podresources"}') == 0, timeout=30,
               what="podresources reported down")  # fmt: skip
    assert (
        daemon.sample('numa_topology_resource_available{numa_node="0",resource="nvidia.com/gpu",unit="integer"}') == 2
    )
    start_real_node(kube, node, bin_dir)
    back = time.monotonic()
    wait_until(lambda: node_ready(kube, node.name, gpus=4), timeout=60, what="the node Ready")
    untaint(kube, node.name)
    converged(kube, node, "podresources socket back", since=back)
    wait_until(lambda: daemon.sample('numa_topology_source_up{source="podresources"}') == 1, timeout=30,
               what="podresources up again")  # fmt: skip

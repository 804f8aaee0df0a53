"""The podresources-only mode (`--no-state-files`, chart `podresources.only`) on a real kubelet v1.36.2.

The agent sees none of the kubelet's directory but its `pod-resources/` socket (and the kubelet's config file,
kept outside that directory as EKS and GKE keep it). What it rebuilds of the kubelet's records from the
podresources API (exporter/kubelet/podresources_state.py) is held to the kubelet's own state files on the same
node, record by record, and every number it publishes to the numbers of the agent that reads those files.
What the mode loses is written in docs/product.md ("Podresources only"); a multi-NUMA memory block, which the
single-numa-node kubelet here never admits, is held in tests/unit/test_podresources_state.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.snapshot import NOT_READ, Snapshot, SnapshotBuilder
from tests.controlplane import AGENT_USER, ControlPlane, wait_until
from tests.daemon import Daemon
from tests.integration.test_podresources_state_oracle import blocks
from tests.realnodes import GPU, RealNode, disagreements, kubelet_account, real_machine, running
from tests.workload import pod_body

NAMESPACE = "real-podresources-only"
# Guaranteed pods on the fixture machine (2 NUMA nodes of 16 CPUs, 2 GPUs each, CPUs 0 and 16 reserved), and
# one the kubelet rejects (more CPUs than a NUMA node has, under single-numa-node).
SHAPES = {
    "gpu-a": {"cpu": "4", "memory": "4Gi", GPU: "1"},
    "gpu-b": {"cpu": "6", "memory": "2Gi", GPU: "2"},
    "small": {"cpu": "2", "memory": "1Gi"},
    "shared": {"cpu": "500m", "memory": "256Mi"},  # Guaranteed without an integral CPU: the shared pool
    "too-big": {"cpu": "20", "memory": "1Gi"},
}


@pytest.fixture(scope="module")
def node(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    root = tmp_path_factory.mktemp("podresources-only")
    config_file = root / "etc" / "kubelet" / "config.yaml"  # outside the kubelet's directory
    real = RealNode("real-podres-only", root / "node", real_machine(root / "machine"), kube.kubeconfig("admin"),
                    config_file=config_file)  # fmt: skip
    with running(kube, real):
        kube.ensure_namespace(NAMESPACE)
        for name, resources in SHAPES.items():
            body = pod_body(name, "default-scheduler", resources)
            body["spec"]["nodeName"] = real.name
            kube.ok("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body)
        phases = {"too-big": "Failed"}
        for name in SHAPES:
            path = f"/api/v1/namespaces/{NAMESPACE}/pods/{name}"
            want = phases.get(name, "Running")
            wait_until(lambda p=path, w=want: kube.ok("GET", p)["status"].get("phase") == w, timeout=60,
                       what=f"{name} {want}")  # fmt: skip
        yield real


def podresources_view(node: RealNode, root: Path) -> Path:
    """What the chart mounts in this mode: a kubelet directory holding only `pod-resources/`."""
    view = root / "kubelet"
    view.mkdir(parents=True, exist_ok=True)
    link = view / "pod-resources"
    if not link.exists():
        link.symlink_to(node.kubelet_dir / "pod-resources")
    return view


def both(node: RealNode, tmp_path: Path) -> tuple[Snapshot, Snapshot]:
    files = SnapshotBuilder(node.paths, use_nvml=False)
    only = SnapshotBuilder(
        dataclasses.replace(node.paths, kubelet_dir=podresources_view(node, tmp_path)),
        use_nvml=False,
        use_state_files=False,
    )
    try:
        return files.build(), only.build()
    finally:
        files.close()
        only.close()


def test_the_records_rebuilt_from_podresources_are_the_kubelets_state_files(node: RealNode, tmp_path: Path) -> None:
    files, only = both(node, tmp_path)
    assert only.source("cpu_manager_state").message == NOT_READ  # type: ignore[union-attr]
    assert only.source("podresources").up  # type: ignore[union-attr]
    assert files.kubelet.cpu is not None
    assert only.kubelet.cpu is not None
    assert only.kubelet.cpu.default_cpuset == files.kubelet.cpu.default_cpuset
    assert only.kubelet.cpu.entries == files.kubelet.cpu.entries
    pinned = sum(len(containers) for containers in files.kubelet.cpu.entries.values())
    assert pinned >= 3, f"the three pods with integral CPUs hold CPUs: {files.kubelet.cpu.entries}"

    assert files.kubelet.memory is not None
    assert only.kubelet.memory is not None
    assert blocks(only.kubelet.memory) == blocks(files.kubelet.memory)
    assert len(files.kubelet.memory.entries) >= 4, "every Guaranteed pod that runs holds a memory block"
    assert only.kubelet.memory.machine_state == files.kubelet.memory.machine_state

    assert files.kubelet.devices is not None
    assert only.kubelet.devices is not None
    held = {(a.pod_uid, a.container, a.resource, a.device_ids) for a in files.kubelet.devices.allocations}
    assert {(a.pod_uid, a.container, a.resource, a.device_ids) for a in only.kubelet.devices.allocations} == held
    assert sum(len(ids) for _, _, _, ids in held) == 3, held
    assert {r: set(ids) for r, ids in only.kubelet.devices.registered.items()} == {
        r: set(ids) for r, ids in files.kubelet.devices.registered.items()
    }


def test_every_number_published_is_the_one_the_state_files_give(node: RealNode, tmp_path: Path) -> None:
    files, only = both(node, tmp_path)

    def numbers(snapshot: Snapshot) -> list[tuple[int, str, int, int, int | None]]:
        return sorted((a.numa_node, a.resource, a.capacity, a.allocatable, a.available)
                      for a in snapshot.accounting.accounts)  # fmt: skip

    assert numbers(only) == numbers(files)
    held = [a for a in files.accounting.accounts if a.available is not None and a.available < a.allocatable]
    assert {a.resource for a in held} >= {"cpu", "memory", GPU}, "the pods hold CPUs, memory and GPUs"
    assert files.accounting.fits, "the default profiles are judged"
    assert only.accounting.fits == files.accounting.fits


def test_without_the_socket_nothing_is_published_as_a_number(node: RealNode, tmp_path: Path) -> None:
    """The mode's one source down from the start: what the static policies hold is unknown, never zero held."""
    empty = tmp_path / "kubelet"
    empty.mkdir()
    builder = SnapshotBuilder(dataclasses.replace(node.paths, kubelet_dir=empty), use_nvml=False, use_state_files=False)
    try:
        snapshot = builder.build()
    finally:
        builder.close()
    status = snapshot.source("podresources")
    assert status is not None
    assert (status.up, status.available, status.reason) == (False, True, "missing"), status
    static = [a for a in snapshot.accounting.accounts if a.resource in ("cpu", "memory")]
    assert len(static) == 4, "CPUs and memory of both NUMA nodes are accounted"
    assert [a.available for a in static] == [None] * 4, static


def test_the_agent_on_podresources_alone_publishes_what_the_kubelet_holds(
    kube: ControlPlane, node: RealNode, tmp_path: Path
) -> None:
    paths = dataclasses.replace(node.paths, kubelet_dir=podresources_view(node, tmp_path))
    flags = ["--kubeconfig", str(kube.kubeconfig(AGENT_USER)), "--node-name", node.name, "--no-state-files",
             "--no-nvml", "--no-placement", "--host-path-map", "/=/", "--kubelet-config", str(node.config_file)]  # fmt: skip
    daemon = Daemon(paths, extra=flags)
    last: list[str] = []
    try:

        def agrees() -> bool:
            obj = kube.nrt(node.name)
            last[:] = disagreements(kubelet_account(node), obj) if obj else ["no NRT object"]
            return not last

        try:
            wait_until(agrees, timeout=30, what="the NRT equal to the kubelet's account", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {last}") from None
        obj = kube.nrt(node.name)
        assert obj is not None
        policies = {a["name"]: a["value"] for a in obj.get("attributes") or []}
        assert policies.get("topologyManagerPolicy") == "single-numa-node", obj.get("attributes")
        assert daemon.sample('numa_topology_source_up{source="podresources"}') == 1
    finally:
        daemon.stop()

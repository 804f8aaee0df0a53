"""DRA: the kubelet's DRA files (its own checksum vectors), ResourceSlices and claims as the API server holds
them, and what the snapshot makes of them on the fixture machine: per-NUMA DRA accounts, CPUs a CPU driver
took, the NRT left alone, and the audit of containers whose DRA device is not with their pinned CPUs.

The fixture machine: NUMA 0 = CPUs 0-7,16-23 with GPUs 0000:1a/1b; NUMA 1 = CPUs 8-15,24-31 with GPUs
0000:8a/8b. Real-API-server tests of the same are in tests/integration/test_dra_api_server.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from exporter.errors import SourceChecksumError, SourceError, SourceFormatError, SourceMissing
from exporter.kubelet.profiles import Profile
from exporter.model import ContainerClaim, DraApiReading, DraDeviceRef, PodRef
from exporter.snapshot import RESOURCE_SLICES, Snapshot, SnapshotBuilder
from exporter.sources import dra_state
from exporter.sources.dra_api import resource_claim, slice_devices
from exporter.sources.podresources_v1 import api_pb2
from exporter.views.exposition import render_exposition
from exporter.views.nrt import zone_resources
from exporter.views.render import render_snapshot
from tests.hosttree import HostTree, fixture_nvml_config
from tests.kubelet_files import (
    KUBELET_FIXTURES,
    POD_A,
    POD_B,
    cpu_state,
    dra_entry,
    fixture_config,
    install,
    replace_atomically,
)
from tests.kubelet_files import (
    dra_state as dra_file,
)
from tests.podresources_server import PodResourcesServer

VECTORS = KUBELET_FIXTURES / "dra"
NODE = "node-a"
DRIVER = "gpu.example.com"
RESOURCE = f"dra:{DRIVER}"
CPU_DRIVER = "dra.cpu"


# --- the kubelet's files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "claims", "devices"),
    [
        ("v1-single.json", "v1", 1, 1),
        ("v1-two-devices.json", "v1", 1, 2),
        ("v1-two-claims.json", "v1", 2, 2),
        ("legacy-single.json", "legacy", 1, 0),
        ("legacy-multi-driver.json", "legacy", 1, 0),
        ("legacy-two-claims.json", "legacy", 2, 0),
        ("legacy-without-handles.json", "legacy", 1, 0),
        ("legacy-null-handles.json", "legacy", 1, 0),
    ],
)
def test_the_kubelets_own_vectors_verify(name: str, version: str, claims: int, devices: int) -> None:
    checkpoint = dra_state.parse_dra_manager_state((VECTORS / name).read_bytes())
    assert checkpoint.version == version
    assert checkpoint.checksum_verified
    assert len(checkpoint.entries) == claims
    assert sum(len(entry.devices) for entry in checkpoint.entries) == devices
    assert all(entry.claim_uid and entry.namespace for entry in checkpoint.entries)
    if version == "legacy":
        assert all(entry.drivers for entry in checkpoint.entries), "legacy entries name their drivers"


@pytest.mark.parametrize("name", ["v1-bad-checksum.json", "legacy-bad-checksum.json"])
def test_the_kubelets_corrupted_vectors_are_refused(name: str) -> None:
    with pytest.raises(SourceChecksumError, match="checksum"):
        dra_state.parse_dra_manager_state((VECTORS / name).read_bytes())


def test_a_written_checkpoint_reads_back() -> None:
    raw = dra_file([_entry("claim-a", POD_A, [("node-a", "gpu-2", ["gpu"])])])
    checkpoint = dra_state.parse_dra_manager_state(raw)
    assert checkpoint.version == "v1"
    assert checkpoint.checksum_verified
    (entry,) = checkpoint.entries
    assert entry.pod_uids == {POD_A}
    assert [(d.ref, d.requests) for d in entry.devices] == [
        (DraDeviceRef(driver=DRIVER, pool="node-a", device="gpu-2"), ("gpu",))
    ]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", SourceError),
        (b'{"Data": "{\\"kind\\":\\"DRACheckpoint\\"', SourceError),  # truncated
        (b"\x00\xff garbage", SourceError),
        (b'{"Data": "{}", "Checksum": 1}', SourceChecksumError),
        (b'{"something": "else"}', SourceFormatError),
        (b"[1, 2]", SourceError),
    ],
)
def test_bad_checkpoints_are_one_clear_error(raw: bytes, error: type[SourceError]) -> None:
    with pytest.raises(error) as caught:
        dra_state.parse_dra_manager_state(raw)
    assert "\n" not in str(caught.value)
    assert "dra_manager_state" in str(caught.value)


def test_a_checkpoint_of_another_kind_is_refused() -> None:
    raw = dra_file([])
    body = json.loads(raw)
    data = body["Data"].replace("DRACheckpoint", "CPUCheckpoint")
    with pytest.raises(SourceFormatError, match="CPUCheckpoint"):
        dra_state.parse_dra_manager_state(json.dumps({"Data": data, "Checksum": zlib.crc32(data.encode())}).encode())


def test_a_huge_checkpoint_is_refused_unread(machine: HostTree) -> None:
    path = machine.paths.dra_manager_state
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b" " * 4096)
    with pytest.raises(SourceError, match=r"limit|large|bytes"):
        dra_state.read_dra_manager_state(machine.paths, limit_bytes=1024)


def test_health_state_reads_each_device() -> None:
    raw = json.dumps(
        {
            DRIVER: {
                "Devices": {
                    "node-a/gpu-0": {"PoolName": "node-a", "DeviceName": "gpu-0", "Health": "Healthy"},
                    "node-a/gpu-1": {
                        "PoolName": "node-a",
                        "DeviceName": "gpu-1",
                        "Health": "Unhealthy",
                        "Message": "XID 79",
                    },
                    "node-a/gpu-2": {"Health": "Flaky"},
                }
            }
        }
    ).encode()
    health = {(h.ref.device, h.health, h.message) for h in dra_state.parse_dra_health_state(raw)}
    assert health == {("gpu-0", "Healthy", ""), ("gpu-1", "Unhealthy", "XID 79"), ("gpu-2", "Unknown", "")}


# --- ResourceSlices and claims --------------------------------------------------------------------------


def test_only_the_newest_generation_of_a_pool_counts() -> None:
    old = _slice([_gpu("gpu-old", numa=0)], generation=1)
    new = _slice([_gpu("gpu-new", numa=1)], generation=2)
    other_node = _slice([_gpu("elsewhere", numa=0)], node="node-b")
    devices = slice_devices([old, new, other_node], node_name=NODE)
    assert [(d.ref.device, set(d.numa_nodes)) for d in devices] == [("gpu-new", {1})]


def test_attributes_v1_and_v1beta1_and_bare_names() -> None:
    v1beta1 = {"name": "nic-0", "basic": {"attributes": {"pciBusID": {"string": "0000:3B:02.1"}}}}
    listed = {"name": "gpu-l", "attributes": {"resource.kubernetes.io/numaNode": {"list": {"int": [1]}}}}
    cpu = {"name": "cpu-4", "attributes": {"dra.cpu/numaNodeID": {"int": 0}, "dra.cpu/cpuID": {"int": 4}}}
    devices = {d.ref.device: d for d in slice_devices([_slice([v1beta1, listed, cpu])], node_name=NODE)}
    assert devices["nic-0"].pci_address == "0000:3b:02.1"
    assert not devices["nic-0"].numa_nodes
    assert devices["gpu-l"].numa_nodes == {1}
    assert devices["cpu-4"].cpu_ids == {4}
    assert devices["cpu-4"].numa_nodes == {0}


def test_a_claims_allocation_and_reservations() -> None:
    claim = resource_claim(_claim("a-gpu", [("gpu", "gpu-2")], reserved=[POD_A]))
    assert claim is not None
    assert [(d.ref.device, d.requests) for d in claim.devices] == [("gpu-2", ("gpu",))]
    assert claim.reserved_for == {POD_A}
    assert resource_claim({"kind": "nonsense"}) is None
    unallocated = resource_claim({"metadata": {"name": "x", "namespace": "default", "uid": "u"}})
    assert unallocated is not None
    assert unallocated.devices == ()


# --- the snapshot on the fixture machine ----------------------------------------------------------------


def _gpu(name: str, *, numa: int | None = None, pci: str | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {"productName": {"string": "Example GPU"}}
    if numa is not None:
        attributes["resource.kubernetes.io/numaNode"] = {"int": numa}
    if pci is not None:
        attributes["resource.kubernetes.io/pciBusID"] = {"string": pci}
    return {"name": name, "attributes": attributes}


def _slice(
    devices: Sequence[dict[str, Any]], *, driver: str = DRIVER, node: str = NODE, generation: int = 1
) -> dict[str, Any]:
    return {
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
            "devices": list(devices),
        }
    }


def _claim(
    name: str, results: Sequence[tuple[str, str]], *, driver: str = DRIVER, reserved: Sequence[str] = ()
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": request, "driver": driver, "pool": NODE, "device": device}
                        for request, device in results
                    ]
                }
            },
            "reservedFor": [{"resource": "pods", "name": "p", "uid": uid} for uid in reserved],
        },
    }


def _entry(claim: str, pod: str, devices: Sequence[tuple[str, str, Sequence[str]]]) -> dict[str, Any]:
    return dra_entry(claim_uid=f"uid-{claim}", claim=claim, namespace="default", pods=[pod], devices={DRIVER: devices})


def _pod(uid: str, name: str, claims: Sequence[ContainerClaim]) -> PodRef:
    return PodRef(uid=uid, namespace="default", name=name, spec_known=True, running=True, claims=tuple(claims))


# gpu-0: numaNode 0 (free); gpu-1: only a PCI address, on NUMA 1 by sysfs; gpu-2: numaNode 1; gpu-3: nothing.
GPUS = [_gpu("gpu-0", numa=0), _gpu("gpu-1", pci="0000:8a:00.0"), _gpu("gpu-2", numa=1), _gpu("gpu-3")]
# train (pod A) is pinned to NUMA 0 and holds gpu-2 (NUMA 1): misaligned; infer (pod B) is pinned to NUMA 1
# and holds gpu-1 (NUMA 1 by sysfs): aligned.
PODS = (
    _pod(POD_A, "trainer", [ContainerClaim(container="train", claim="a-gpu")]),
    _pod(POD_B, "server", [ContainerClaim(container="infer", claim="b-gpu", request="gpu")]),
)
CLAIMS = [_claim("a-gpu", [("gpu", "gpu-2")], reserved=[POD_A]), _claim("b-gpu", [("gpu", "gpu-1")], reserved=[POD_B])]


class Api:
    """What the slice watch and the claim fetcher hand the builder: changed by the tests between builds."""

    def __init__(self, slices: list[dict[str, Any]], claims: list[dict[str, Any]]) -> None:
        self.slices = slices
        self.claims = claims
        self.fail: SourceError | None = None

    def __call__(self) -> DraApiReading:
        if self.fail is not None:
            raise self.fail
        found = [claim for raw in self.claims if (claim := resource_claim(raw)) is not None]
        return DraApiReading(devices=slice_devices(self.slices, node_name=NODE), claims=tuple(found))


def _pinned(machine: HostTree, *, entries: dict[str, dict[str, Sequence[int]]] | None = None) -> None:
    entries = entries if entries is not None else {POD_A: {"train": [1, 2, 17, 18]}, POD_B: {"infer": [9, 25]}}
    pinned = {cpu for containers in entries.values() for cpus in containers.values() for cpu in cpus}
    install(machine, config=fixture_config(memory="None"))
    replace_atomically(
        machine.paths.cpu_manager_state, cpu_state(default=[c for c in range(32) if c not in pinned], entries=entries)
    )


def build(machine: HostTree, api: Api | None, *, pods: tuple[PodRef, ...] = PODS) -> Snapshot:
    builder = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, use_podresources=False,
                              pods_reader=lambda: pods, dra_reader=api)  # fmt: skip
    return builder.build()


def _accounts(snapshot: Snapshot, resource: str) -> dict[int, tuple[int, int, int | None]]:
    return {
        a.numa_node: (a.capacity, a.allocatable, a.available)
        for a in snapshot.accounting.accounts
        if a.resource == resource
    }


def _alignment(snapshot: Snapshot) -> dict[str, tuple[bool, bool, dict[str, frozenset[int]]]]:
    return {
        c.container: (c.aligned, c.dra_misaligned, dict(c.numa_nodes))
        for c in snapshot.accounting.containers
        if c.holds_dra
    }


def test_dra_devices_are_accounted_per_numa_node(machine: HostTree) -> None:
    _pinned(machine)
    snapshot = build(machine, Api([_slice(GPUS)], CLAIMS))
    assert _accounts(snapshot, RESOURCE) == {-1: (1, 1, 1), 0: (1, 1, 1), 1: (2, 2, 0)}
    assert snapshot.accounting.dra is not None
    where = {d.ref.device: (set(d.numa_nodes), d.numa_source) for d in snapshot.accounting.dra.devices}
    assert where == {
        "gpu-0": ({0}, "attribute"),
        "gpu-1": ({1}, "pci"),
        "gpu-2": ({1}, "attribute"),
        "gpu-3": (set(), "unknown"),
    }


def test_the_container_whose_dra_gpu_is_away_from_its_cpus_is_misaligned(machine: HostTree) -> None:
    _pinned(machine)
    snapshot = build(machine, Api([_slice(GPUS)], CLAIMS))
    assert _alignment(snapshot) == {
        "train": (False, True, {"cpu": frozenset({0}), RESOURCE: frozenset({1})}),
        "infer": (True, False, {"cpu": frozenset({1}), RESOURCE: frozenset({1})}),
    }
    text = render_exposition(snapshot).decode()
    assert (
        f'numa_topology_container_dra_misaligned{{container="train",namespace="default",pod="trainer",'
        f'pod_uid="{POD_A}"}} 1.0' in text
    )
    assert (
        f'numa_topology_container_dra_misaligned{{container="infer",namespace="default",pod="server",'
        f'pod_uid="{POD_B}"}} 0.0' in text
    )
    device_info = [
        line for line in text.splitlines() if line.startswith("numa_topology_device_info{") and "dra:" in line
    ]
    assert len(device_info) == 4
    assert all(f'pool="{NODE}"' in line for line in device_info)
    assert any('device="gpu-1"' in line and 'numa_node="1"' in line and 'pci_address="0000:8a:00.0"' in line
               for line in device_info)  # fmt: skip
    rows = {(r.device, r.resource) for r in snapshot.accounting.devices if r.kind == "gpu"}
    assert ("0000:8a:00.0", "") not in rows, "the GPU discovery sees and the DRA driver publishes is one device"
    assert {("0000:1a:00.0", ""), ("0000:1b:00.0", ""), ("0000:8b:00.0", ""), ("gpu-1", RESOURCE)} <= rows
    table = render_snapshot(snapshot)
    assert "MISALIGNED" in table
    assert "DRA devices: 4, allocated: 2" in table


def test_a_device_of_unknown_place_is_never_called_misaligned(machine: HostTree) -> None:
    _pinned(machine)
    claims = [_claim("a-gpu", [("gpu", "gpu-3")]), *CLAIMS[1:]]
    snapshot = build(machine, Api([_slice(GPUS)], claims))
    aligned, misaligned, spans = _alignment(snapshot)["train"]
    assert spans[RESOURCE] == {-1}
    assert not misaligned
    assert not aligned, "an unknown NUMA node is not aligned either: the audit says what it cannot know"


def test_the_nrt_leaves_dra_devices_out(machine: HostTree) -> None:
    _pinned(machine)
    snapshot = build(machine, Api([_slice(GPUS)], CLAIMS))
    names = {r["name"] for zone in zone_resources(snapshot).values() for r in zone}
    assert "cpu" in names
    assert not any(name.startswith("dra:") for name in names)


def test_cpus_a_cpu_driver_took_leave_available_and_the_nrt(machine: HostTree) -> None:
    _pinned(machine, entries={})
    cpus = [
        {"name": f"cpu-{c}", "attributes": {"dra.cpu/numaNodeID": {"int": 0}, "dra.cpu/cpuID": {"int": c}}}
        for c in (4, 5, 6)
    ]
    claims = [_claim("a-cpus", [("cpus", "cpu-4"), ("cpus", "cpu-5")], driver=CPU_DRIVER)]
    pods = (_pod(POD_A, "trainer", [ContainerClaim(container="train", claim="a-cpus")]),)
    before = build(machine, Api([_slice(cpus, driver=CPU_DRIVER)], []), pods=pods)
    after = build(machine, Api([_slice(cpus, driver=CPU_DRIVER)], claims), pods=pods)
    assert _accounts(before, "cpu")[0] == (16, 14, 14)
    assert _accounts(after, "cpu")[0] == (16, 14, 12)
    assert _accounts(after, f"dra:{CPU_DRIVER}") == {0: (3, 3, 1)}
    zone0 = {r["name"]: r["available"] for r in zone_resources(after)[0]}
    assert zone0["cpu"] == 12
    assert f"dra:{CPU_DRIVER}" not in zone0
    assert after.accounting.dra is not None
    assert after.accounting.dra.exclusive_cpus == {4, 5}
    assert _alignment(after)["train"] == (True, False, {f"dra:{CPU_DRIVER}": frozenset({0})})


def test_a_withdrawn_slice_keeps_its_held_device_where_it_was(machine: HostTree) -> None:
    _pinned(machine)
    api = Api([_slice(GPUS)], CLAIMS)
    builder = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, use_podresources=False,
                              pods_reader=lambda: PODS, dra_reader=api)  # fmt: skip
    builder.build()
    api.slices = []  # the driver restarts: its slices are withdrawn, the claims still hold gpu-1 and gpu-2
    snapshot = builder.build()
    assert _accounts(snapshot, RESOURCE) == {}, "no slice publishes a device: no capacity"
    assert snapshot.accounting.dra is not None
    held = {d.ref.device: (set(d.numa_nodes), d.published) for d in snapshot.accounting.dra.devices}
    assert held == {"gpu-1": ({1}, False), "gpu-2": ({1}, False)}
    assert _alignment(snapshot)["train"][1], "still misaligned: the GPU did not move"
    text = render_exposition(snapshot).decode()
    assert (
        'numa_topology_dra_device_unpublished{device="gpu-2",pool="node-a",resource="dra:gpu.example.com"} 1.0' in text
    )


def test_the_checkpoint_alone_audits_at_pod_scope(machine: HostTree) -> None:
    """No API server: the kubelet's checkpoint says which pod holds a device, not which container."""
    _pinned(machine)
    checkpoint = dra_file([_entry("a-gpu", POD_A, [(NODE, "gpu-2", ["gpu"])])])
    replace_atomically(machine.paths.dra_manager_state, checkpoint)
    api = Api([_slice(GPUS)], [])
    unknown_specs = (_pod(POD_A, "trainer", []), _pod(POD_B, "server", []))
    snapshot = build(machine, api, pods=unknown_specs)
    rows = {(c.pod_uid, c.container): c for c in snapshot.accounting.containers if c.holds_dra}
    assert list(rows) == [(POD_A, "(pod)")]
    assert rows[(POD_A, "(pod)")].dra_misaligned, "the pod's only pinned CPUs are on NUMA 0, its GPU on NUMA 1"
    assert _accounts(snapshot, RESOURCE)[1] == (2, 2, 1)
    with_specs = build(machine, api)  # the pod's spec names the claim: the checkpoint's devices are train's
    assert _alignment(with_specs) == {"train": (False, True, {"cpu": frozenset({0}), RESOURCE: frozenset({1})})}


def test_a_checkpoint_that_turns_corrupt_keeps_the_last_good_reading(machine: HostTree) -> None:
    _pinned(machine)
    replace_atomically(machine.paths.dra_manager_state, dra_file([_entry("a-gpu", POD_A, [(NODE, "gpu-2", ["gpu"])])]))
    builder = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, use_podresources=False,
                              pods_reader=lambda: PODS, dra_reader=Api([_slice(GPUS)], []))  # fmt: skip
    good = builder.build()
    raw = bytearray(machine.paths.dra_manager_state.read_bytes())
    raw[-3] = ord("7") if raw[-3] != ord("7") else ord("8")  # the checksum's last digits
    replace_atomically(machine.paths.dra_manager_state, bytes(raw))
    bad = builder.build()
    status = {s.source: s for s in bad.sources}["dra_manager_state"]
    assert not status.up
    assert "checksum" in (status.message or "")
    assert builder.errors_total[("dra_manager_state", "checksum")] == 1
    assert _accounts(bad, RESOURCE) == _accounts(good, RESOURCE)
    assert _accounts(bad, RESOURCE)[1] == (2, 2, 1)


def test_the_api_failing_keeps_the_last_good_reading(machine: HostTree) -> None:
    _pinned(machine)
    api = Api([_slice(GPUS)], CLAIMS)
    builder = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, use_podresources=False,
                              pods_reader=lambda: PODS, dra_reader=api)  # fmt: skip
    good = builder.build()
    api.fail = SourceMissing(RESOURCE_SLICES, "this node's ResourceSlices are not listed yet")
    later = builder.build()
    assert _accounts(later, RESOURCE) == _accounts(good, RESOURCE)


def test_sub_requests_serve_the_request_the_container_names(machine: HostTree) -> None:
    _pinned(machine)
    claims = [_claim("b-gpu", [("gpu/large", "gpu-1"), ("nic", "gpu-0")], reserved=[POD_B])]
    snapshot = build(machine, Api([_slice(GPUS)], claims), pods=(PODS[1],))
    assert _alignment(snapshot)["infer"] == (True, False, {"cpu": frozenset({1}), RESOURCE: frozenset({1})})


def test_dra_health_is_published(machine: HostTree, tmp_path: Path) -> None:
    _pinned(machine)
    health = {DRIVER: {"Devices": {"node-a/gpu-2": {"PoolName": NODE, "DeviceName": "gpu-2", "Health": "Unhealthy"}}}}
    replace_atomically(machine.paths.dra_health_state, json.dumps(health).encode())
    text = render_exposition(build(machine, Api([_slice(GPUS)], CLAIMS))).decode()
    assert (
        'numa_topology_dra_device_health{device="gpu-2",health="Unhealthy",pool="node-a",'
        'resource="dra:gpu.example.com"} 1.0' in text
    )


def test_podresources_names_the_container_that_holds_a_claim(machine: HostTree) -> None:
    """The kubelet's podresources API (a real gRPC server) lists each container's claim devices
    (`dynamic_resources`): the checkpoint's pod-level entry becomes the container's, with no pod spec."""
    _pinned(machine)
    replace_atomically(machine.paths.dra_manager_state, dra_file([_entry("a-gpu", POD_A, [(NODE, "gpu-2", ["gpu"])])]))
    directory = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    server = PodResourcesServer(directory / "kubelet.sock")
    try:
        server.serve_state(machine.paths, {POD_A: ("default", "trainer"), POD_B: ("default", "server")})
        train = next(c for p in server.listed.pod_resources if p.name == "trainer" for c in p.containers)
        train.dynamic_resources.append(
            api_pb2.DynamicResource(
                claim_name="a-gpu",
                claim_namespace="default",
                claim_resources=[api_pb2.ClaimResource(driver_name=DRIVER, pool_name=NODE, device_name="gpu-2")],
            )
        )
        paths = dataclasses.replace(machine.paths, podresources_socket_file=directory / "kubelet.sock")
        pods = (_pod(POD_A, "trainer", []), _pod(POD_B, "server", []))
        builder = SnapshotBuilder(paths, use_nvml=False, use_udev=False, pods_reader=lambda: pods,
                                  dra_reader=Api([_slice(GPUS)], []))  # fmt: skip
        snapshot = builder.build()
        builder.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert snapshot.source("podresources") is not None
    assert _alignment(snapshot) == {"train": (False, True, {"cpu": frozenset({0}), RESOURCE: frozenset({1})})}


def test_a_legacy_checkpoint_with_structured_data_is_read_unverified_and_says_so(
    machine: HostTree, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.loads((VECTORS / "legacy-single.json").read_bytes())
    body["entries"][0]["ResourceHandles"][0]["structuredData"] = {"nodeName": NODE, "results": []}
    body["checksum"] = 1  # whatever 1.30 hashed, this reader cannot reproduce it
    raw = json.dumps(body).encode()
    checkpoint = dra_state.parse_dra_manager_state(raw)
    assert checkpoint.version == "legacy"
    assert not checkpoint.checksum_verified
    install(machine, config=fixture_config(memory="None"))
    replace_atomically(machine.paths.dra_manager_state, raw)
    snapshot = build(machine, None)
    status = snapshot.source("dra_manager_state")
    assert status is not None
    assert status.up
    assert "unverified" in (status.message or "")
    assert "dra_manager_state ok (read unverified" in render_snapshot(snapshot)

    builder = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, use_podresources=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="exporter.snapshot"):
        builder.build()
        builder.build()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dra_manager_state")]
    assert len(said) == 1, "said once, not at every refresh"


def test_a_profile_naming_a_dra_device_fits_as_the_best_case(machine: HostTree) -> None:
    """{dra:gpu.example.com: 1, cpu: 2}: NUMA 0 has gpu-0 free and CPUs free; NUMA 1 has no DRA device
    free (gpu-1 and gpu-2 held). gpu-3 (unknown place) is in no NUMA node's fit."""
    _pinned(machine)
    builder = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, use_podresources=False,
                              pods_reader=lambda: PODS, dra_reader=Api([_slice(GPUS)], CLAIMS),
                              profiles=(Profile(name="dra-train", requests={RESOURCE: 1, "cpu": 2}),))  # fmt: skip
    snapshot = builder.build()
    (fit,) = snapshot.accounting.fits
    assert fit.per_numa == {0: 1, 1: 0}
    assert fit.aligned == 1
    table = render_snapshot(snapshot)
    assert f"{RESOURCE} †" in table, "marked as DRA: counted per NUMA node, not aligned by the kubelet"


def test_a_gpu_nvml_sees_and_a_driver_publishes_by_uuid_is_one_device(machine: HostTree, nvml_config: Path) -> None:
    """The slice names only the GPU's UUID (NVIDIA's driver always publishes `uuid`): NVML joins it to its PCI
    address and NUMA node, and discovery's row for that GPU becomes the DRA one."""
    fixture_nvml_config(nvml_config)
    _pinned(machine)
    uuid = "GPU-1b7c9a2e-0000-0000-0000-000000000002"  # 0000:8a:00.0, NUMA 1
    api = Api([_slice([{"name": "gpu-9", "attributes": {"uuid": {"string": uuid}}}])], [])
    builder = SnapshotBuilder(machine.paths, use_nvml=True, use_udev=False, use_podresources=False,
                              pods_reader=lambda: PODS, dra_reader=api)  # fmt: skip
    snapshot = builder.build()
    assert snapshot.accounting.dra is not None
    (device,) = snapshot.accounting.dra.devices
    assert device.numa_nodes == {1}
    assert device.pci_address.lower() == "0000:8a:00.0"
    rows = [r for r in snapshot.accounting.devices if r.pci_address.lower() == "0000:8a:00.0"]
    assert [(r.device, r.resource) for r in rows] == [("gpu-9", RESOURCE)]


def test_a_device_on_several_numa_nodes_is_counted_once(machine: HostTree) -> None:
    _pinned(machine)
    wide = {"name": "gpu-w", "attributes": {"resource.kubernetes.io/numaNode": {"list": {"int": [0, 1]}}}}
    snapshot = build(machine, Api([_slice([wide, _gpu("gpu-0", numa=0)])], []))
    assert _accounts(snapshot, RESOURCE) == {-1: (1, 1, 1), 0: (1, 1, 1)}

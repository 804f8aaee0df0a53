"""Per-NUMA accounting on the machine the kubelet fixtures assume, asserted exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.kubelet.accounting import ResourceAccount
from exporter.kubelet.profiles import Profile, parse_profiles
from exporter.snapshot import Snapshot, SnapshotBuilder
from tests.hosttree import HostTree, fixture_nvml_config
from tests.kubelet_files import (
    POD_A,
    POD_B,
    cpu_state,
    device_entry,
    device_state,
    fixture_config,
    install,
    pod_logs,
)

GIB = 1 << 30
GPU = "nvidia.com/gpu"
VF = "intel.com/sriov_netdevice"
GPUS = [f"GPU-1b7c9a2e-0000-0000-0000-00000000000{i}" for i in range(4)]


def build(host: HostTree, *, profiles: tuple[Profile, ...] | None = None, nvml: bool = False) -> Snapshot:
    return SnapshotBuilder(host.paths, profiles=profiles, use_nvml=nvml, use_udev=False).build()


def table(snapshot: Snapshot) -> dict[tuple[int, str], tuple[int, int, int | None]]:
    return {(a.numa_node, a.resource): (a.capacity, a.allocatable, a.available) for a in snapshot.accounting.accounts}


@pytest.fixture
def gpu_machine(machine: HostTree, nvml_config: Path) -> HostTree:
    """The fixture machine with fake NVML naming its four GPUs, so free GPUs have a NUMA node too."""
    fixture_nvml_config(nvml_config)
    return machine


def test_static_with_init_container_reuse(machine: HostTree) -> None:
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    numbers = table(build(machine))
    assert numbers[(0, "cpu")] == (16, 14, 10)
    assert numbers[(1, "cpu")] == (16, 16, 10), "init-schema's CPUs are re-used by db: a union, not a sum"


def test_static_empty(machine: HostTree) -> None:
    install(machine, cpu="cpu_manager_state.static-empty.json", config=fixture_config(memory="None"))
    numbers = table(build(machine))
    assert (numbers[(0, "cpu")], numbers[(1, "cpu")]) == ((16, 14, 14), (16, 16, 16))


def test_none_policies(machine: HostTree) -> None:
    install(
        machine,
        cpu="cpu_manager_state.none.json",
        memory="memory_manager_state.none.json",
        config=fixture_config(cpu="none", memory="None"),
    )
    snapshot = build(machine)
    numbers = table(snapshot)
    assert numbers[(0, "cpu")] == (16, 14, 14)
    memory_allocatable = 64 * GIB - 4 * GIB - GIB - GIB
    assert memory_allocatable == 62277025792
    assert numbers[(0, "memory")] == (64 * GIB, memory_allocatable, memory_allocatable)
    assert numbers[(1, "hugepages-1Gi")] == (4 * GIB, 4 * GIB, 4 * GIB)
    assert numbers[(1, "hugepages-2Mi")] == (GIB, GIB, GIB)
    assert snapshot.accounting.numa_accounted == frozenset()
    assert all(a.stranded == 0 for a in snapshot.accounting.accounts)


def test_static_memory_with_hugepages(machine: HostTree) -> None:
    install(
        machine,
        cpu="cpu_manager_state.static-2pods.json",
        memory="memory_manager_state.static-hugepages.json",
        config=fixture_config(),
    )
    numbers = table(build(machine))
    assert numbers[(0, "memory")] == (64 * GIB, 62277025792, 57982058496)
    assert numbers[(1, "memory")] == (64 * GIB, 62277025792, 53687091200)
    assert numbers[(0, "hugepages-1Gi")] == (4 * GIB, 4 * GIB, 2 * GIB)
    assert numbers[(1, "hugepages-2Mi")] == (GIB, GIB, 805306368)
    assert numbers[(1, "hugepages-1Gi")] == (4 * GIB, 4 * GIB, 4 * GIB)


def test_gpus_and_vfs_per_numa(gpu_machine: HostTree) -> None:
    install(
        gpu_machine,
        devices="kubelet_internal_checkpoint.gpu-sriov.json",
        config=fixture_config(cpu="none", memory="None"),
    )
    numbers = table(build(gpu_machine, nvml=True))
    assert numbers[(0, GPU)] == (2, 2, 1)
    assert numbers[(1, GPU)] == (2, 2, 0)
    assert numbers[(0, VF)] == (4, 4, 3)
    assert numbers[(1, VF)] == (4, 4, 2)
    assert (-1, GPU) not in numbers


def test_without_nvml_free_gpus_have_no_known_numa_node(machine: HostTree) -> None:
    install(machine, devices="kubelet_internal_checkpoint.gpu-sriov.json")
    numbers = table(build(machine))
    assert numbers[(-1, GPU)] == (1, 1, 1), "GPU ...001 is free and only NVML could place it"
    assert numbers[(0, GPU)] == (1, 1, 0), "GPU ...000 is placed by the checkpoint's NUMA key"


def test_v1_legacy_checkpoint(gpu_machine: HostTree) -> None:
    install(gpu_machine, devices="kubelet_internal_checkpoint.v1-legacy.json")
    numbers = table(build(gpu_machine, nvml=True))
    assert numbers[(0, GPU)] == (2, 2, 1)
    assert numbers[(1, GPU)] == (2, 2, 2)


def test_a_device_under_several_numa_keys_counts_on_each(machine: HostTree) -> None:
    install(
        machine,
        devices=device_state(
            [device_entry(POD_A, "app", "x.io/fpga", {0: ["fpga-0"], 1: ["fpga-0"]})],
            {"x.io/fpga": ["fpga-0", "fpga-1"]},
        ),
    )
    numbers = table(build(machine))
    assert numbers[(0, "x.io/fpga")] == (1, 1, 0)
    assert numbers[(1, "x.io/fpga")] == (1, 1, 0)
    assert numbers[(-1, "x.io/fpga")] == (1, 1, 1)


def test_two_free_gpus_with_no_free_cpus_are_stranded(gpu_machine: HostTree) -> None:
    numa1_cpus = [*range(8, 16), *range(24, 32)]
    install(
        gpu_machine,
        cpu=cpu_state(default=[*range(8), *range(16, 24)], entries={POD_B: {"db": numa1_cpus}}),
        devices=device_state([], {GPU: GPUS}),
        config=fixture_config(memory="None"),
    )
    profiles = (Profile(name="gpu", requests={GPU: 1, "cpu": 4}),)
    snapshot = build(gpu_machine, profiles=profiles, nvml=True)
    accounts = {(a.numa_node, a.resource): a for a in snapshot.accounting.accounts}
    assert accounts[(1, GPU)].available == 2
    assert accounts[(1, GPU)].stranded == 2
    assert accounts[(0, GPU)].stranded == 0, "NUMA 0 has 14 free CPUs: both GPUs there are usable"
    assert accounts[(0, "cpu")].stranded == 14 - 2 * 4
    (fit,) = snapshot.accounting.fits
    assert (dict(fit.per_numa), fit.aligned, fit.unaligned) == ({0: 2, 1: 0}, 2, 3)


def test_a_profile_that_fits_only_across_numa_nodes(machine: HostTree) -> None:
    # 6 free CPUs on each NUMA node, a profile of 10 CPUs: the node has 12, no NUMA node has 10.
    install(
        machine,
        cpu=cpu_state(default=[*range(6), *range(8, 14)], entries={POD_A: {"app": [*range(6, 8), *range(14, 32)]}}),
        config=fixture_config(memory="None").replace('reservedSystemCPUs: "0,16"', 'reservedSystemCPUs: ""'),
    )
    (fit,) = build(machine, profiles=parse_profiles("big: {cpu: 10}")).accounting.fits
    assert (dict(fit.per_numa), fit.aligned, fit.unaligned) == ({0: 0, 1: 0}, 0, 1)
    assert fit.unaligned > fit.aligned


def test_default_profiles(gpu_machine: HostTree) -> None:
    install(
        gpu_machine,
        cpu="cpu_manager_state.static-2pods.json",
        memory="memory_manager_state.static-hugepages.json",
        devices="kubelet_internal_checkpoint.gpu-sriov.json",
        config=fixture_config(),
    )
    snapshot = build(gpu_machine, nvml=True)
    profiles = {p.name: dict(p.requests) for p in snapshot.accounting.profiles}
    assert profiles[GPU] == {GPU: 1, "cpu": 1, "memory": GIB}
    assert profiles["cpu"] == {"cpu": 1, "memory": GIB}
    assert profiles["hugepages-2Mi"] == {"hugepages-2Mi": 2 << 20, "cpu": 1, "memory": GIB}
    fits = {fit.profile: fit for fit in snapshot.accounting.fits}
    assert dict(fits[GPU].per_numa) == {0: 1, 1: 0}
    assert dict(fits["hugepages-1Gi"].per_numa) == {0: 2, 1: 4}


def test_alignment_audit_and_pod_names(gpu_machine: HostTree) -> None:
    install(
        gpu_machine,
        cpu=cpu_state(
            default=[*range(2, 8), *range(9, 16), *range(17, 32)], entries={POD_A: {"app": [0, 16]}, POD_B: {"db": [8]}}
        ),
        devices=device_state(
            [device_entry(POD_A, "app", GPU, {1: [GPUS[2]]}), device_entry(POD_B, "db", GPU, {1: [GPUS[3]]})],
            {GPU: GPUS},
        ),
        config=fixture_config(memory="None"),
    )
    pod_logs(gpu_machine, [("team-a", "trainer-0", POD_A), ("team-b", "db-0", POD_B)])
    containers = {c.container: c for c in build(gpu_machine, nvml=True).accounting.containers}
    app, db = containers["app"], containers["db"]
    assert (app.namespace, app.pod, app.pod_uid) == ("team-a", "trainer-0", POD_A)
    assert dict(app.numa_nodes) == {"cpu": {0}, GPU: {1}}
    assert not app.aligned
    assert dict(db.numa_nodes) == {"cpu": {1}, GPU: {1}}
    assert db.aligned


def test_stale_entries_are_reported_and_still_subtracted(machine: HostTree) -> None:
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    pod_logs(machine, [("default", "app", POD_A)])
    snapshot = build(machine)
    assert snapshot.accounting.stale_entries == {"cpu_manager_state": 2}
    assert table(snapshot)[(1, "cpu")] == (16, 16, 10)


def test_reserved_cpus_derived_from_kube_reserved(machine: HostTree) -> None:
    config = (
        fixture_config(memory="None")
        .replace('reservedSystemCPUs: "0,16"\n', "")
        .replace("kubeReserved: {memory: 1948Mi}", "kubeReserved: {cpu: 1500m, memory: 1948Mi}")
    )
    install(machine, cpu="cpu_manager_state.static-empty.json", config=config)
    reserved = build(machine).accounting.reserved
    assert (reserved.source, reserved.cpus) == ("derived", {0, 16})


def test_unknown_availability_is_not_guessed(machine: HostTree) -> None:
    install(machine, config=fixture_config(memory="None"))  # static CPU manager, state file never seen
    snapshot = build(machine)
    cpu: ResourceAccount = next(a for a in snapshot.accounting.accounts if a.resource == "cpu")
    assert cpu.available is None
    assert not snapshot.source("cpu_manager_state").up  # type: ignore[union-attr]
    assert snapshot.accounting.fits == ()


def test_entries_of_gone_pods_are_released_as_the_kubelets_next_admission_releases_them() -> None:
    """K memorymanager releaseMemory: a block over NUMA 0 and 1 frees what NUMA 0 has reserved first, the rest
    on NUMA 1, and both nodes leave their group once their last assignment goes; the CPUs of a gone pod return
    to the shared pool; its devices are free. A live pod's entries stay."""
    from exporter.kubelet.accounting import KubeletState, without_gone_pods
    from exporter.model import (
        CpuManagerState,
        DeviceAllocation,
        DeviceCheckpoint,
        MemoryBlock,
        MemoryManagerState,
        MemoryNumaState,
        MemoryTable,
    )

    gib = 1 << 30

    def table(reserved: int) -> MemoryTable:
        return MemoryTable(total_bytes=64 * gib, system_reserved_bytes=gib, allocatable_bytes=63 * gib,
                           reserved_bytes=reserved, free_bytes=63 * gib - reserved)  # fmt: skip

    memory = MemoryManagerState(
        version="v1",
        policy_name="Static",
        machine_state={
            0: MemoryNumaState(
                numa_node=0, number_of_assignments=1, memory_map={"memory": table(60 * gib)}, cells=(0, 1)
            ),
            1: MemoryNumaState(
                numa_node=1, number_of_assignments=2, memory_map={"memory": table(12 * gib)}, cells=(0, 1)
            ),
        },
        entries={
            "gone": {"c": (MemoryBlock(numa_affinity=(0, 1), resource="memory", size_bytes=70 * gib),)},
            "live": {"c": (MemoryBlock(numa_affinity=(1,), resource="memory", size_bytes=2 * gib),)},
        },
        pod_entries={},
    )
    cpu = CpuManagerState(version="v2", policy_name="static", default_cpuset=frozenset({0, 1}),
                          entries={"gone": {"c": frozenset({2, 3})}, "live": {"c": frozenset({4})}}, pod_entries={},
                          checksum_verified=True)  # fmt: skip
    devices = DeviceCheckpoint(
        version="v2",
        allocations=(
            DeviceAllocation(pod_uid="gone", container="c", resource="gpu", devices_by_numa={0: ("g0",)}),
            DeviceAllocation(pod_uid="live", container="c", resource="gpu", devices_by_numa={1: ("g1",)}),
        ),
        registered={"gpu": ("g0", "g1")},
    )
    released = without_gone_pods(KubeletState(cpu=cpu, memory=memory, devices=devices), frozenset({"live"}))
    assert released.cpu is not None
    assert released.memory is not None
    assert released.devices is not None
    assert released.cpu.default_cpuset == {0, 1, 2, 3}
    assert set(released.cpu.entries) == {"live"}
    numa0, numa1 = released.memory.machine_state[0], released.memory.machine_state[1]
    assert (numa0.memory_map["memory"].reserved_bytes, numa0.memory_map["memory"].free_bytes) == (0, 63 * gib)
    assert (numa1.memory_map["memory"].reserved_bytes, numa1.memory_map["memory"].free_bytes) == (2 * gib, 61 * gib)
    assert (numa0.number_of_assignments, numa0.cells) == (0, (0,))
    assert (numa1.number_of_assignments, numa1.cells) == (1, (0, 1))  # still assigned: its group stays
    assert [a.pod_uid for a in released.devices.allocations] == ["live"]
    assert without_gone_pods(KubeletState(cpu=cpu), frozenset({"live", "gone"})).cpu == cpu


def test_devices_the_kubelet_cannot_hand_out_are_not_allocatable() -> None:
    """A plugin gone (or a device unhealthy): the checkpoint still registers its devices, the kubelet's
    podresources API no longer lists them, and its device manager admits nothing on them."""
    from exporter.kubelet.accounting import device_accounts
    from exporter.model import DeviceAllocation, DeviceCheckpoint

    checkpoint = DeviceCheckpoint(
        version="v2",
        allocations=(DeviceAllocation(pod_uid="p", container="c", resource="gpu", devices_by_numa={0: ("g0",)}),),
        registered={"gpu": ("g0", "g1", "g2")},
    )
    placement = {"g0": frozenset({0}), "g1": frozenset({0}), "g2": frozenset({1})}
    every = {
        (a.numa_node, a.capacity, a.allocatable, a.available) for a in device_accounts(checkpoint, placement=placement)
    }
    assert every == {(0, 2, 2, 1), (1, 1, 1, 1)}
    listed = device_accounts(checkpoint, placement=placement, allocatable={"gpu": frozenset({"g0", "g2"})})
    assert {(a.numa_node, a.capacity, a.allocatable, a.available) for a in listed} == {(0, 2, 1, 0), (1, 1, 1, 1)}
    gone = device_accounts(checkpoint, placement=placement, allocatable={})
    assert {(a.numa_node, a.capacity, a.allocatable, a.available) for a in gone} == {(0, 2, 0, 0), (1, 1, 0, 0)}

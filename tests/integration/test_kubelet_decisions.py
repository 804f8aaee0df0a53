"""Kubelet decisions the accounting must reproduce (docs/reference.md section 10), as fixed cases.

Each case failed on the first version's accounting. The expected numbers are the kubelet's: every case has a
twin that asks kubelet-oracle (the kubelet v1.36.2 managers) the same question, so the literals here cannot
drift from the real thing. Cases the differential suite (test_oracle_differential.py) finds land here too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cpuset import format_cpuset
from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.devices import admission_numa_nodes, device_inventory, device_numa_nodes, hardware_numa_of
from exporter.kubelet.profiles import Profile
from exporter.model import Gpu, Topology
from exporter.paths import HostPaths
from exporter.snapshot import Accounting, SnapshotBuilder, account
from exporter.sources import cpu_manager, device_checkpoint, kubelet_config, memory_manager
from exporter.sources.kubelet_json import spew_checksum
from exporter.units import parse_quantity_exact, quantity_value
from tests.kubelet_files import KUBELET_FIXTURES, device_entry, device_state
from tests.oracle import GIB, MachineSpec, ask

MIB = 1 << 20

# Dual socket, CPUs numbered alternately between sockets (cpu i on socket i % 2), siblings i and i + 8.
INTERLEAVED = MachineSpec(cpus=[(i, i % 2, (i % 8) // 2, i % 2) for i in range(16)], memory={0: 8 * GIB, 1: 8 * GIB})
# Uneven NUMA nodes: 6 cores on NUMA 0, 2 on NUMA 1, siblings i and i + 8.
UNEVEN = MachineSpec(
    cpus=[(core + 8 * t, 0 if core < 6 else 1, core, 0 if core < 6 else 1) for core in range(8) for t in range(2)],
    memory={0: 8 * GIB, 1: 8 * GIB},
)
# The machine the memory-group fixtures were written on (tests/fixtures/kubelet/README.md).
THREE_NODES = MachineSpec(cpus=[(i, i // 4, i, i // 4) for i in range(12)], memory=dict.fromkeys(range(3), 4 * GIB))
GROUP_CONFIG: dict[str, Any] = {
    "cpuManagerPolicy": "static",
    "reservedSystemCPUs": "0",
    "memoryManagerPolicy": "Static",
    "reservedMemory": [{"numaNode": 0, "limits": {"memory": "1124Mi"}}],
    "kubeReserved": {"memory": "1024Mi"},
    "topologyManagerPolicy": "single-numa-node",
}
# 2 NUMA nodes x 2 cores x SMT 2: NUMA 0 = cores {0,4} {1,5}, NUMA 1 = {2,6} {3,7}.
SMT_SMALL = MachineSpec(cpus=[(i, i % 4 // 2, i % 4, i % 4 // 2) for i in range(8)], memory={0: 4 * GIB, 1: 4 * GIB})


def state_of(config: dict[str, Any], **files: bytes) -> KubeletState:
    parsers = {
        "cpu": cpu_manager.parse_cpu_manager_state,
        "memory": memory_manager.parse_memory_manager_state,
        "devices": device_checkpoint.parse_device_checkpoint,
    }
    return KubeletState(
        config=kubelet_config.parse_kubelet_config(yaml.safe_dump(config).encode()),
        **{name: parsers[name](raw) for name, raw in files.items()},  # type: ignore[arg-type]
    )


def fresh_cpu_state(machine: MachineSpec) -> bytes:
    """What the static policy writes at first start: every CPU in the shared pool."""
    cpus = {cpu for cpu, *_ in machine.cpus}
    return json.dumps({"policyName": "static", "defaultCpuSet": format_cpuset(cpus), "checksum": 0}).encode()


def by_numa(accounting: Accounting, resource: str) -> dict[int, tuple[int, int, int | None]]:
    return {
        a.numa_node: (a.capacity, a.allocatable, a.available) for a in accounting.accounts if a.resource == resource
    }


def oracle_reserved(machine: MachineSpec, config: dict[str, Any]) -> str:
    answer = ask({"machine": machine.oracle_machine(), "kubeletConfig": config, "queries": [{"type": "reserved_cpus"}]})
    reserved: str = answer["results"][0]["reservedCPUs"]
    return reserved


def oracle_fit(machine: MachineSpec, config: dict[str, Any], pod: dict[str, str], **extra: Any) -> int:
    request = {
        "machine": machine.oracle_machine(),
        "kubeletConfig": config,
        "queries": [{"type": "fit", "pod": {"requests": pod}, "omitFinalState": True}],
        **extra,
    }
    result = ask(request)["results"][0]
    assert "error" not in result, result["error"]
    count: int = result["count"]
    return count


# --- 1. reserved CPUs derived from kube/system-reserved ------------------------------------------------

RESERVED_CASES = [
    # (machine, kubeReserved cpu, the kubelet's reserved set, per-NUMA allocatable CPUs)
    pytest.param(INTERLEAVED, "3", "0,2,8", {0: 5, 1: 8}, id="interleaved-sockets"),
    pytest.param(INTERLEAVED, "5", "0,2,4,8,10", {0: 3, 1: 8}, id="interleaved-sockets-5"),
    pytest.param(UNEVEN, "2", "6,14", {0: 12, 1: 2}, id="uneven-numa-smaller-first"),
    pytest.param(UNEVEN, "1500m", "6,14", {0: 12, 1: 2}, id="uneven-numa-fractional"),
]


@pytest.mark.parametrize(("machine", "cpu", "expected", "allocatable"), RESERVED_CASES)
def test_derived_reserved_cpus_are_the_kubelets(
    machine: MachineSpec, cpu: str, expected: str, allocatable: dict[int, int]
) -> None:
    config = {"cpuManagerPolicy": "static", "kubeReserved": {"cpu": cpu}}
    accounting = account(machine.topology(), state_of(config, cpu=fresh_cpu_state(machine)))
    assert format_cpuset(accounting.reserved.cpus) == expected
    assert {numa: numbers[1] for numa, numbers in by_numa(accounting, "cpu").items()} == allocatable


@pytest.mark.parametrize(("machine", "cpu", "expected", "allocatable"), RESERVED_CASES)
def test_derived_reserved_cases_match_the_oracle(
    machine: MachineSpec, cpu: str, expected: str, allocatable: dict[int, int]
) -> None:
    assert oracle_reserved(machine, {"cpuManagerPolicy": "static", "kubeReserved": {"cpu": cpu}}) == expected


# --- 2. memory-manager groups ----------------------------------------------------------------------------


def group_state(config: dict[str, Any]) -> KubeletState:
    return state_of(
        config,
        cpu=(KUBELET_FIXTURES / "cpu_manager_state.group.json").read_bytes(),
        memory=(KUBELET_FIXTURES / "memory_manager_state.group.json").read_bytes(),
    )


def test_a_node_in_a_memory_group_offers_no_single_numa_memory() -> None:
    profile = Profile(name="small", requests={"cpu": 1, "memory": GIB})
    accounting = account(THREE_NODES.topology(), group_state(GROUP_CONFIG), profiles=(profile,))
    memory = by_numa(accounting, "memory")
    assert memory[1][2] == 0, "NUMA 1 still has 1.9 GiB free, but only for allocations spanning NUMA 0 and 1"
    assert memory[0][2] == 0
    assert memory[2][2] == 4 * GIB
    (fit,) = accounting.fits
    assert (fit.per_numa, fit.aligned) == ({0: 0, 1: 0, 2: 4}, 4)
    assert all(a.stranded == 0 for a in accounting.accounts if a.resource == "memory")


def test_memory_group_case_matches_the_oracle() -> None:
    state = {
        "cpu_manager_state": json.loads((KUBELET_FIXTURES / "cpu_manager_state.group.json").read_bytes()),
        "memory_manager_state": json.loads((KUBELET_FIXTURES / "memory_manager_state.group.json").read_bytes()),
    }
    assert oracle_fit(THREE_NODES, GROUP_CONFIG, {"cpu": "1", "memory": "1Gi"}, state=state) == 4


# --- 3. devices whose plugin reports no topology ---------------------------------------------------------

NIC = "example.com/nic"
# Four NICs that hardware places on NUMA 1, their plugin reporting no topology; one already handed out.
NICS = MachineSpec(
    cpus=SMT_SMALL.cpus,
    memory=SMT_SMALL.memory,
    devices={NIC: [(f"0000:5{i}:00.0", (), 1) for i in range(4)]},
)
NIC_CONFIG: dict[str, Any] = {"cpuManagerPolicy": "static", "reservedSystemCPUs": "0,4"}


def nic_checkpoint() -> bytes:
    ids = [device for device, _, _ in NICS.devices[NIC]]
    return device_state([device_entry("pod-a", "c0", NIC, {-1: [ids[0]]})], {NIC: ids})


def test_devices_without_plugin_topology_go_with_any_numa_node() -> None:
    profile = Profile(name="nic", requests={NIC: 1, "cpu": 1})
    state = state_of(NIC_CONFIG, cpu=fresh_cpu_state(NICS), devices=nic_checkpoint())
    accounting = account(NICS.topology(), state, profiles=(profile,))
    assert by_numa(accounting, NIC) == {-1: (4, 4, 3)}, "admission view: not bound to a NUMA node"
    (fit,) = accounting.fits
    assert fit.aligned == 3, "three free NICs, each admitted with CPUs of either NUMA node"
    assert fit.per_numa == {0: 2, 1: 3}
    assert all(a.stranded == 0 for a in accounting.accounts if a.resource == NIC)
    # The performance view keeps the hardware's NUMA node, for the audit and device_info.
    assert set(device_numa_nodes(NICS.topology(), state.devices).values()) == {frozenset({1})}
    assert {record.numa_node for record in accounting.devices if record.resource == NIC} == {1}


def test_no_topology_case_matches_the_oracle() -> None:
    extra = {"devices": NICS.oracle_devices(), "allocatedDevices": {NIC: ["0000:50:00.0"]}}
    config = {**NIC_CONFIG, "topologyManagerPolicy": "single-numa-node"}
    assert oracle_fit(NICS, config, {NIC: "1", "cpu": "1", "memory": "100Mi"}, **extra) == 3


def test_a_device_filed_under_its_plugins_numa_node_follows_the_plugin() -> None:
    """Plugin topology differs from the hardware's: admission goes by the plugin's."""
    ids = [device for device, _, _ in NICS.devices[NIC]]
    checkpoint = device_checkpoint.parse_device_checkpoint(
        device_state([device_entry("pod-a", "c0", NIC, {0: [ids[0]]})], {NIC: ids})
    )
    placement = admission_numa_nodes(NICS.topology(), checkpoint)
    assert placement[ids[0]] == {0}
    assert placement[ids[1]] == {1}, "a free device: the hardware's node, what plugins report"


# --- 4. checksums across versions ------------------------------------------------------------------------


def test_cpu_state_hashed_as_checkpoint_v2_verifies() -> None:
    text = (
        "(*state.CPUManagerCheckpointV2){PolicyName:(string)static DefaultCPUSet:(string)0-3 "
        "Entries:(map[string]map[string]string)map[pod:map[c:4-7]] Checksum:(checksum.Checksum)0}"
    )
    raw = json.dumps(
        {
            "policyName": "static",
            "defaultCpuSet": "0-3",
            "entries": {"pod": {"c": "4-7"}},
            "checksum": spew_checksum(text),
        }
    )
    state = cpu_manager.parse_cpu_manager_state(raw.encode())
    assert (state.version, state.checksum_verified) == ("v2", True)


def test_memory_state_hashed_as_checkpoint_v1_verifies() -> None:
    obj = json.loads((KUBELET_FIXTURES / "memory_manager_state.static-empty.json").read_bytes())
    text = memory_manager.hash_text(obj).replace(
        "(*state.MemoryManagerCheckpoint)", "(*state.MemoryManagerCheckpointV1)"
    )
    obj["checksum"] = spew_checksum(text)
    assert memory_manager.parse_memory_manager_state(json.dumps(obj).encode()).is_static


def test_device_checkpoint_boot_id_is_outside_the_checksum() -> None:
    obj = json.loads((KUBELET_FIXTURES / "kubelet_internal_checkpoint.gpu-sriov.json").read_bytes())
    obj["BootID"] = "0f3c1b1e-8d4c-4bb0-9a55-2f6f3d3b9c11"
    assert device_checkpoint.parse_device_checkpoint(json.dumps(obj).encode()).allocations


# --- 5. firmware that lists the same CPUs on several NUMA nodes ------------------------------------------


def test_cpus_listed_by_several_numa_nodes_count_once_where_the_kubelet_files_them(
    hwloc_trees: dict[str, Path],
) -> None:
    root = hwloc_trees["8em64t-2s2ca2c-buggynuma"]
    paths = HostPaths(sysfs=root / "sys", procfs=root / "proc", kubelet_dir=root / "none", pod_logs=root / "none")
    snapshot = SnapshotBuilder(paths, use_nvml=False, use_udev=False).build()
    cpu = by_numa(snapshot.accounting, "cpu")
    assert sum(capacity for capacity, _, _ in cpu.values()) == 8, "8 CPUs, not 8 per NUMA node"
    assert cpu[max(cpu)][0] == 8, "cadvisor lists nodes in id order and the kubelet keeps the last"


def test_duplicated_cpus_case_matches_the_oracle() -> None:
    cores = [
        {"core_id": c, "thread_ids": [c], "socket_id": c % 2, "caches": None, "uncore_caches": None} for c in range(4)
    ]
    topology = [
        {"node_id": n, "memory": 4 * GIB, "hugepages": [], "distances": [10, 20, 20], "cores": cores} for n in range(3)
    ]
    machine = {"num_cores": 4, "num_physical_cores": 4, "num_sockets": 2, "memory_capacity": 12 * GIB}
    request = {
        "machineInfo": {**machine, "hugepages": [], "topology": topology},
        "kubeletConfig": {
            "cpuManagerPolicy": "static",
            "kubeReserved": {"cpu": "1"},
            "topologyManagerPolicy": "single-numa-node",
        },
        "queries": [{"type": "fit", "pod": {"requests": {"cpu": "1", "memory": "100Mi"}}, "omitFinalState": True}],
    }
    result = ask(request)["results"][0]
    assert {tuple(pod["numaAffinity"]) for pod in result["pods"]} == {(2,)}, "every CPU filed under the last node"


# --- edge cases ------------------------------------------------------------------------------------------


# The kubelet reads policy options with Go's strconv.ParseBool: each of these turns the option on.
GO_TRUE = ["true", "1", "t", "True", "TRUE"]


@pytest.mark.parametrize("on", GO_TRUE)
def test_full_pcpus_only_refuses_requests_that_are_not_whole_cores(on: str) -> None:
    config = {
        "cpuManagerPolicy": "static",
        "reservedSystemCPUs": "0",
        "cpuManagerPolicyOptions": {"full-pcpus-only": on},
    }
    profiles = (Profile(name="one", requests={"cpu": 1}), Profile(name="two", requests={"cpu": 2}))
    accounting = account(SMT_SMALL.topology(), state_of(config, cpu=fresh_cpu_state(SMT_SMALL)), profiles=profiles)
    fits = {fit.profile: fit for fit in accounting.fits}
    assert (fits["one"].aligned, fits["one"].unaligned) == (0, 0), "SMTAlignmentError"
    assert fits["two"].aligned == 3, "NUMA 0 keeps a lone sibling of reserved CPU 0 that no pod can use"


@pytest.mark.parametrize("on", ["true", "1", "t"])
def test_full_pcpus_only_case_matches_the_oracle(on: str) -> None:
    config = {
        "cpuManagerPolicy": "static",
        "reservedSystemCPUs": "0",
        "cpuManagerPolicyOptions": {"full-pcpus-only": on},
        "topologyManagerPolicy": "single-numa-node",
    }
    assert oracle_fit(SMT_SMALL, config, {"cpu": "1", "memory": "100Mi"}) == 0
    assert oracle_fit(SMT_SMALL, config, {"cpu": "2", "memory": "100Mi"}) == 3


def test_strict_cpu_reservation_keeps_reserved_cpus_out_of_available() -> None:
    config = {
        "cpuManagerPolicy": "static",
        "reservedSystemCPUs": "0,4",
        "cpuManagerPolicyOptions": {"strict-cpu-reservation": "true"},
    }
    raw = json.dumps({"policyName": "static", "defaultCpuSet": "1-3,5-7", "checksum": 0}).encode()
    accounting = account(SMT_SMALL.topology(), state_of(config, cpu=raw))
    assert by_numa(accounting, "cpu") == {0: (4, 2, 2), 1: (4, 4, 4)}


def test_time_sliced_replicas_map_to_their_gpu() -> None:
    gpu = Gpu(
        index=0,
        uuid="GPU-aaaa",
        name="NVIDIA H100",
        memory_total_bytes=80 * GIB,
        pci_address="0000:1a:00.0",
        numa_node=1,
        mig_enabled=False,
    )
    topology = Topology(numa_nodes=SMT_SMALL.topology().numa_nodes, cpus=(), pci_devices=(), gpus=(gpu,))
    assert hardware_numa_of({"GPU-aaaa": 1}, "GPU-aaaa::3") == 1
    checkpoint = device_checkpoint.parse_device_checkpoint(
        device_state(None, {"nvidia.com/gpu": ["GPU-aaaa::0", "GPU-aaaa::1"]})
    )
    assert admission_numa_nodes(topology, checkpoint) == {"GPU-aaaa::0": {1}, "GPU-aaaa::1": {1}}
    records = device_inventory(topology, checkpoint, device_numa_nodes(topology, checkpoint))
    assert {(r.device, r.kind, r.numa_node, r.pci_address) for r in records} == {
        ("GPU-aaaa::0", "gpu", 1, "0000:1a:00.0"),
        ("GPU-aaaa::1", "gpu", 1, "0000:1a:00.0"),
    }


@pytest.mark.parametrize(
    ("text", "exact", "value"),
    [("100n", "1/10000000", 1), ("1e3", "1000", 1000), ("1E-3", "1/1000", 1), ("1.5Gi", "1610612736", 1610612736),
     ("250u", "1/4000", 1), ("2k", "2000", 2000), ("+.5", "1/2", 1)],
)  # fmt: skip
def test_quantities_as_the_api_machinery_parses_them(text: str, exact: str, value: int) -> None:
    assert str(parse_quantity_exact(text)) == exact
    assert quantity_value(text) == value


def test_reserved_cpu_in_nano_units_reserves_one_cpu() -> None:
    config = {"cpuManagerPolicy": "static", "kubeReserved": {"cpu": "100n"}}
    accounting = account(UNEVEN.topology(), state_of(config, cpu=fresh_cpu_state(UNEVEN)))
    assert format_cpuset(accounting.reserved.cpus) == "6"
    assert oracle_reserved(UNEVEN, config) == "6"

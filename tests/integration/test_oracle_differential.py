"""Differential tests: our accounting against the kubelet's own resource managers (kubelet-oracle).

Hypothesis generates node states (CPU numbering schemes, SMT on and off, uneven and memory-only NUMA nodes,
CPU/memory/topology policies and CPU policy options, reservations, devices with and without plugin topology,
hugepages) and lets the oracle itself produce existing allocations (a first `fit` query, under a looser
topology policy so that memory-manager groups appear, whose `finalState` becomes the node's state). Then both
sides answer on the same state: the reserved CPU set, allocatable CPUs and memory per NUMA node, and how many
pods of a profile the kubelet admits one after another (our `profile_fit_node{placement="aligned"}`).

$ORACLE_EXAMPLES sets the budget (`make test`: a few hundred; `make fuzz`: thousands). Every disagreement
found is kept as a fixed case in tests/integration/test_kubelet_decisions.py.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.cpuset import format_cpuset, parse_cpuset
from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.cpu_assignment import CpuTopology
from exporter.kubelet.profiles import Profile
from exporter.snapshot import account
from exporter.sources import cpu_manager, device_checkpoint, kubelet_config, memory_manager
from tests.oracle import GIB, MachineSpec, ask, asset

EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", "250"))
MIB = 1 << 20
PAGE_2M = 2 * MIB
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _oracle() -> None:
    asset("kubelet-oracle")  # skip (or fail under NUMA_EXPORTER_REQUIRE_REAL=1) before hypothesis starts


@st.composite
def machines(draw: st.DrawFn) -> MachineSpec:
    sockets = draw(st.integers(1, 3))
    numa_per_socket = draw(st.sampled_from([1, 1, 2]))
    smt = draw(st.sampled_from([1, 2]))
    cores: list[tuple[int, int, int]] = []  # (socket, core id, numa)
    numa = 0
    for socket in range(sockets):
        for _ in range(numa_per_socket):
            for _ in range(draw(st.integers(1, 4))):
                cores.append((socket, len(cores), numa))
            numa += 1
    threads = [(socket, core, n, t) for socket, core, n in cores for t in range(smt)]
    scheme = draw(st.sampled_from(["linear", "siblings-offset", "interleaved-sockets", "shuffled"]))
    if scheme == "siblings-offset":  # cpu i and i + N/2 are siblings (most x86 servers)
        threads.sort(key=lambda thread: (thread[3], thread[1]))
    elif scheme == "interleaved-sockets":  # even CPUs on socket 0, odd on socket 1 (many dual-socket BIOSes)
        per_socket: dict[int, list[tuple[int, int, int, int]]] = {}
        for thread in sorted(threads, key=lambda thread: (thread[3], thread[1])):
            per_socket.setdefault(thread[0], []).append(thread)
        threads = []
        while any(per_socket.values()):
            for socket in sorted(per_socket):
                if per_socket[socket]:
                    threads.append(per_socket[socket].pop(0))
    elif scheme == "shuffled":
        threads = draw(st.permutations(threads))
    cpus = [(index, socket, core, n) for index, (socket, core, n, _) in enumerate(threads)]
    numa_ids = list(range(numa))
    if draw(st.booleans()) and len(numa_ids) < 4:
        numa_ids.append(numa)  # a memory-only NUMA node (CXL, HBM)
    memory = {n: draw(st.sampled_from([2, 4, 6])) * GIB for n in numa_ids}
    hugepages = {n: {PAGE_2M: draw(st.sampled_from([0, 0, 16, 64]))} for n in numa_ids}
    with_cpus = sorted({n for *_, n in cpus})
    devices: dict[str, list[tuple[str, tuple[int, ...], int]]] = {}
    for index in range(draw(st.integers(0, 2))):
        reports = draw(st.booleans())
        ids = []
        for number in range(draw(st.integers(1, 4))):
            hardware = draw(st.sampled_from(with_cpus))
            ids.append((f"0000:{0x10 + index:02x}:{number:02x}.0", (hardware,) if reports else (), hardware))
        devices[f"example.com/dev{index}"] = ids
    return MachineSpec(cpus=cpus, memory=memory, hugepages=hugepages, devices=devices)


@dataclass(frozen=True)
class NodeState:
    machine: MachineSpec
    config: dict[str, Any]
    prefill_policy: str
    prefill_pod: dict[str, str]
    prefill_count: int
    preallocated: dict[str, list[str]]
    profile: dict[str, int]


@st.composite
def node_states(draw: st.DrawFn) -> NodeState:
    machine = draw(machines())
    cpu_ids = [cpu for cpu, *_ in machine.cpus]
    config: dict[str, Any] = {
        "featureGates": {"CPUManagerPolicyAlphaOptions": True, "CPUManagerPolicyBetaOptions": True},
        "topologyManagerPolicy": "single-numa-node",
        "topologyManagerScope": draw(st.sampled_from(["container", "pod"])),
        "kubeReserved": {"memory": "412Mi"},
    }
    static = draw(st.integers(0, 9)) > 0
    if static:
        config["cpuManagerPolicy"] = "static"
        if draw(st.booleans()) and len(cpu_ids) > 1:
            reserved = draw(st.lists(st.sampled_from(cpu_ids), min_size=1, max_size=max(1, len(cpu_ids) // 3)))
            config["reservedSystemCPUs"] = format_cpuset(set(reserved))
        else:
            config["kubeReserved"]["cpu"] = draw(st.sampled_from(["500m", "1", "1500m", "2", "3"]))
            if draw(st.booleans()):
                config["systemReserved"] = {"cpu": draw(st.sampled_from(["100m", "1"]))}
        options = {}
        if draw(st.booleans()):
            options["full-pcpus-only"] = "true"
        spread = draw(st.sampled_from(["", "", "distribute-cpus-across-numa", "distribute-cpus-across-cores"]))
        if spread and not (spread == "distribute-cpus-across-cores" and options):
            options[spread] = "true"
        if draw(st.integers(0, 3)) == 0:
            options["strict-cpu-reservation"] = "true"
        if options:
            config["cpuManagerPolicyOptions"] = options
    else:
        config["kubeReserved"]["cpu"] = "1"
    if draw(st.booleans()):
        config["memoryManagerPolicy"] = "Static"
        nodes = sorted(machine.memory)
        split = draw(st.sampled_from(["first", "even"]))
        total = 512  # 412Mi kube-reserved + the 100Mi hard eviction default
        if split == "first" or len(nodes) == 1:
            config["reservedMemory"] = [{"numaNode": nodes[0], "limits": {"memory": f"{total}Mi"}}]
        else:
            config["reservedMemory"] = [
                {"numaNode": nodes[0], "limits": {"memory": f"{total - 256}Mi"}},
                {"numaNode": nodes[1], "limits": {"memory": "256Mi"}},
            ]
    prefill_pod = {
        "cpu": str(draw(st.integers(1, 2))),
        "memory": draw(st.sampled_from(["256Mi", "1Gi", "3Gi", "5Gi"])),  # above a node: a memory group
    }
    preallocated = {
        resource: [device for device, _, _ in devices][: draw(st.integers(0, 2))]
        for resource, devices in machine.devices.items()
    }
    profile = {"cpu": draw(st.integers(1, 4)), "memory": draw(st.sampled_from([256, 512, 1024])) * MIB}
    if draw(st.booleans()) and any(pages for per_numa in machine.hugepages.values() for pages in per_numa.values()):
        profile["hugepages-2Mi"] = draw(st.integers(1, 8)) * PAGE_2M
    if machine.devices and draw(st.booleans()):
        profile[draw(st.sampled_from(sorted(machine.devices)))] = 1
    # The v1.36.2 CPU manager refuses its own strict-cpu-reservation state file at a restart ("current set
    # of available CPUs doesn't match"): such nodes are compared from a fresh start only.
    strict = "strict-cpu-reservation" in config.get("cpuManagerPolicyOptions", {})
    return NodeState(
        machine=machine,
        config=config,
        prefill_policy=draw(st.sampled_from(["single-numa-node", "best-effort", "none"])),
        prefill_pod=prefill_pod,
        prefill_count=0 if strict else draw(st.integers(0, 2)),
        preallocated={resource: ids for resource, ids in preallocated.items() if ids},
        profile=profile,
    )


def _without_evidence(machine: MachineSpec, state: dict[str, Any]) -> MachineSpec:
    """Nothing on disk says that a plugin reports no topology for a device never handed out: the exporter
    then takes the hardware's NUMA node (docs/product.md). Make such devices ones hardware cannot place."""
    entries = (state.get("kubelet_internal_checkpoint") or {}).get("Data", {}).get("PodDeviceEntries") or []
    allocated = {entry["ResourceName"] for entry in entries}
    devices = {
        resource: [
            (device, reported, -1 if not reported and resource not in allocated else hardware)
            for device, reported, hardware in ids
        ]
        for resource, ids in machine.devices.items()
    }
    return MachineSpec(cpus=machine.cpus, memory=machine.memory, hugepages=machine.hugepages, devices=devices)


def _quantity_pod(profile: dict[str, int]) -> dict[str, str]:
    return {
        resource: (f"{amount // MIB}Mi" if resource != "cpu" and amount >= MIB else str(amount))
        for resource, amount in profile.items()
    }


def _oracle_state(node: NodeState) -> dict[str, Any] | None:
    """The node's state files, as the kubelet's managers wrote them after admitting the prefill pods."""
    request = {
        "machine": node.machine.oracle_machine(),
        "kubeletConfig": {**node.config, "topologyManagerPolicy": node.prefill_policy},
        "devices": node.machine.oracle_devices(),
        "allocatedDevices": node.preallocated,
        # With no prefill pods, a pod that never fits: the state is what the managers wrote at start.
        "queries": [
            {"type": "fit", "pod": {"requests": node.prefill_pod}, "maxPods": node.prefill_count}
            if node.prefill_count
            else {"type": "fit", "pod": {"requests": {"cpu": "100000", "memory": "100000Gi"}}, "maxPods": 1}
        ],
    }
    answer = ask(request)
    if "error" in answer or "error" in answer["results"][0]:
        return None
    state: dict[str, Any] = answer["results"][0]["finalState"]
    return state


def _ours(node: NodeState, state: dict[str, Any]) -> tuple[Any, CpuTopology]:
    topology = _without_evidence(node.machine, state).topology()
    config = kubelet_config.parse_kubelet_config(yaml.safe_dump(node.config).encode())

    def parsed(name: str, parse: Any) -> Any:
        return parse(json.dumps(state[name]).encode()) if name in state else None

    kubelet = KubeletState(
        config=config,
        cpu=parsed("cpu_manager_state", cpu_manager.parse_cpu_manager_state),
        memory=parsed("memory_manager_state", memory_manager.parse_memory_manager_state),
        devices=parsed("kubelet_internal_checkpoint", device_checkpoint.parse_device_checkpoint),
    )
    profile = Profile(name="shape", requests=node.profile)
    return account(topology, kubelet, profiles=(profile,)), CpuTopology.from_topology(topology)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("ORACLE_RANDOM") != "1",
)
@given(node_states())
def test_accounting_equals_the_kubelet(node: NodeState) -> None:
    state = _oracle_state(node)
    if state is None:
        COUNTS["config the kubelet refuses (doctor's tests cover those)"] += 1
        return
    answer = ask(
        {
            "machine": node.machine.oracle_machine(),
            "kubeletConfig": node.config,
            "devices": node.machine.oracle_devices(),
            # No prefill: the oracle starts fresh, and we read the files its managers write at start. (The
            # 1.36.2 CPU manager refuses its own state file under strict-cpu-reservation at a restart.)
            **({"state": state} if node.prefill_count else {}),
            "queries": [
                {"type": "reserved_cpus"},
                {
                    "type": "fit",
                    "pod": {"requests": _quantity_pod(node.profile)},
                    "maxPods": 500,
                    "omitFinalState": True,
                },
            ],
        }
    )
    assert "error" not in answer, answer["error"]
    reserved, fit = answer["results"]
    if "error" in fit:  # e.g. the prefill left the shared pool empty: the kubelet would not start
        COUNTS[f"state the kubelet refuses at start: {fit['error'].split(chr(34))[0].strip()}"] += 1
        return
    accounting, cpus = _ours(node, state)

    if node.config.get("cpuManagerPolicy") == "static":
        assert format_cpuset(accounting.reserved.cpus) == reserved["reservedCPUs"]
        allocatable = parse_cpuset(reserved["allocatableCPUs"])
        for account in accounting.accounts:
            if account.resource == "cpu":
                node_cpus = {cpu for cpu, info in cpus.details.items() if info.numa_node == account.numa_node}
                assert account.allocatable == len(node_cpus & allocatable), f"NUMA {account.numa_node}"
        COUNTS["reserved sets and per-NUMA allocatable CPUs"] += 1
    if node.config.get("memoryManagerPolicy") == "Static":
        theirs = {(b["numaAffinity"][0], b["type"]): b["size"] for b in reserved.get("allocatableMemory") or []}
        ours = {
            (a.numa_node, a.resource): a.allocatable
            for a in accounting.accounts
            if a.resource == "memory" or a.resource.startswith("hugepages-")
        }
        assert {key: ours.get(key) for key in theirs} == theirs
        COUNTS["per-NUMA allocatable memory and hugepages"] += 1
    if not accounting.fits:  # nothing in the profile is NUMA-accounted: no NUMA limit at all
        assert fit["limitReached"], fit.get("rejection")
        return
    (shape,) = accounting.fits
    assert shape.aligned == fit["count"], (fit.get("rejection"), shape)
    COUNTS["aligned fit = pods the kubelet admits one after another"] += 1


def test_the_differential_compared_what_it_counts() -> None:
    """No pass on an empty result: of the generated states (the same every run unless ORACLE_RANDOM=1), the
    comparisons above were made on most, not returned early from; a change that made the oracle refuse every
    state, or our side skip them, fails here. (Measured at 250 examples: 228 fits, 206 reserved sets, 79 memory
    tables compared.)"""
    fits = COUNTS["aligned fit = pods the kubelet admits one after another"]
    reserved = COUNTS["reserved sets and per-NUMA allocatable CPUs"]
    memory = COUNTS["per-NUMA allocatable memory and hugepages"]
    assert fits >= EXAMPLES // 2, COUNTS
    assert reserved >= EXAMPLES // 2, COUNTS
    assert memory >= EXAMPLES // 8, COUNTS

"""Why the kubelet would refuse to start: its configuration validation, the resource managers'
constructors, and their checks of the state files they find. One reason per line, in the kubelet's terms.

Each rule cites the kubelet code it reproduces (K = kubernetes/kubernetes v1.36);
tests/integration/test_doctor_oracle.py holds every rule to kubelet-oracle, the kubelet's own code, on generated and
fixed configurations.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping

from exporter.cpuset import CpuSet, format_cpuset
from exporter.errors import InvalidText
from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.cpu_assignment import kubelet_numa_node_of_cpu
from exporter.model import GO_BOOLS, KubeletConfig, MemoryManagerState, Topology
from exporter.units import hugepage_resource, parse_quantity_exact

# K pkg/kubelet/cm/cpumanager/policy_options.go (v1.36): option -> maturity ("alpha" needs the
# CPUManagerPolicyAlphaOptions gate, "beta" is on unless CPUManagerPolicyBetaOptions is turned off).
CPU_OPTIONS = {
    "full-pcpus-only": "ga",
    "distribute-cpus-across-numa": "beta",
    "align-by-socket": "alpha",
    "distribute-cpus-across-cores": "alpha",
    "strict-cpu-reservation": "ga",
    "prefer-align-cpus-by-uncorecache": "ga",
}
TOPOLOGY_OPTIONS = ("prefer-closest-numa-nodes", "max-allowable-numa-nodes")
DEFAULT_EVICTION_MEMORY = "100Mi"


def startup_refusals(config: KubeletConfig, topology: Topology) -> list[str]:
    """Why the kubelet would refuse to start with `config` on this host, one reason per line: its config
    validation (config_refusals) and the resource managers' checks (K cmd/kubelet/app/server.go
    getReservedCPUs, cpumanager NewStaticPolicy and its options, memorymanager validateReservedMemory,
    topologymanager NewManager)."""
    reasons = config_refusals(config)
    online = {cpu.cpu for cpu in topology.cpus}
    if config.reserved_system_cpus - online:
        reasons.append(
            f"reservedSystemCPUs {format_cpuset(config.reserved_system_cpus)} is not a subset of the online "
            f"CPUs {format_cpuset(online)}"
        )
    if config.cpu_manager_policy == "static":
        reasons.extend(_cpu_refusals(config, topology, online))
    elif config.cpu_manager_policy_options:
        reasons.append("cpuManagerPolicyOptions are given but the none policy takes no options")
    if config.memory_manager_policy == "Static":
        reasons.extend(_memory_refusals(config, topology))
    reasons.extend(_topology_refusals(config, topology))
    return reasons


def _cpu_refusals(config: KubeletConfig, topology: Topology, online: set[int]) -> list[str]:
    reasons = []
    options: dict[str, bool] = {}
    for name, value in config.cpu_manager_policy_options.items():
        if name not in CPU_OPTIONS:
            reasons.append(f"unknown cpuManagerPolicyOptions option {name!r}")
        elif value not in GO_BOOLS:
            reasons.append(f"cpuManagerPolicyOptions {name}: {value!r} is not a boolean")
        else:
            options[name] = GO_BOOLS[value]
            maturity = CPU_OPTIONS[name]
            if maturity == "alpha" and not config.feature_gates.get("CPUManagerPolicyAlphaOptions", False):
                reasons.append(f"cpuManagerPolicyOptions {name} is alpha: enable the CPUManagerPolicyAlphaOptions gate")
            if maturity == "beta" and not config.feature_gates.get("CPUManagerPolicyBetaOptions", True):
                reasons.append(f"cpuManagerPolicyOptions {name} is beta but CPUManagerPolicyBetaOptions is off")
    if reasons:
        return reasons
    on = {name for name, enabled in options.items() if enabled}
    for first, second in (  # K cpumanager/policy_options.go NewStaticPolicyOptions
        ("full-pcpus-only", "distribute-cpus-across-cores"),
        ("distribute-cpus-across-numa", "distribute-cpus-across-cores"),
        ("prefer-align-cpus-by-uncorecache", "distribute-cpus-across-cores"),
        ("prefer-align-cpus-by-uncorecache", "distribute-cpus-across-numa"),
    ):
        if {first, second} <= on:
            reasons.append(f"cpuManagerPolicyOptions {first} and {second} cannot be used together")
    if "align-by-socket" in on:  # ValidateStaticPolicyOptions
        if config.topology_manager_policy == "single-numa-node":
            reasons.append(
                "cpuManagerPolicyOptions align-by-socket is incompatible with topologyManagerPolicy single-numa-node"
            )
        sockets = len({cpu.socket_id for cpu in topology.cpus})
        if sockets > len(set(kubelet_numa_node_of_cpu(topology).values())):
            reasons.append(f"align-by-socket needs at least as many NUMA nodes as sockets ({sockets} sockets here)")
    count = _reserved_cpu_count(config)
    # No reservation at all is diagnose()'s cpu-reservation finding.
    if not config.reserved_system_cpus and count is not None and count > len(online):
        reasons.append(f"{count} reserved CPUs asked for but only {len(online)} are online")
    return reasons


def _reserved_cpu_count(config: KubeletConfig) -> int | None:
    try:
        total = sum(parse_quantity_exact(r.get("cpu", "0")) for r in (config.kube_reserved, config.system_reserved))
    except ValueError:
        return None
    return math.ceil(total)


def _memory_refusals(config: KubeletConfig, topology: Topology) -> list[str]:
    reasons = []
    present = set(topology.numa_node_ids)
    totals: dict[str, int] = {}
    for numa, limits in sorted(config.reserved_memory.items()):
        if numa not in present:
            reasons.append(f"reservedMemory names NUMA node {numa}, which this host lacks")
        for resource, amount in limits.items():
            totals[resource] = totals.get(resource, 0) + amount
    if reasons:
        return reasons
    expected = _memory_reservation(config, topology)
    if expected is None or not config.reserved_memory:  # none at all: diagnose()'s memory-manager finding
        return reasons
    for resource in sorted(set(totals) | {"memory"}):
        want = expected if resource == "memory" else 0
        if totals.get(resource, 0) != want:
            reasons.append(
                f"reservedMemory {resource} adds up to {totals.get(resource, 0)} bytes, but kube/system-reserved "
                f"plus the hard eviction threshold come to {want}: they must be equal"
            )
    return reasons


def _memory_reservation(config: KubeletConfig, topology: Topology) -> int | None:
    """kube-reserved + system-reserved memory + the `memory.available` hard eviction threshold, in bytes."""
    try:
        reserved = sum(
            parse_quantity_exact(r.get("memory", "0")) for r in (config.kube_reserved, config.system_reserved)
        )
        eviction = (config.eviction_hard if config.eviction_hard is not None else {}).get(
            "memory.available", DEFAULT_EVICTION_MEMORY if config.eviction_hard is None else "0"
        )
        if eviction in ("0%", "100%"):  # no threshold (parseThresholdStatement)
            threshold = 0
        elif eviction.endswith("%"):
            capacity = sum(numa.memory_total_bytes for numa in topology.numa_nodes)
            percent = _float32(_float32(float(eviction[:-1])) / 100)
            threshold = int(capacity * percent)  # int64(float64(capacity) * float64(float32 percentage))
        else:
            threshold = math.ceil(parse_quantity_exact(eviction))
    except ValueError:
        return None
    return math.ceil(reserved) + threshold


def _float32(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


def _topology_refusals(config: KubeletConfig, topology: Topology) -> list[str]:
    """Options are parsed only by a Topology Manager that runs: under policy `none` they are ignored."""
    reasons: list[str] = []
    if config.topology_manager_policy == "none":
        return reasons
    options = config.topology_manager_policy_options
    for name in options:
        if name not in TOPOLOGY_OPTIONS:
            reasons.append(f"unknown topologyManagerPolicyOptions option {name!r}")
    limit = options.get("max-allowable-numa-nodes")
    if limit is not None and (not (limit.isascii() and limit.isdigit()) or int(limit) < 8):
        reasons.append(f"topologyManagerPolicyOptions max-allowable-numa-nodes {limit!r}: at least 8")
    value = options.get("prefer-closest-numa-nodes")
    if value is not None and value not in GO_BOOLS:
        reasons.append(f"topologyManagerPolicyOptions prefer-closest-numa-nodes: {value!r} is not a boolean")
    elif value is not None and GO_BOOLS[value] and any(not numa.distances for numa in topology.numa_nodes):
        reasons.append("prefer-closest-numa-nodes needs NUMA distances, and the firmware gives none")
    return reasons


# K pkg/features/kube_features.go (v1.36): gates locked to true (setting one false stops the kubelet as it
# loads its configuration), gates whose dependents are on by default, and gates gone from this version
# (the kubelet logs "unrecognized feature gate" and goes on). Measured with kubelet-oracle.
LOCKED_GATES = frozenset({
    "CPUManagerPolicyOptions", "TopologyManagerPolicyOptions", "DynamicResourceAllocation", "KubeletPodResourcesGet",
    "KubeletPodResourcesDynamicResources", "InPlacePodVerticalScaling",
})  # fmt: skip
GATE_DEPENDENTS = {"PodLevelResources": ("InPlacePodLevelResourcesVerticalScaling",)}
REMOVED_GATES = frozenset({
    "CPUManager", "TopologyManager", "MemoryManager", "KubeletPodResources", "KubeletPodResourcesGetAllocatable",
    "DevicePluginCDIDevices",
})  # fmt: skip
# K pkg/kubelet/apis/config/validation/validation.go
ENFORCEMENTS = ("pods", "system-reserved", "system-reserved-compressible", "kube-reserved",
                "kube-reserved-compressible", "none")  # fmt: skip
# K cmd/kubelet/app/server.go parseResourceList; pkg/kubelet/eviction/api signals (Linux)
RESERVABLE = ("cpu", "memory", "ephemeral-storage", "pid")
EVICTION_SIGNALS = ("memory.available", "allocatableMemory.available", "nodefs.available", "nodefs.inodesFree",
                    "imagefs.available", "imagefs.inodesFree", "containerfs.available", "containerfs.inodesFree",
                    "pid.available")  # fmt: skip
HUGEPAGES = re.compile(r"hugepages-.+")


def config_refusals(config: KubeletConfig) -> list[str]:
    """What the kubelet's configuration loading and validation refuse, whatever the host."""
    reasons: list[str] = []
    for gate, enabled in sorted(config.feature_gates.items()):
        if gate in LOCKED_GATES and not enabled:
            reasons.append(f"feature gate {gate} is locked to true in v1.36 and cannot be set to false")
        for dependent in GATE_DEPENDENTS.get(gate, ()):
            if not enabled and config.feature_gates.get(dependent, True):
                reasons.append(f"feature gate {gate} is off but {dependent}, on by default, depends on it: "
                               f"turn {dependent} off too")  # fmt: skip
    if config.reserved_system_cpus and (config.system_reserved_cgroup or config.kube_reserved_cgroup):
        reasons.append("reservedSystemCPUs cannot be used with systemReservedCgroup or kubeReservedCgroup")
    enforced = config.enforce_node_allocatable
    for option in enforced:
        if option not in ENFORCEMENTS:
            reasons.append(f"enforceNodeAllocatable {option!r} is not one of {', '.join(ENFORCEMENTS)}")
    if "none" in enforced and len(enforced) > 1:
        reasons.append('enforceNodeAllocatable may not hold other enforcements with "none"')
    if {"system-reserved", "system-reserved-compressible"} & set(enforced) and not config.system_reserved_cgroup:
        reasons.append("enforceNodeAllocatable system-reserved needs systemReservedCgroup")
    if {"kube-reserved", "kube-reserved-compressible"} & set(enforced) and not config.kube_reserved_cgroup:
        reasons.append("enforceNodeAllocatable kube-reserved needs kubeReservedCgroup")
    for name, reserved in (("kubeReserved", config.kube_reserved), ("systemReserved", config.system_reserved)):
        for resource, quantity in sorted(reserved.items()):
            if resource not in RESERVABLE:
                reasons.append(f"{name} cannot reserve {resource!r} (only {', '.join(RESERVABLE)})")
                continue
            try:
                value = parse_quantity_exact(quantity)
            except InvalidText:
                reasons.append(f"{name} {resource}: {quantity!r} is not a quantity")
                continue
            if value < 0:
                reasons.append(f"{name} {resource} cannot be negative ({quantity})")
    for signal, threshold in sorted((config.eviction_hard or {}).items()):
        reason = _eviction_refusal(signal, threshold)
        if reason:
            reasons.append(reason)
    for numa, limits in sorted(config.reserved_memory.items()):  # K validation_reserved_memory.go
        for resource, amount in sorted(limits.items()):
            if resource != "memory" and not HUGEPAGES.fullmatch(resource):
                reasons.append(
                    f"reservedMemory for NUMA node {numa}: {resource!r} is neither memory nor hugepages-<size>"
                )
            elif amount == 0:
                reasons.append(f"reservedMemory for NUMA node {numa} and {resource} may not be zero")
    return reasons


def _eviction_refusal(signal: str, threshold: str) -> str | None:
    """K pkg/kubelet/eviction/helpers.go parseThresholdStatement ("0%" and "100%" mean no threshold)."""
    if signal not in EVICTION_SIGNALS:
        return f"evictionHard: unsupported eviction signal {signal!r}"
    if threshold.endswith("%"):
        if threshold in ("0%", "100%"):
            return None
        try:
            percent = float(threshold[:-1])
        except ValueError:
            return f"evictionHard {signal}: {threshold!r} is not a percentage"
        if not 0 <= percent <= 100:
            return f"evictionHard {signal}: {threshold} is not between 0% and 100%"
        return None
    try:
        value = parse_quantity_exact(threshold)
    except InvalidText:
        return f"evictionHard {signal}: {threshold!r} is not a quantity"
    if value <= 0:
        return f"evictionHard {signal}: {threshold} must be positive"
    return None


def state_refusals(state: KubeletState, topology: Topology, reserved: CpuSet) -> list[str]:
    """What the managers refuse in the state files they find at start (a configuration rolled out to a node
    that already runs pods). `reserved`: the static policy's reserved CPUs for this configuration."""
    reasons: list[str] = []
    config = state.config
    cpu = state.cpu
    if cpu is not None and cpu.policy_name != config.cpu_manager_policy:
        reasons.append(f"cpu_manager_state was written by policy {cpu.policy_name!r} but the configuration says "
                       f"{config.cpu_manager_policy!r}")  # fmt: skip
    elif cpu is not None and config.cpu_manager_policy == "static" and (cpu.default_cpuset or cpu.entries):
        reasons.extend(_cpu_state_refusals(config, topology, reserved, cpu.default_cpuset, cpu.entries))
    memory = state.memory
    if memory is not None and memory.policy_name != config.memory_manager_policy:
        reasons.append(f"memory_manager_state was written by policy {memory.policy_name!r} but the configuration "
                       f"says {config.memory_manager_policy!r}")  # fmt: skip
    elif memory is not None and memory.is_static:
        reasons.extend(_memory_state_refusals(config, topology, memory))
    return reasons


def _memory_state_refusals(config: KubeletConfig, topology: Topology, memory: MemoryManagerState) -> list[str]:
    """K memorymanager/policy_static.go validateState: the machine state in the file must be the one this
    configuration gives this host (assignments aside), with pods or without. Checked here: the NUMA nodes,
    each resource's total and what reservedMemory reserves of it."""
    if not memory.machine_state:
        return ["memory_manager_state has memory assignments but no machine state"] if memory.entries else []
    totals: dict[int, dict[str, int]] = {}
    for node in topology.numa_nodes:
        totals[node.numa_node] = {"memory": node.memory_total_bytes} | {
            hugepage_resource(pool.size_bytes): pool.size_bytes * pool.total_pages for pool in node.hugepages
        }
    if set(memory.machine_state) != set(totals):
        return [f"memory_manager_state describes NUMA nodes {sorted(memory.machine_state)}, this host has "
                f"{sorted(totals)}"]  # fmt: skip
    for numa, numa_state in sorted(memory.machine_state.items()):
        for resource, table in sorted(numa_state.memory_map.items()):
            want = config.reserved_memory.get(numa, {}).get(resource, 0)
            if table.system_reserved_bytes != want:
                return [f"memory_manager_state reserves {table.system_reserved_bytes} bytes of {resource} on NUMA node "
                        f"{numa} but reservedMemory says {want}"]  # fmt: skip
            if table.total_bytes != totals[numa].get(resource, table.total_bytes):
                return [f"memory_manager_state has {table.total_bytes} bytes of {resource} on NUMA node {numa}, this "
                        f"host {totals[numa][resource]}"]  # fmt: skip
    return []


def _cpu_state_refusals(config: KubeletConfig, topology: Topology, reserved: CpuSet, default: CpuSet,
                        entries: Mapping[str, Mapping[str, CpuSet]]) -> list[str]:  # fmt: skip
    """K cpumanager/policy_static.go validateState."""
    all_cpus = frozenset(cpu.cpu for cpu in topology.cpus)
    if config.strict_cpu_reservation:
        all_cpus -= reserved
    if not default:
        return ["cpu_manager_state has CPU assignments but an empty default cpuset"] if entries else []
    if config.strict_cpu_reservation and reserved & default:
        return [f"strictly reserved CPUs {format_cpuset(reserved & default)} are in cpu_manager_state's default "
                f"cpuset {format_cpuset(default)}"]  # fmt: skip
    if not config.strict_cpu_reservation and reserved - default:
        return [f"reserved CPUs {format_cpuset(reserved - default)} are not in cpu_manager_state's default cpuset "
                f"{format_cpuset(default)} (they are assigned to containers, or the reservation changed)"]  # fmt: skip
    known = set(default)
    for pod, containers in sorted(entries.items()):
        for container, cpus in sorted(containers.items()):
            if cpus & default:
                return [f"cpu_manager_state assigns {format_cpuset(cpus)} to {pod}/{container}, overlapping the "
                        f"default cpuset {format_cpuset(default)}"]  # fmt: skip
            known |= cpus
    if known != all_cpus:
        return [f"cpu_manager_state knows CPUs {format_cpuset(frozenset(known))} but this host has "
                f"{format_cpuset(all_cpus)} for it"]  # fmt: skip
    return []

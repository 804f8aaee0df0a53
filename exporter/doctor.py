"""`doctor`: the node's kubelet configuration checked against what NUMA alignment needs.

Each finding is one line: a severity, what is wrong, and what to change. `error` means pods will be
rejected or misplaced, `warning` means alignment is not guaranteed, `info` is worth knowing.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal

from exporter.cpu_assignment import kubelet_numa_node_of_cpu
from exporter.cpuset import format_cpuset
from exporter.model import KubeletConfig, Topology
from exporter.placement import PlacementView
from exporter.snapshot import Snapshot
from exporter.units import parse_quantity_exact

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """`blocks_start`: the kubelet refuses to start with this configuration on this host (its config
    validation or a resource manager's constructor fails), as kubelet-oracle confirms in the tests."""

    severity: Severity
    check: str
    message: str
    blocks_start: bool = False

    def line(self) -> str:
        return f"{self.severity.upper():7} {self.check}: {self.message}"


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
GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}  # fmt: skip
DEFAULT_EVICTION_MEMORY = "100Mi"


def startup_refusals(config: KubeletConfig, topology: Topology) -> list[str]:
    """Why the kubelet would refuse to start with `config` on this host, one reason per line: the resource
    managers' checks (K cmd/kubelet/app/server.go getReservedCPUs, cpumanager NewStaticPolicy and its
    options, memorymanager validateReservedMemory, topologymanager NewManager, kubelet config validation)."""
    reasons: list[str] = []
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
            if amount == 0:
                reasons.append(f"reservedMemory for NUMA node {numa} and {resource} may not be zero")
            totals[resource] = totals.get(resource, 0) + amount
    for reserved in (config.kube_reserved, config.system_reserved):
        for resource in reserved:
            if resource.startswith("hugepages-"):
                reasons.append(f"kube/system-reserved cannot reserve {resource}")
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
        if eviction.endswith("%"):
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


def diagnose(snapshot: Snapshot, placement: PlacementView | None = None) -> tuple[Finding, ...]:
    findings: list[Finding] = []

    def add(severity: Severity, check: str, message: str, *, blocks_start: bool = False) -> None:
        findings.append(Finding(severity=severity, check=check, message=message, blocks_start=blocks_start))

    state = snapshot.kubelet
    config = state.config
    topology = snapshot.topology
    numa_count = len(topology.numa_nodes)
    config_status = snapshot.source("kubelet_config")
    if not config.from_file:
        where = config_status.message if config_status and config_status.message else "no kubelet configuration"
        add("warning", "kubelet-config", f"{where}; checks use the kubelet's defaults. Pass --kubelet-config <file>")

    if numa_count < 2:
        add("info", "numa", "this host has a single NUMA node: alignment cannot go wrong here")

    if config.cpu_manager_policy != "static":
        add(
            "warning",
            "cpu-manager",
            "cpuManagerPolicy is none: Guaranteed pods get no exclusive CPUs and no "
            "NUMA alignment. Set cpuManagerPolicy: static (and a CPU reservation)",
        )
    else:
        if snapshot.accounting.reserved.source == "none":
            add(
                "error",
                "cpu-reservation",
                "the static CPU manager needs a non-zero CPU reservation: set "
                "reservedSystemCPUs (e.g. one core per NUMA node) or kubeReserved/systemReserved cpu: "
                "the kubelet will not start",
                blocks_start=True,
            )
        elif snapshot.accounting.reserved.source == "derived":
            add(
                "info",
                "cpu-reservation",
                f"reserved CPUs derived from kube/system-reserved as "
                f"{format_cpuset(snapshot.accounting.reserved.cpus)}; set reservedSystemCPUs to choose them",
            )
        cpu_numa = topology.numa_node_of_cpu()
        reserved_numas = {cpu_numa.get(cpu, -1) for cpu in config.reserved_system_cpus}
        if len(reserved_numas) > 1 and numa_count > 1:
            add(
                "info",
                "cpu-reservation",
                f"reservedSystemCPUs {format_cpuset(config.reserved_system_cpus)} span "
                f"NUMA nodes {sorted(reserved_numas)}: each loses CPUs for pods",
            )
        smt = any(len(cpu.siblings) > 1 for cpu in topology.cpus)
        if smt and config.cpu_manager_policy_options.get("full-pcpus-only", "false") != "true":
            add(
                "info",
                "cpu-manager",
                "SMT is on and full-pcpus-only is not set: a container may share a physical "
                'core with another. Add cpuManagerPolicyOptions: {full-pcpus-only: "true"}',
            )
        if state.cpu is not None and state.cpu.policy_name != config.cpu_manager_policy:
            add(
                "error",
                "cpu-manager",
                f"cpu_manager_state was written by policy {state.cpu.policy_name!r} but the "
                f"configuration says {config.cpu_manager_policy!r}: the kubelet will refuse to start until the state "
                "file is removed (drain the node first)",
            )

    if config.topology_manager_policy in ("none", "best-effort") and numa_count > 1:
        add(
            "warning",
            "topology-manager",
            f"topologyManagerPolicy is {config.topology_manager_policy}: pods are "
            "admitted even when their resources span NUMA nodes. Use single-numa-node (or restricted)",
        )
    if config.topology_manager_policy != "none" and config.cpu_manager_policy != "static":
        add(
            "warning",
            "topology-manager",
            "a Topology Manager policy without the static CPU manager aligns devices only: CPUs give no hints",
        )
    if numa_count > 8 and config.topology_manager_policy != "none":
        limit = config.topology_manager_policy_options.get("max-allowable-numa-nodes")
        if limit is None or config.max_allowable_numa_nodes < numa_count:
            add(
                "error",
                "topology-manager",
                f"{numa_count} NUMA nodes but the Topology Manager allows "
                f"{config.max_allowable_numa_nodes}: the kubelet refuses to start. Set topologyManagerPolicyOptions: "
                f'{{max-allowable-numa-nodes: "{numa_count}"}}',
                blocks_start=True,
            )
    if config.topology_manager_scope == "pod" and config.topology_manager_policy == "single-numa-node":
        add(
            "info",
            "topology-manager",
            "pod scope with single-numa-node: every container of a pod must fit on one "
            "NUMA node together; large multi-container pods will be rejected where container scope admits them",
        )

    hugepages = any(pool.total_pages for numa in topology.numa_nodes for pool in numa.hugepages)
    if config.memory_manager_policy != "Static":
        if numa_count > 1 and config.topology_manager_policy in ("restricted", "single-numa-node"):
            add(
                "warning",
                "memory-manager",
                "memoryManagerPolicy is None: memory and hugepages are not NUMA-aligned. "
                "Set memoryManagerPolicy: Static with reservedMemory per NUMA node"
                + (" (this host has hugepages)" if hugepages else ""),
            )
    elif not config.reserved_memory:
        add(
            "error",
            "memory-manager",
            "memoryManagerPolicy Static needs reservedMemory (per NUMA node, summing "
            "to kube/system-reserved memory plus the hard eviction threshold): the kubelet will not start",
            blocks_start=True,
        )

    unplaced = sorted({d.resource for d in snapshot.accounting.devices if d.resource and d.numa_node == -1})
    if unplaced:
        add(
            "warning",
            "devices",
            f"registered devices with no known NUMA node ({', '.join(unplaced)}): the "
            "Topology Manager cannot align them. Check the BIOS's PCI locality (ACPI _PXM) and the device plugin",
        )
    absent = [s.source for s in snapshot.sources if not s.up and s.available and s.reason == "missing"]
    if absent:
        add("info", "sources", f"no {', '.join(absent)} on this host: the configuration is checked on its own "
            "(run doctor on the node to check the kubelet's state too)")  # fmt: skip
    for status in snapshot.sources:
        if not status.up and status.available and status.reason != "missing":
            add("error", "sources", f"{status.source} could not be read: {status.message}")
    for finding in placement_findings(placement):
        findings.append(finding)
    for reason in startup_refusals(config, topology):
        findings.append(
            Finding(
                severity="error",
                check="kubelet-start",
                message=f"{reason}: the kubelet will not start",
                blocks_start=True,
            )
        )
    if not findings:
        add("info", "all", "nothing to change: the configuration supports NUMA alignment")
    return tuple(findings)


REMOTE_WARNING = 0.5


def placement_findings(view: PlacementView | None) -> list[Finding]:
    """Drift and remote memory of the sampled containers, in the seeds' words."""
    if view is None or not view.status.up:
        return []
    found = []
    for c in view.containers:
        who = f"{c.namespace}/{c.pod} container {c.container}" if c.pod else f"pod {c.pod_uid} container {c.container}"
        if c.cpu_drift and c.intended_cpus is not None:
            found.append(Finding(severity="warning", check="placement-drift", message=(
                f"{who}: the CPU Manager pinned CPUs {format_cpuset(c.intended_cpus)} but its cgroup allows "
                f"{format_cpuset(c.cpus)}: something rewrote the cpuset (a runtime update, a restart that lost the "
                "pinning, or another agent); the state file and the kernel disagree")))  # fmt: skip
        if c.memory_drift and c.intended_mems is not None:
            found.append(Finding(severity="warning", check="placement-drift", message=(
                f"{who}: the Memory Manager gave NUMA {format_cpuset(c.intended_mems)} but cpuset.mems is "
                f"{format_cpuset(c.mems)}: its memory is not held to that NUMA node (the runtime did not apply "
                "the Memory Manager's cpuset.mems)")))  # fmt: skip
        if c.exclusive and c.remote_ratio > REMOTE_WARNING:
            found.append(Finding(severity="warning", check="remote-memory", message=(
                f"{who}: {c.remote_ratio:.0%} of its memory is on NUMA nodes without its CPUs. A large NumaForeign "
                "means a cross-NUMA memory placement problem: Memory Manager isn't configured, or the pod isn't "
                "Guaranteed QoS")))  # fmt: skip
    return found

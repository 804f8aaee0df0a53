"""`doctor`: the node's kubelet configuration checked against what NUMA alignment needs.

Each finding is one line: a severity, what is wrong, and what to change. `error` means pods will be
rejected or misplaced, `warning` means alignment is not guaranteed, `info` is worth knowing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exporter.cpuset import format_cpuset
from exporter.snapshot import Snapshot

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    severity: Severity
    check: str
    message: str

    def line(self) -> str:
        return f"{self.severity.upper():7} {self.check}: {self.message}"


def diagnose(snapshot: Snapshot) -> tuple[Finding, ...]:
    findings: list[Finding] = []

    def add(severity: Severity, check: str, message: str) -> None:
        findings.append(Finding(severity=severity, check=check, message=message))

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
                "reservedSystemCPUs (e.g. one core per NUMA node) or kubeReserved/systemReserved cpu",
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
        missing = config.reserved_system_cpus - {cpu.cpu for cpu in topology.cpus}
        if missing:
            add(
                "error",
                "cpu-reservation",
                f"reservedSystemCPUs names CPUs that are not online: {format_cpuset(missing)}",
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
    else:
        if not config.reserved_memory:
            add(
                "error",
                "memory-manager",
                "memoryManagerPolicy Static needs reservedMemory (per NUMA node, summing "
                "to kube/system-reserved memory plus the hard eviction threshold): the kubelet will not start",
            )
        unknown = set(config.reserved_memory) - set(topology.numa_node_ids)
        if unknown:
            add("error", "memory-manager", f"reservedMemory names NUMA nodes this host lacks: {sorted(unknown)}")

    unplaced = sorted({d.resource for d in snapshot.accounting.devices if d.resource and d.numa_node == -1})
    if unplaced:
        add(
            "warning",
            "devices",
            f"registered devices with no known NUMA node ({', '.join(unplaced)}): the "
            "Topology Manager cannot align them. Check the BIOS's PCI locality (ACPI _PXM) and the device plugin",
        )
    for status in snapshot.sources:
        if not status.up and status.available:
            add("error", "sources", f"{status.source} could not be read: {status.message}")
    if not findings:
        add("info", "all", "nothing to change: the configuration supports NUMA alignment")
    return tuple(findings)

"""`doctor`: the node's kubelet configuration checked against what NUMA alignment needs.

Each finding is one line: a severity, what is wrong, and what to change. `error` means pods will be
rejected or misplaced, `warning` means alignment is not guaranteed, `info` is worth knowing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from exporter.cpuset import format_cpuset
from exporter.hardware.pcie import GPUDIRECT_RDMA, nearest_nics
from exporter.kubelet.placement import PlacementView
from exporter.kubelet.startup import REMOVED_GATES, startup_refusals, state_refusals
from exporter.model import NumaNode
from exporter.snapshot import Snapshot
from exporter.sources import kubelet_config
from exporter.sources.kubelet_config import FIELDS
from exporter.units import human_bytes

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


def diagnose(snapshot: Snapshot, placement: PlacementView | None = None) -> tuple[Finding, ...]:
    findings: list[Finding] = []

    def add(severity: Severity, check: str, message: str, *, blocks_start: bool = False) -> None:
        findings.append(Finding(severity=severity, check=check, message=message, blocks_start=blocks_start))

    state = snapshot.kubelet
    config = state.config
    topology = snapshot.topology
    numa_count = len(topology.numa_nodes)
    config_status = snapshot.source("kubelet_config")
    if config_status is not None and not config_status.up and config_status.reason in ("format", "parse"):
        # Everything the parser refuses, the kubelet refuses too (tests/integration/test_doctor_oracle.py).
        add("error", "kubelet-start", f"{config_status.message}: the kubelet will not start (the checks below "
            "use the kubelet's defaults)", blocks_start=True)  # fmt: skip
    elif config_status is not None and config_status.reason == "contradicted":
        add("error", "kubelet-config", f"{config_status.message}. No topologyManagerPolicy is published until it is "
            "fixed; the checks below use the kubelet's defaults")  # fmt: skip
    elif not config.known:
        where = config_status.message if config_status and config_status.message else "no kubelet configuration"
        places = "; ".join(
            f"{name}: {' + '.join(p for p in (file, directory) if p)}"
            for name, file, directory in kubelet_config.DISTRIBUTIONS
        )
        add("warning", "kubelet-config", f"{where}. Distributions keep it at {places}. No topologyManagerPolicy is "
            "published meanwhile; the checks below use the kubelet's defaults")  # fmt: skip
    if config.known and config.flags_unchecked:
        add("info", "kubelet-flags", f"{config.flags_unchecked}; the kubelet's flags override its files: mount the "
            "host's /proc (the chart does) to check them")  # fmt: skip
    if config.known and config.field_origins:
        origins = ", ".join(f"{name} from {where}" for name, where in sorted(config.field_origins.items()))
        who = f"the kubelet (pid {config.kubelet_pid})" if config.kubelet_pid else "the kubelet's configuration"
        add("info", "kubelet-config", f"{who}: {origins}; every other field has the kubelet's default")
    for key in config.unknown_fields:
        close = difflib.get_close_matches(key, sorted(FIELDS), n=1)
        add("warning", "kubelet-config", f"unknown field {key!r}: the kubelet ignores it"
            + (f" (did you mean {close[0]!r}?)" if close else ""))  # fmt: skip
    for gate in sorted(REMOVED_GATES & set(config.feature_gates)):
        add("warning", "feature-gates", f"feature gate {gate} no longer exists in v1.36 (graduated and removed): "
            "the kubelet ignores it")  # fmt: skip

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
        smt = any(len(cpu.siblings) > 1 for cpu in topology.cpus)
        if smt and not config.cpu_option("full-pcpus-only"):
            add(
                "info",
                "cpu-manager",
                "SMT is on and full-pcpus-only is not set: a container may share a physical "
                'core with another. Add cpuManagerPolicyOptions: {full-pcpus-only: "true"}',
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
            special = [n for n in snapshot.topology.numa_nodes if n.memory_kind != "dram"]
            add(
                "error",
                "topology-manager",
                f"{numa_count} NUMA nodes but the Topology Manager allows "
                f"{config.max_allowable_numa_nodes}: the kubelet refuses to start. Set topologyManagerPolicyOptions: "
                f'{{max-allowable-numa-nodes: "{numa_count}"}}'
                + (
                    f" ({len(special)} of them are not host DRAM ({_kinds(special)}), but the kubelet counts every "
                    "NUMA node)"
                    if special
                    else ""
                ),
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
    local = sorted((d.address, d.local_numa_node) for d in topology.pci_devices if d.local_numa_node != -1)
    if local:
        where = ", ".join(f"{address} on NUMA {numa}" for address, numa in local)
        add("info", "devices", f"the firmware gives no NUMA node for {where}, but their local CPUs are all there "
            "(the hardware's view, as hwloc shows it): the kubelet and device plugins still see -1, so nothing "
            "aligns with them. A firmware (ACPI _PXM) fix makes it numa_node")  # fmt: skip
    absent = [s.source for s in snapshot.sources if not s.up and s.available and s.reason == "missing"]
    if absent:
        add("info", "sources", f"no {', '.join(absent)} on this host: the configuration is checked on its own "
            "(run doctor on the node to check the kubelet's state too)")  # fmt: skip
    for status in snapshot.sources:
        if status.source == "kubelet_config" and status.reason in ("format", "parse"):
            continue  # said above, as the kubelet's refusal
        if not status.up and status.available and status.reason != "missing":
            add("error", "sources", f"{status.source} could not be read: {status.message}")
    for finding in placement_findings(placement):
        findings.append(finding)
    findings.extend(_host_findings(snapshot))
    refusals = startup_refusals(config, topology) + [
        f"{reason}: drain the node and remove the state file, or keep the old setting"
        for reason in state_refusals(state, topology, snapshot.accounting.reserved.cpus)
    ]
    for reason in refusals:
        findings.append(
            Finding(
                severity="error",
                check="kubelet-start",
                message=f"{reason}: the kubelet will not start",
                blocks_start=True,
            )
        )
    if config_status is not None and config_status.reason == "permission":
        return _unreadable_first(findings, snapshot)
    if not findings:
        add("info", "all", "nothing to change: the configuration supports NUMA alignment")
    return tuple(findings)


# What doctor says from the kubelet's configuration: with that configuration unreadable these would advise from
# the kubelet's defaults, not from what it runs (a node running static and single-numa-node told to set them).
CONFIG_CHECKS = frozenset({"cpu-manager", "cpu-reservation", "topology-manager", "memory-manager", "kubelet-config",
                           "kubelet-start", "kubelet-flags"})  # fmt: skip


def _unreadable_first(findings: list[Finding], snapshot: Snapshot) -> tuple[Finding, ...]:
    """The kubelet's files cannot be read by this process: that is the cause, said first; nothing is advised
    from a configuration that was not read."""
    unreadable = [s.source for s in snapshot.sources if not s.up and s.available and s.reason == "permission"]
    lead = Finding(
        severity="error",
        check="sources",
        message=f"cannot read {', '.join(unreadable)} (permission denied): run doctor as the agent runs (root, in "
        "its pod: kubectl exec), or as root on the node; nothing below is judged from the kubelet's configuration",
    )
    said = tuple(f"{source} could not be read" for source in unreadable)
    kept = [f for f in findings if f.check not in CONFIG_CHECKS and not f.message.startswith(said)]
    return (lead, *kept)


def _kinds(nodes: list[NumaNode]) -> str:
    by_kind: dict[str, list[int]] = {}
    for numa in nodes:
        by_kind.setdefault(numa.memory_kind, []).append(numa.numa_node)
    return ", ".join(f"{kind} on NUMA {format_cpuset(frozenset(ids))}" for kind, ids in sorted(by_kind.items()))


def _hardware_findings(snapshot: Snapshot) -> list[Finding]:
    """NUMA nodes that are not host memory, and GPUs too far from every NIC for GPUDirect RDMA."""
    found: list[Finding] = []
    topology = snapshot.topology
    special = [numa for numa in topology.numa_nodes if numa.memory_kind != "dram"]
    if special:
        owners = sorted({numa.memory_owner for numa in special if numa.memory_owner})
        found.append(Finding(severity="info", check="memory-kinds", message=(
            f"NUMA nodes that are not host DRAM: {_kinds(special)}"
            + (f" (the memory of GPUs {', '.join(owners)})" if owners else "")
            + ". The kubelet counts them like any NUMA node (Memory Manager, Topology Manager hints, the NUMA "
            "node limit); numa_topology_numa_node_info's memory_kind tells them apart")))  # fmt: skip
    if any(device.kind == "nic" for device in topology.pci_devices):
        for gpu, nic, path in nearest_nics(topology):
            if path not in GPUDIRECT_RDMA:
                found.append(Finding(severity="info", check="gpu-nic", message=(
                    f"GPU {gpu} has no NIC under its PCIe switch: the nearest, {nic}, is {path} away, so NCCL's "
                    "default uses no GPUDirect RDMA for it (traffic through host memory). Pods on it that need "
                    "RDMA want another GPU, or NCCL_NET_GDR_LEVEL raised knowingly")))  # fmt: skip
    return found


def _host_findings(snapshot: Snapshot) -> list[Finding]:
    """The configuration against this host: where the reserved CPUs fall, and pods too big for a NUMA node."""
    found: list[Finding] = _hardware_findings(snapshot)
    topology, config, accounting = snapshot.topology, snapshot.kubelet.config, snapshot.accounting
    reserved = accounting.reserved.cpus
    if config.cpu_manager_policy == "static" and reserved and len(topology.numa_nodes) > 1:
        per_numa = {numa.numa_node: frozenset(numa.cpus) for numa in topology.numa_nodes}
        per_socket: dict[int, set[int]] = {}
        for cpu in topology.cpus:
            per_socket.setdefault(cpu.socket_id, set()).add(cpu.cpu)
        numa_text = ", ".join(f"NUMA {n} {len(c - reserved)} of {len(c)}" for n, c in per_numa.items() if c)
        socket_text = ", ".join(f"socket {s} {len(c - reserved)} of {len(c)}" for s, c in sorted(per_socket.items()))
        found.append(Finding(severity="info", check="cpu-reservation", message=(
            f"reserved CPUs {format_cpuset(reserved)} leave for pods: {numa_text}; {socket_text}")))  # fmt: skip
        for n, cpus in per_numa.items():
            if cpus and cpus <= reserved:
                found.append(Finding(severity="warning", check="cpu-reservation", message=(
                    f"the reserved CPUs take every CPU of NUMA node {n}: no container's exclusive CPUs can be aligned "
                    f"with its memory and devices. Reserve CPUs on other NUMA nodes, or fewer")))  # fmt: skip
        if config.cpu_option("full-pcpus-only"):
            siblings = frozenset(s for cpu in topology.cpus if cpu.cpu in reserved for s in cpu.siblings) - reserved
            if siblings:
                found.append(Finding(severity="warning", check="cpu-reservation", message=(
                    f"the reserved CPUs {format_cpuset(reserved)} hold only part of their cores: with full-pcpus-only "
                    f"their siblings {format_cpuset(siblings)} can never be a container's exclusive CPUs. Reserve "
                    "whole cores")))  # fmt: skip
    if config.topology_manager_policy == "single-numa-node" and len(topology.numa_nodes) > 1:
        largest: dict[str, tuple[int, int]] = {}
        for account in accounting.accounts:
            if (
                account.resource in accounting.numa_accounted
                and account.numa_node >= 0
                and account.allocatable is not None
            ):
                best = largest.get(account.resource)
                if best is None or account.allocatable > best[0]:
                    largest[account.resource] = (account.allocatable, account.numa_node)
        for profile in accounting.profiles:
            for resource, amount in sorted(profile.requests.items()):
                limit = largest.get(resource)
                if limit is not None and amount > limit[0]:
                    found.append(Finding(severity="warning", check="pod-size", message=(
                        f"profile {profile.name} asks {_amount(resource, amount)} {resource}, more than any NUMA node "
                        f"has for pods ({_amount(resource, limit[0])} on NUMA {limit[1]}): single-numa-node rejects "
                        "every such pod (TopologyAffinityError)")))  # fmt: skip
        shown = [f"{_amount(r, amount)} {r} (NUMA {n})" for r, (amount, n) in sorted(largest.items())]
        if shown:
            found.append(Finding(severity="info", check="pod-size", message=(
                "the largest pod single-numa-node admits on an empty node: " + ", ".join(shown))))  # fmt: skip
    return found


def _amount(resource: str, amount: int) -> str:
    return human_bytes(amount) if resource == "memory" or resource.startswith("hugepages-") else str(amount)


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

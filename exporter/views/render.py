"""Printing a snapshot for people (an aligned table) and for tools (JSON)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from exporter.cpuset import format_cpuset
from exporter.hardware.pcie import GPUDIRECT_RDMA
from exporter.kubelet.dra import DraView, is_dra_resource
from exporter.kubelet.placement import PlacementView
from exporter.model import UNKNOWN_NUMA_NODE, PciDevice, PciePath, SourceStatus, Topology
from exporter.snapshot import Snapshot
from exporter.units import hugepage_size_name, human_bytes


def to_jsonable(value: Any) -> Any:
    """Dataclasses to dicts, sets to sorted lists, mappings with stringified keys. A set renders in one order
    whatever it holds: numbers by value, then strings, then anything else by its JSON text (a dataclass by its
    fields in order)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, frozenset | set):
        return sorted((to_jsonable(item) for item in value), key=_set_order)
    if isinstance(value, Mapping):
        return {
            ":".join(map(str, key)) if isinstance(key, tuple) else str(key): to_jsonable(item)
            for key, item in value.items()
        }
    if isinstance(value, tuple | list):
        return [to_jsonable(item) for item in value]
    return value


def _set_order(item: Any) -> tuple[int, float, str]:
    if isinstance(item, int | float) and not isinstance(item, bool):
        return (0, item, "")
    if isinstance(item, str):
        return (1, 0, item)
    return (2, 0, json.dumps(item))  # a set holds hashable things: a dataclass's dict in field order, a tuple


def render_json(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=2, sort_keys=False) + "\n"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [list(headers)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def render_topology(topology: Topology) -> str:
    out = []
    sockets = {cpu.socket_id for cpu in topology.cpus}
    out.append(
        f"{_count(len(topology.numa_nodes), 'NUMA node')}, {_count(len(topology.cpus), 'online CPU')}, "
        f"{_count(len(sockets), 'socket')}, {_count(len(topology.gpus), 'GPU')} (NVML), "
        f"{_count(len(topology.pci_devices), 'PCI device')} of interest\n\n"
    )
    cpu_by_id = {cpu.cpu: cpu for cpu in topology.cpus}
    devices_by_numa: dict[int, Counter[str]] = {}
    for device in topology.pci_devices:
        devices_by_numa.setdefault(device.numa_node, Counter())[device.kind] += 1
    rows = []
    for numa in topology.numa_nodes:
        members = [cpu_by_id[cpu] for cpu in sorted(numa.cpus) if cpu in cpu_by_id]
        cores = {(cpu.socket_id, cpu.core_id) for cpu in members}
        hugepages = " ".join(
            f"{hugepage_size_name(pool.size_bytes)}:{pool.free_pages}/{pool.total_pages}" for pool in numa.hugepages
        )
        devices = devices_by_numa.get(numa.numa_node, Counter())
        rows.append(
            (
                numa.numa_node,
                format_cpuset(numa.cpus) or "-",
                len(cores),
                ",".join(str(s) for s in sorted({cpu.socket_id for cpu in members})) or "-",
                human_bytes(numa.memory_total_bytes),
                numa.memory_kind + (f" ({numa.memory_owner})" if numa.memory_owner else ""),
                human_bytes(numa.memory_free_bytes),
                hugepages or "-",
                ", ".join(f"{kind} {count}" for kind, count in sorted(devices.items())) or "-",
            )
        )
    out.append(
        table(("NUMA", "CPUS", "CORES", "SOCKETS", "MEMORY", "KIND", "FREE", "HUGEPAGES free/total", "DEVICES"), rows)
    )
    ids = topology.numa_node_ids
    if any(numa.distances for numa in topology.numa_nodes):
        out.append("\nDistances (SLIT)\n")
        out.append(
            table(
                ("FROM\\TO", *map(str, ids)),
                ((numa.numa_node, *(numa.distances.get(other, "-") for other in ids)) for numa in topology.numa_nodes),
            )
        )
    if topology.pci_devices:
        out.append("\nDevices\n")
        out.append(
            table(
                ("ADDRESS", "KIND", "CATEGORY", "NUMA", "DRIVER", "ID", "NAME", "INTERFACES", "SR-IOV"),
                (
                    (
                        dev.address,
                        dev.kind,
                        dev.category,
                        _device_numa(dev),
                        dev.driver or "-",
                        f"{dev.vendor_id}:{dev.device_id}",
                        " ".join(name for name in (dev.vendor_name, dev.model_name) if name) or "-",
                        ",".join(dev.net_interfaces + dev.rdma_devices) or "-",
                        _sriov(dev.sriov_numvfs, dev.sriov_totalvfs, dev.physfn),
                    )
                    for dev in topology.pci_devices
                ),
            )
        )
    out.append(_pcie_matrix(topology))
    if topology.gpus:
        out.append("\nGPUs (NVML)\n")
        out.append(
            table(
                ("INDEX", "NAME", "UUID", "PCI", "NUMA", "MEMORY", "MIG"),
                (
                    (
                        gpu.index,
                        gpu.name,
                        gpu.uuid,
                        gpu.pci_address,
                        gpu.numa_node,
                        human_bytes(gpu.memory_total_bytes),
                        f"on, {len(gpu.mig_devices)} devices" if gpu.mig_enabled else "off",
                    )
                    for gpu in topology.gpus
                ),
            )
        )
    out.append("\n" + _sources_line("Sources", topology.sources))
    out.append("\n")
    for warning in topology.warnings:
        out.append(f"warning: {warning}\n")
    return "".join(out)


def _gpu_nic(path: PciePath | None) -> str:
    if path is None:
        return "-"
    rdma = "GPUDirect RDMA" if path.path in GPUDIRECT_RDMA else "no GPUDirect RDMA"
    return f"{path.path} ({path.a} - {path.b}, {rdma})"


def _pcie_matrix(topology: Topology) -> str:
    """GPUs and NICs (not VFs) against each other, in `nvidia-smi topo -m`'s classes; "" without two."""
    gpus = [d for d in topology.pci_devices if d.kind == "gpu"]
    nics = [d for d in topology.pci_devices if d.kind == "nic"]
    named = [(f"GPU{i}", d) for i, d in enumerate(gpus)] + [(f"NIC{i}", d) for i, d in enumerate(nics)]
    if len(named) < 2:
        return ""
    paths = {(p.a, p.b): p.path for p in topology.pcie_paths}

    def cell(left: PciDevice, right: PciDevice) -> str:
        if left.address == right.address:
            return "X"
        return paths.get((min(left.address, right.address), max(left.address, right.address)), "-")

    rows = [(name, *(cell(device, other) for _, other in named), _device_numa(device)) for name, device in named]
    legend = "".join(
        f"  {name}: {device.address}" + (f" ({','.join(device.net_interfaces + device.rdma_devices)})"
                                         if device.net_interfaces or device.rdma_devices else "") + "\n"
        for name, device in named
    )  # fmt: skip
    return (
        "\nPCIe paths (as nvidia-smi topo -m: PIX one switch, PXB several, PHB host bridge, NODE same NUMA "
        "node, SYS across NUMA nodes)\n" + table(("", *(name for name, _ in named), "NUMA"), rows) + legend
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _device_numa(device: PciDevice) -> str:
    """`-1 (CPUs: 1)` where the firmware gives no NUMA node but the device's local CPUs are all on one."""
    if device.numa_node == UNKNOWN_NUMA_NODE and device.local_numa_node != UNKNOWN_NUMA_NODE:
        return f"-1 (CPUs: {device.local_numa_node})"
    return str(device.numa_node)


def _sriov(numvfs: int | None, totalvfs: int | None, physfn: str | None) -> str:
    if physfn:
        return f"VF of {physfn}"
    if totalvfs:
        return f"PF {numvfs or 0}/{totalvfs} VFs"
    return "-"


def _sources_line(label: str, statuses: Iterable[SourceStatus], *, width: int = 110) -> str:
    """`label: a ok, b DOWN (why), ...`, wrapped at `width` with the continuation indented under the first."""
    lines, current = [], f"{label}: "
    items = [_source_text(s.source, s.up, s.available, s.message) for s in statuses]
    for index, item in enumerate(items):
        piece = item + ("," if index < len(items) - 1 else "")
        if len(current) + len(piece) > width and current.strip() != f"{label}:":
            lines.append(current.rstrip())
            current = " " * (len(label) + 2)
        current += piece + " "
    lines.append(current.rstrip())
    return "\n".join(lines)


def _source_text(source: str, up: bool, available: bool, message: str | None) -> str:
    if up:
        return f"{source} ok ({message})" if message else f"{source} ok"
    if not available:
        return f"{source} unavailable ({message})"
    return f"{source} DOWN ({message})"


def render_snapshot(snapshot: Snapshot, *, placement: PlacementView | None = None) -> str:
    """The topology table, then the kubelet's view: per-NUMA accounting, fit, and misaligned containers."""
    out = [render_topology(snapshot.topology)]
    state, accounting = snapshot.kubelet, snapshot.accounting
    config = state.config
    cpu_policy = "unknown" if state.cpu is None and state.unknown("cpu_manager_state") else state.cpu_policy
    memory_policy = "unknown" if state.memory is None and state.unknown("memory_manager_state") else state.memory_policy
    out.append(
        f"\nKubelet: cpuManagerPolicy={cpu_policy} memoryManagerPolicy={memory_policy} "
        + (
            f"topologyManagerPolicy={config.topology_manager_policy} scope={config.topology_manager_scope} "
            if config.known
            else "topologyManagerPolicy=unknown (no configuration the kubelet runs with was read) "
        )
        + f"reserved CPUs={format_cpuset(accounting.reserved.cpus) or '-'} ({accounting.reserved.source})\n"
    )
    hardware = {status.source for status in snapshot.topology.sources}
    out.append(_sources_line("Kubelet sources", [s for s in snapshot.sources if s.source not in hardware]))
    out.append(
        "\n\nPer-NUMA accounting (* = NUMA-accounted: the kubelet pins it to NUMA nodes; "
        "† = DRA: counted per NUMA node, which the kubelet does not align)\n"
    )
    out.append(
        table(
            ("NUMA", "RESOURCE", "CAPACITY", "ALLOCATABLE", "AVAILABLE", "STRANDED"),
            (
                (
                    account.numa_node,
                    account.resource + _marker(account.resource, accounting.numa_accounted),
                    _amount(account.resource, account.capacity),
                    "unknown" if account.allocatable is None else _amount(account.resource, account.allocatable),
                    "unknown" if account.available is None else _amount(account.resource, account.available),
                    "-" if account.available is None else _amount(account.resource, account.stranded),
                )
                for account in sorted(accounting.accounts, key=lambda a: (a.numa_node, a.resource))
            ),
        )
    )
    if accounting.fits:
        ids = snapshot.topology.numa_node_ids
        out.append("\nFit: pods of each profile that still fit (per NUMA node; aligned = single-numa-node)\n")
        out.append(
            table(
                ("PROFILE", "REQUESTS", *(f"NUMA {n}" for n in ids), "ALIGNED", "UNALIGNED"),
                (
                    (
                        fit.profile,
                        _requests(next(p.requests for p in accounting.profiles if p.name == fit.profile)),
                        *(fit.per_numa.get(n, 0) for n in ids),
                        fit.aligned,
                        fit.unaligned,
                    )
                    for fit in accounting.fits
                ),
            )
        )
    if accounting.containers:
        misaligned = [c for c in accounting.containers if not c.aligned]
        out.append(
            f"\nContainers with exclusive resources: {len(accounting.containers)}, misaligned: {len(misaligned)}\n"
        )
        out.append(
            table(
                ("POD", "CONTAINER", "NUMA NODES PER RESOURCE", "ALIGNED", "DRA", "GPU-NIC PATH"),
                (
                    (
                        f"{c.namespace}/{c.pod}" if c.pod else c.pod_uid,
                        c.container,
                        " ".join(f"{r}={format_cpuset(n) if min(n) >= 0 else '-1'}" for r, n in c.numa_nodes.items()),
                        "yes" if c.aligned else "NO",
                        ("unknown" if c.dra_misaligned is None else "MISALIGNED" if c.dra_misaligned else "aligned")
                        if c.holds_dra
                        else "-",
                        _gpu_nic(c.gpu_nic),
                    )
                    for c in accounting.containers
                ),
            )
        )
    if accounting.dra is not None and accounting.dra.devices:
        out.append(_dra_table(accounting.dra))
    if placement is not None:
        out.append(_placement_table(placement))
    stale = {source: count for source, count in accounting.stale_entries.items() if count}
    if stale:
        out.append(
            "\nStale entries (pods gone, not yet cleaned by the kubelet): "
            + ", ".join(f"{s} {n}" for s, n in stale.items())
        )
        out.append("\n")
    crosscheck = accounting.crosscheck
    if crosscheck is not None and crosscheck.disagreements:
        out.append(f"\nState files and podresources disagree: {len(crosscheck.disagreements)}\n")
        out.append(
            table(
                ("POD", "CONTAINER", "RESOURCE", "STATE FILES", "PODRESOURCES"),
                (
                    (f"{d.namespace}/{d.pod}", d.container, d.resource, d.state_files, d.podresources)
                    for d in crosscheck.disagreements
                ),
            )
        )
    return "".join(out)


def _placement_table(view: PlacementView) -> str:
    """Intended (the kubelet's state files) vs enforced (the cgroup's cpuset) vs observed (its memory)."""
    if not view.status.up:
        state = "unavailable" if not view.status.available else "DOWN"
        return f"\nObserved placement: {view.status.source} {state} ({view.status.message})\n"
    scope = "all containers" if view.all_containers else "containers holding exclusive resources"
    drifting = sum(1 for c in view.containers if c.cpu_drift or c.memory_drift)
    heading = f"\nObserved placement ({scope}): {len(view.containers)}, drifting: {drifting}\n"
    if not view.containers:
        return heading
    return heading + table(
        ("POD", "CONTAINER", "CPUS: PINNED -> ENFORCED", "MEMS: STATIC -> ENFORCED", "MEMORY PER NUMA", "REMOTE",
         "DRIFT"),
        (
            (
                f"{c.namespace}/{c.pod}" if c.pod else c.pod_uid,
                c.container,
                f"{_set_or_dash(c.intended_cpus)} -> {format_cpuset(c.cpus)} (NUMA {format_cpuset(c.cpu_numa_nodes)})",
                f"{_set_or_dash(c.intended_mems)} -> {format_cpuset(c.mems)}",
                " ".join(f"{n}:{human_bytes(b)}" for n, b in sorted(_per_numa(c.memory).items())) or "-",
                f"{c.remote_ratio:.0%}",
                ",".join(r for r, d in (("cpu", c.cpu_drift), ("memory", c.memory_drift)) if d) or "-",
            )
            for c in view.containers
        ),
    )  # fmt: skip


def _set_or_dash(values: frozenset[int] | None) -> str:
    return format_cpuset(values) if values else "-"


def _per_numa(memory: Mapping[tuple[int, str], int]) -> dict[int, int]:
    found: dict[int, int] = {}
    for (numa, _), size in memory.items():
        found[numa] = found.get(numa, 0) + size
    return found


def _marker(resource: str, numa_accounted: frozenset[str]) -> str:
    if is_dra_resource(resource):
        return " †"
    return " *" if resource in numa_accounted else ""


def _dra_table(dra: DraView) -> str:
    allocated = sum(1 for device in dra.devices if device.ref in dra.allocated)
    heading = f"\nDRA devices: {len(dra.devices)}, allocated: {allocated}\n"
    return heading + table(
        ("RESOURCE", "POOL", "DEVICE", "NUMA", "FROM", "ALLOCATED", "HEALTH", "PUBLISHED"),
        (
            (
                device.resource,
                device.ref.pool,
                device.ref.device,
                format_cpuset(device.numa_nodes) or "-1",
                device.numa_source,
                "yes" if device.ref in dra.allocated else "no",
                device.health or "-",
                "yes" if device.published else "NO (slice withdrawn)",
            )
            for device in dra.devices
        ),
    )


def _amount(resource: str, value: int) -> str:
    return human_bytes(value) if resource == "memory" or resource.startswith("hugepages-") else str(value)


def _requests(requests: Mapping[str, int]) -> str:
    return ", ".join(f"{resource}: {_amount(resource, amount)}" for resource, amount in requests.items())

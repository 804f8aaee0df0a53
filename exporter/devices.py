"""Where each kubelet device lives: its NUMA nodes, from hardware first.

A PCI address ID reads `numa_node` from sysfs; a GPU or MIG UUID maps through NVML to its PCI address;
only when hardware does not know (`-1`, or an ID nothing maps) do the checkpoint's NUMA keys count.
Also the device inventory behind `numa_topology_device_info`: one record per device, registered or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exporter.model import UNKNOWN_NUMA_NODE, DeviceCheckpoint, DeviceKind, Topology

UNKNOWN = frozenset({UNKNOWN_NUMA_NODE})


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRecord:
    device: str
    resource: str
    kind: DeviceKind
    numa_node: int
    pci_address: str
    model: str


def hardware_numa(topology: Topology) -> dict[str, int]:
    """Device ID -> NUMA node, for every ID hardware can place: PCI addresses, GPU and MIG UUIDs."""
    placed = {device.address: device.numa_node for device in topology.pci_devices}
    for gpu in topology.gpus:
        placed[gpu.uuid] = gpu.numa_node
        placed[gpu.pci_address] = gpu.numa_node
        for mig in gpu.mig_devices:
            placed[mig.uuid] = gpu.numa_node
    return placed


def device_numa_nodes(topology: Topology, checkpoint: DeviceCheckpoint | None) -> dict[str, frozenset[int]]:
    """Every device ID the checkpoint names -> the NUMA nodes it counts on ({-1} when unknown)."""
    if checkpoint is None:
        return {}
    hardware = hardware_numa(topology)
    keys: dict[str, set[int]] = {}
    for allocation in checkpoint.allocations:
        for numa, ids in allocation.devices_by_numa.items():
            for device in ids:
                keys.setdefault(device, set()).add(numa)
    names = set(keys) | {device for ids in checkpoint.registered.values() for device in ids}
    placement = {}
    for device in names:
        known = hardware.get(device, UNKNOWN_NUMA_NODE)
        if known != UNKNOWN_NUMA_NODE:
            placement[device] = frozenset({known})
            continue
        from_keys = frozenset(numa for numa in keys.get(device, ()) if numa != UNKNOWN_NUMA_NODE)
        placement[device] = from_keys or UNKNOWN
    return placement


def device_inventory(
    topology: Topology, checkpoint: DeviceCheckpoint | None, placement: Mapping[str, frozenset[int]]
) -> tuple[DeviceRecord, ...]:
    resource_of = {
        device: resource for resource, ids in (checkpoint.registered if checkpoint else {}).items() for device in ids
    }
    gpus = {gpu.pci_address: gpu for gpu in topology.gpus}
    records: list[DeviceRecord] = []
    covered: set[str] = set()
    for pci in topology.pci_devices:
        gpu = gpus.get(pci.address)
        model = (gpu.name if gpu else None) or pci.model_name or f"{pci.vendor_id}:{pci.device_id}"
        ident = gpu.uuid if gpu and gpu.uuid in resource_of else pci.address
        covered.update((pci.address, ident))
        records.append(
            DeviceRecord(
                device=ident,
                resource=resource_of.get(ident, resource_of.get(pci.address, "")),
                kind=pci.kind,
                numa_node=pci.numa_node,
                pci_address=pci.address,
                model=model,
            )
        )
        for mig in gpu.mig_devices if gpu else ():
            covered.add(mig.uuid)
            records.append(
                DeviceRecord(
                    device=mig.uuid,
                    resource=resource_of.get(mig.uuid, ""),
                    kind="gpu",
                    numa_node=pci.numa_node,
                    pci_address=pci.address,
                    model=f"{model} MIG",
                )
            )
    for device, resource in sorted(resource_of.items()):
        if device in covered:
            continue
        numa = (
            sorted(placement.get(device, UNKNOWN))[0] if len(placement.get(device, UNKNOWN)) == 1 else UNKNOWN_NUMA_NODE
        )
        records.append(
            DeviceRecord(device=device, resource=resource, kind="other", numa_node=numa, pci_address="", model="")
        )
    return tuple(records)

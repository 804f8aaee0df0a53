"""Where each kubelet device lives, in the two views docs/product.md keeps apart.

* Hardware (`device_numa_nodes`): what performance follows, used by the alignment audit and device_info. A
  PCI address ID reads `numa_node` from sysfs (where that is -1, the NUMA node holding all its local CPUs,
  discovery.py); a GPU or MIG UUID, or an NVIDIA time-sliced replica `<uuid>::<n>`, maps through NVML to
  its PCI address; only when hardware does not know (`-1`, or an ID nothing maps) do the checkpoint's NUMA
  keys count.
* Admission (`admission_numa_nodes`): what the kubelet's device manager aligns, i.e. the topology the device
  plugin reported (K devicemanager/topology_hints.go). The checkpoint files each allocated device under the
  NUMA keys its plugin reported, `-1` for none; a resource whose allocations all sit under `-1` has a plugin
  that reports no topology, so its devices go with CPUs and memory of any NUMA node. A free device's plugin
  topology is in no state file: the kubelet's podresources API gives it (`GetAllocatableResources`); without
  that source it is taken to be the hardware's (what the NVIDIA and SR-IOV plugins report), and none where
  hardware does not know.
Also the device inventory behind `numa_topology_device_info`: one record per device, registered or not. A
device a DRA driver publishes is listed under its DRA name (`dra:<driver>`, pool, device) and, where
discovery found it too (same PCI address or GPU UUID), in place of discovery's own record: one device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exporter.kubelet.dra import EMPTY, DraView
from exporter.model import UNKNOWN_NUMA_NODE, DeviceCheckpoint, DeviceKind, Topology

UNKNOWN = frozenset({UNKNOWN_NUMA_NODE})
NO_TOPOLOGY: frozenset[int] = frozenset()
REPLICA_SEPARATOR = "::"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceRecord:
    device: str
    resource: str
    kind: DeviceKind
    numa_node: int
    pci_address: str
    model: str
    pool: str = ""
    # Where the hardware puts it: numa_node, else (firmware said -1) the NUMA node of its local CPUs.
    hardware_numa_node: int = UNKNOWN_NUMA_NODE


def hardware_numa(topology: Topology, *, local_cpus: bool = False) -> dict[str, int]:
    """Device ID -> NUMA node, for every ID hardware can place: PCI addresses, GPU and MIG UUIDs. With
    `local_cpus`, a device whose numa_node is -1 is placed by its local CPUs where they are on one NUMA node
    (the hardware view only: the kubelet and device plugins go by numa_node)."""
    placed = {d.address: d.hardware_numa_node if local_cpus else d.numa_node for d in topology.pci_devices}
    for gpu in topology.gpus:
        numa = placed.get(gpu.pci_address, gpu.numa_node) if local_cpus else gpu.numa_node
        placed[gpu.uuid] = numa
        placed[gpu.pci_address] = numa
        for mig in gpu.mig_devices:
            placed[mig.uuid] = numa
    return placed


def hardware_numa_of(hardware: Mapping[str, int], device: str) -> int:
    """A device ID's hardware NUMA node; a time-sliced replica `<uuid>::<n>` is its GPU's."""
    if device in hardware:
        return hardware[device]
    base, separator, _ = device.partition(REPLICA_SEPARATOR)
    return hardware.get(base, UNKNOWN_NUMA_NODE) if separator else UNKNOWN_NUMA_NODE


def _checkpoint_keys(checkpoint: DeviceCheckpoint) -> dict[str, set[int]]:
    keys: dict[str, set[int]] = {}
    for allocation in checkpoint.allocations:
        for numa, ids in allocation.devices_by_numa.items():
            for device in ids:
                keys.setdefault(device, set()).add(numa)
    return keys


def admission_numa_nodes(
    topology: Topology,
    checkpoint: DeviceCheckpoint | None,
    reported: Mapping[str, frozenset[int]] | None = None,
) -> dict[str, frozenset[int]]:
    """Every device ID the checkpoint names -> the NUMA nodes its plugin reported (empty: no topology).

    `reported`: the topology of every device as the kubelet's podresources API gives it (its plugin's
    own report, free devices included); where it names a device, it is the answer for a free device, and a
    resource whose reported devices all carry no topology has a plugin that reports none."""
    if checkpoint is None:
        return {}
    reported = reported or {}
    hardware = hardware_numa(topology)
    evidence = checkpoint.version != "v1"  # v1 files carry no NUMA keys at all
    keys = _checkpoint_keys(checkpoint) if evidence else {}
    without_topology = set()
    if evidence:
        by_resource: dict[str, set[int]] = {}
        for allocation in checkpoint.allocations:
            by_resource.setdefault(allocation.resource, set()).update(
                numa for numa, ids in allocation.devices_by_numa.items() if ids
            )
        without_topology = {resource for resource, numas in by_resource.items() if numas == {UNKNOWN_NUMA_NODE}}
    by_plugin: dict[str, list[frozenset[int]]] = {}
    for resource, device in _devices(checkpoint):
        if device in reported:
            by_plugin.setdefault(resource, []).append(reported[device])
    without_topology |= {resource for resource, numas in by_plugin.items() if not any(numas)}
    placement = {}
    for resource, device in _devices(checkpoint):
        filed = {numa for numa in keys.get(device, ()) if numa != UNKNOWN_NUMA_NODE}
        if resource in without_topology or (device in keys and not filed):
            placement[device] = NO_TOPOLOGY
        elif filed:
            placement[device] = frozenset(filed)
        elif device in reported:
            placement[device] = reported[device]
        else:
            known = hardware_numa_of(hardware, device)
            placement[device] = NO_TOPOLOGY if known == UNKNOWN_NUMA_NODE else frozenset({known})
    return placement


def _devices(checkpoint: DeviceCheckpoint) -> list[tuple[str, str]]:
    pairs = {(resource, device) for resource, ids in checkpoint.registered.items() for device in ids}
    pairs.update((a.resource, device) for a in checkpoint.allocations for device in a.device_ids)
    return sorted(pairs)


def device_numa_nodes(topology: Topology, checkpoint: DeviceCheckpoint | None) -> dict[str, frozenset[int]]:
    """Every device ID the checkpoint names -> the NUMA nodes it counts on ({-1} when unknown)."""
    if checkpoint is None:
        return {}
    hardware = hardware_numa(topology, local_cpus=True)
    keys = _checkpoint_keys(checkpoint)
    names = set(keys) | {device for ids in checkpoint.registered.values() for device in ids}
    placement = {}
    for device in names:
        known = hardware_numa_of(hardware, device)
        if known != UNKNOWN_NUMA_NODE:
            placement[device] = frozenset({known})
            continue
        from_keys = frozenset(numa for numa in keys.get(device, ()) if numa != UNKNOWN_NUMA_NODE)
        placement[device] = from_keys or UNKNOWN
    return placement


def device_inventory(
    topology: Topology,
    checkpoint: DeviceCheckpoint | None,
    placement: Mapping[str, frozenset[int]],
    dra: DraView = EMPTY,
) -> tuple[DeviceRecord, ...]:
    records = _plugin_inventory(topology, checkpoint, placement)
    if not dra.devices:
        return records
    by_address = {r.pci_address: i for i, r in enumerate(records) if r.pci_address and not r.resource}
    merged = list(records)
    replaced: set[int] = set()
    for device in dra.devices:
        if not device.published:
            continue
        numa = sorted(device.numa_nodes)[0] if len(device.numa_nodes) == 1 else UNKNOWN_NUMA_NODE
        index = by_address.get(device.pci_address) if device.pci_address else None
        hardware = records[index].hardware_numa_node if index is not None and numa == UNKNOWN_NUMA_NODE else numa
        record = DeviceRecord(device=device.ref.device, resource=device.resource, kind=device.kind, numa_node=numa,
                              pci_address=device.pci_address, model=device.model, pool=device.ref.pool,
                              hardware_numa_node=hardware)  # fmt: skip
        if index is not None and index not in replaced:
            replaced.add(index)
            merged[index] = record
        else:
            merged.append(record)
    return tuple(merged)


def _plugin_inventory(
    topology: Topology, checkpoint: DeviceCheckpoint | None, placement: Mapping[str, frozenset[int]]
) -> tuple[DeviceRecord, ...]:
    resource_of = {
        device: resource for resource, ids in (checkpoint.registered if checkpoint else {}).items() for device in ids
    }
    gpus = {gpu.pci_address: gpu for gpu in topology.gpus}
    hardware_of = {pci.address: pci.hardware_numa_node for pci in topology.pci_devices}
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
                hardware_numa_node=pci.hardware_numa_node,
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
                    hardware_numa_node=pci.hardware_numa_node,
                )
            )
    by_uuid = {gpu.uuid: gpu for gpu in topology.gpus}
    for device, resource in sorted(resource_of.items()):
        if device in covered:
            continue
        replica_of = by_uuid.get(device.partition(REPLICA_SEPARATOR)[0]) if REPLICA_SEPARATOR in device else None
        if replica_of is not None:  # an NVIDIA time-sliced replica: one GPU shared, listed once per replica
            records.append(
                DeviceRecord(
                    device=device,
                    resource=resource,
                    kind="gpu",
                    numa_node=replica_of.numa_node,
                    pci_address=replica_of.pci_address,
                    model=replica_of.name,
                    hardware_numa_node=hardware_of.get(replica_of.pci_address, replica_of.numa_node),
                )
            )
            continue
        numa = (
            sorted(placement.get(device, UNKNOWN))[0] if len(placement.get(device, UNKNOWN)) == 1 else UNKNOWN_NUMA_NODE
        )
        records.append(DeviceRecord(device=device, resource=resource, kind="other", numa_node=numa, pci_address="",
                                    model="", hardware_numa_node=numa))  # fmt: skip
    return tuple(records)

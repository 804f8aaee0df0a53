"""Discovery: every hardware source read once and joined into one Topology.

The joins live here, not in the sources: a GPU's NUMA node is the `numa_node` of its PCI address in
sysfs, and a PCI device's human name comes from udev.
"""

from __future__ import annotations

import dataclasses

from exporter.errors import SourceError, SourceMissing, SourceUnavailable
from exporter.hardware import memory_kinds, pcie
from exporter.model import UNKNOWN_NUMA_NODE, Gpu, NumaNode, PciDevice, SourceStatus, Topology
from exporter.paths import HostPaths
from exporter.sources import cpus, numa, nvml, pci, udev

SYSFS = "sysfs"


def discover(
    paths: HostPaths,
    *,
    use_nvml: bool = True,
    nvml_library: nvml.NvmlLibrary | None = None,
    nvml_session: nvml.NvmlSession | None = None,
    use_udev: bool | None = None,
) -> Topology:
    """Read the host. Raises SourceMissing when `paths.sysfs` holds no CPU or NUMA information at all.
    `nvml_session`: the process's NVML session (serve keeps one); without it, NVML is opened for this read."""
    if not paths.cpus_dir.is_dir() and not paths.numa_nodes_dir.is_dir():
        raise SourceMissing(SYSFS, f"{paths.sysfs} has no devices/system/cpu or devices/system/node")
    online = cpus.read_online_cpus(paths)
    if not online:
        raise SourceMissing(SYSFS, f"no online CPUs in {paths.cpus_dir} (is {paths.sysfs} a sysfs?)")
    numa_reading = numa.read_numa_nodes(paths, online_cpus=online)
    devices = _local_numa_nodes(pci.read_pci_devices(paths), numa_reading.numa_nodes)
    statuses = [SourceStatus(source=SYSFS, up=True)]
    warnings = list(numa_reading.warnings)

    gpus: tuple[Gpu, ...] = ()
    if use_nvml:
        try:
            gpus = nvml_session.read_gpus() if nvml_session is not None else nvml.read_gpus(nvml_library)
            statuses.append(SourceStatus(source=nvml.SOURCE, up=True))
        except SourceError as exc:
            statuses.append(_status_of(exc))
        gpus = _place_gpus(gpus, devices)
        devices, affinity_warnings = _nvml_affinity(gpus, devices, numa_reading.numa_nodes)
        warnings += affinity_warnings

    if use_udev if use_udev is not None else paths.is_real_sysfs:
        try:
            names = udev.read_pci_names()
            devices = tuple(
                dataclasses.replace(dev, vendor_name=names[dev.address].vendor, model_name=names[dev.address].model)
                if dev.address in names
                else dev
                for dev in devices
            )
            statuses.append(SourceStatus(source=udev.SOURCE, up=True))
        except SourceError as exc:
            statuses.append(_status_of(exc))

    topology = Topology(
        numa_nodes=memory_kinds.classify(paths, numa_reading.numa_nodes),
        cpus=cpus.read_cpus(paths, online=online),
        pci_devices=devices,
        gpus=gpus,
        warnings=tuple(warnings),
        sources=tuple(statuses),
    )
    return dataclasses.replace(topology, pcie_paths=pcie.pairs(pcie.interesting(topology)))


def _local_numa_nodes(devices: tuple[PciDevice, ...], numa_nodes: tuple[NumaNode, ...]) -> tuple[PciDevice, ...]:
    """A device the firmware gives no NUMA node whose local CPUs all sit on one NUMA node (and not on every
    CPU of a multi-NUMA host) is, by the hardware, on that node: what hwloc shows."""
    placed = []
    for device in devices:
        holding = [n.numa_node for n in numa_nodes if device.local_cpus and n.cpus and device.local_cpus <= n.cpus]
        local = holding[0] if device.numa_node == UNKNOWN_NUMA_NODE and len(holding) == 1 else UNKNOWN_NUMA_NODE
        placed.append(dataclasses.replace(device, local_numa_node=local) if local != UNKNOWN_NUMA_NODE else device)
    return tuple(placed)


def _nvml_affinity(
    gpus: tuple[Gpu, ...], devices: tuple[PciDevice, ...], numa_nodes: tuple[NumaNode, ...]
) -> tuple[tuple[PciDevice, ...], list[str]]:
    """Where sysfs gives a GPU no numa_node, NVML's own affinity is a second witness: its memory affinity (one
    NUMA node) places a GPU its local CPUs could not place, and a disagreement with the local CPUs is warned
    about (the hardware view keeps sysfs's answer, as hwloc and nvidia-smi's CPU affinity do)."""
    by_address = {gpu.pci_address: gpu for gpu in gpus}
    known = {numa.numa_node for numa in numa_nodes}
    warnings = []
    placed = []
    for device in devices:
        gpu = by_address.get(device.address)
        if gpu is None or device.numa_node != UNKNOWN_NUMA_NODE or len(gpu.nvml_numa_nodes) != 1:
            placed.append(device)
            continue
        (nvml_numa,) = gpu.nvml_numa_nodes
        if nvml_numa not in known:
            placed.append(device)
            continue
        if device.local_numa_node == UNKNOWN_NUMA_NODE:
            placed.append(dataclasses.replace(device, local_numa_node=nvml_numa))
            continue
        if device.local_numa_node != nvml_numa:
            warnings.append(
                f"GPU {device.address}: its local CPUs put it on NUMA node {device.local_numa_node}, NVML's memory "
                f"affinity on {nvml_numa} (sysfs numa_node is -1): the hardware view keeps {device.local_numa_node}"
            )
        placed.append(device)
    return tuple(placed), warnings


def _place_gpus(gpus: tuple[Gpu, ...], devices: tuple[PciDevice, ...]) -> tuple[Gpu, ...]:
    by_address = {dev.address: dev for dev in devices}
    placed = []
    for gpu in gpus:
        device = by_address.get(gpu.pci_address)
        numa_node = device.numa_node if device is not None else UNKNOWN_NUMA_NODE
        placed.append(dataclasses.replace(gpu, numa_node=numa_node))
    return tuple(placed)


def _status_of(exc: SourceError) -> SourceStatus:
    """Reported, not logged: the caller logs a source's status when it changes, not on every refresh."""
    available = not isinstance(exc, SourceUnavailable)
    return SourceStatus(source=exc.source, up=False, available=available, reason=exc.reason, message=exc.message)

"""PCIe paths between devices, in the classes `nvidia-smi topo -m` and NCCL use.

From the PCI tree discovery read (each device's root complex and the bridges down to it, sources/pci.py):

* `PIX`: at most one PCIe switch between them (the same switch, the same bridge, or functions of one card);
* `PXB`: several switches, still without the host bridge;
* `PHB`: through the PCIe host bridge (the CPU) of one root complex;
* `NODE`: between root complexes of the same NUMA node;
* `SYS`: across the interconnect between NUMA nodes (or where a device's NUMA node is unknown).

NCCL uses GPUDirect RDMA between a GPU and a NIC only up to `PXB` by default (`NCCL_NET_GDR_LEVEL`), so a
GPU whose nearest NIC is `PHB` or farther moves its network traffic through host memory.
"""

from __future__ import annotations

from collections.abc import Iterable

from exporter.model import UNKNOWN_NUMA_NODE, PciDevice, PciePath, Topology

PATH_CLASSES = ("PIX", "PXB", "PHB", "NODE", "SYS")
GPUDIRECT_RDMA = frozenset({"PIX", "PXB"})  # NCCL's default NCCL_NET_GDR_LEVEL is PXB
_ACCELERATORS = frozenset({"accelerator", "coprocessor"})


def path_class(a: PciDevice, b: PciDevice) -> str:
    """The class of the PCIe path between two devices (symmetric)."""
    if a.pcie_root and a.pcie_root == b.pcie_root:
        return bridge_path_class(a.pcie_bridges, b.pcie_bridges)
    numa_a, numa_b = a.hardware_numa_node, b.hardware_numa_node
    return "NODE" if numa_a == numa_b and numa_a != UNKNOWN_NUMA_NODE else "SYS"


def bridge_path_class(bridges_a: tuple[str, ...], bridges_b: tuple[str, ...]) -> str:
    """Two devices under one root complex, by the bridges above each (root port first). No common bridge:
    the path goes through the host bridge. Below the last common bridge, one more bridge on each side at most
    is one switch (its upstream port common, a downstream port each); more is a hierarchy of switches."""
    common = 0
    for left, right in zip(bridges_a, bridges_b, strict=False):
        if left != right:
            break
        common += 1
    if common == 0:
        return "PHB"
    if len(bridges_a) - common <= 1 and len(bridges_b) - common <= 1:
        return "PIX"
    return "PXB"


def rank(path: str) -> int:
    """PIX 0 ... SYS 4: the lower, the closer."""
    return PATH_CLASSES.index(path)


def interesting(topology: Topology) -> tuple[PciDevice, ...]:
    """The devices paths are listed for: GPUs, NICs and their VFs, accelerators."""
    return tuple(d for d in topology.pci_devices if d.kind in ("gpu", "nic", "vf") or d.category in _ACCELERATORS)


def pairs(devices: Iterable[PciDevice]) -> tuple[PciePath, ...]:
    """The path class of every two of these devices, each pair once, sorted by address. A VF is paired with
    GPUs and accelerators only: to a NIC or another VF its path is its PF's, and hosts carry hundreds."""
    ordered = sorted(devices, key=lambda d: d.address)
    return tuple(
        PciePath(a=left.address, b=right.address, path=path_class(left, right))
        for index, left in enumerate(ordered)
        for right in ordered[index + 1 :]
        if not (_vf_or_nic(left) and _vf_or_nic(right) and "vf" in (left.kind, right.kind))
    )


def _vf_or_nic(device: PciDevice) -> bool:
    return device.kind in ("vf", "nic")


def is_nic(device: PciDevice) -> bool:
    return device.kind == "nic" or (device.kind == "vf" and device.category in ("ethernet", "infiniband"))


def nearest(device: PciDevice, candidates: Iterable[PciDevice]) -> tuple[PciDevice, str] | None:
    """The closest of `candidates` to `device` and the path class, ties by address; None without any."""
    best = min(((rank(path_class(device, other)), other.address, other) for other in candidates
                if other.address != device.address), default=None)  # fmt: skip
    return (best[2], PATH_CLASSES[best[0]]) if best is not None else None


def nearest_nics(topology: Topology) -> tuple[tuple[str, str, str], ...]:
    """(GPU address, nearest NIC address, path class) per GPU; ("", "none") for the NIC where there is none.
    NICs are physical functions: a VF's path is its PF's."""
    nics = [device for device in topology.pci_devices if device.kind == "nic"]
    result = []
    for gpu in (device for device in topology.pci_devices if device.kind == "gpu"):
        found = nearest(gpu, nics)
        result.append((gpu.address, found[0].address, found[1]) if found else (gpu.address, "", "none"))
    return tuple(result)


def closest_gpu_nic(devices: Iterable[PciDevice]) -> PciePath | None:
    """Of the GPUs and NICs (or VFs) among these devices, the closest pair (a: the GPU, b: the NIC), ties by
    address; None without both."""
    held = sorted(devices, key=lambda d: d.address)
    nics = [device for device in held if is_nic(device)]
    best = min(((rank(found[1]), gpu.address, found[0].address, found[1]) for gpu in held
                if gpu.kind == "gpu" and (found := nearest(gpu, nics)) is not None), default=None)  # fmt: skip
    return PciePath(a=best[1], b=best[2], path=best[3]) if best is not None else None

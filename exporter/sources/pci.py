"""PCI devices that matter for NUMA placement, from sysfs: GPUs, NICs, SR-IOV PFs and VFs, RDMA, accelerators.

Reads `<sysfs>/bus/pci/devices/<address>/{class, vendor, device, numa_node, driver, sriov_totalvfs,
sriov_numvfs, virtfn<N>, physfn, net/, infiniband/}`. A `numa_node` of -1 (firmware gave no locality)
is kept as -1: unknown, never guessed; for such a device `local_cpulist` (else the `local_cpus` mask) is
read too, the CPUs the kernel says are close to it, which is where hwloc places it (discovery.py says
which NUMA node that is, as the hardware's view; admission keeps -1, as the kubelet does). Bridges, USB
and storage controllers are left out.
Paths are plain strings here: a large host has hundreds of PCI functions and this runs on every refresh.
"""

from __future__ import annotations

import os
import re

from exporter.cpuset import CpuSet, parse_cpumask, parse_sysfs_cpulist
from exporter.errors import InvalidText
from exporter.model import UNKNOWN_NUMA_NODE, DeviceKind, PciDevice
from exporter.paths import HostPaths
from exporter.sources.files import list_dir, read_sysfs_int, read_sysfs_text

PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")

_CLASS_DISPLAY = 0x03
_CLASS_NETWORK = 0x02
_CLASS_INFINIBAND = 0x0C06
_CLASS_COPROCESSOR = 0x0B40
_CLASS_ACCELERATOR = 0x12


# Vendors whose display controllers are consoles, not compute: BMCs (ASPEED, Matrox G200e, Nuvoton) and
# virtual machines' emulated cards (Cirrus, QEMU/Bochs, VMware SVGA, Red Hat QXL/virtio-gpu, Hyper-V).
CONSOLE_VGA_VENDORS = frozenset({"1a03", "102b", "1050", "1013", "1234", "15ad", "1b36", "1af4", "1414"})

VIRTIO = re.compile(r"^virtio[0-9]+$")
PCIE_ROOT = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}$")


def read_pci_devices(paths: HostPaths) -> tuple[PciDevice, ...]:
    base = os.fspath(paths.pci_devices_dir)
    devices = []
    for address in sorted(name for name in list_dir(base) if PCI_ADDRESS.match(name)):
        device = read_pci_device(f"{base}/{address}", address=address)
        if device is not None:
            devices.append(device)
    return tuple(devices)


def read_pci_device(device_dir: str, *, address: str) -> PciDevice | None:
    """One device, or None when it is not a kind the exporter reports (or vanished while read)."""
    entries = set(list_dir(device_dir))
    if "class" not in entries:
        return None
    class_code = read_sysfs_int(f"{device_dir}/class")
    if class_code is None:
        return None
    net = list_dir(f"{device_dir}/net") if "net" in entries else []
    for virtio in sorted(name for name in entries if VIRTIO.match(name)):
        net += list_dir(f"{device_dir}/{virtio}/net")  # a virtio NIC's interface is under its virtio device
    rdma = list_dir(f"{device_dir}/infiniband") if "infiniband" in entries else []
    physfn = _link_name(f"{device_dir}/physfn") if "physfn" in entries else None
    totalvfs = read_sysfs_int(f"{device_dir}/sriov_totalvfs") if "sriov_totalvfs" in entries else None
    vendor = _hex_id(read_sysfs_text(f"{device_dir}/vendor"))
    category = classify(class_code=class_code, has_net=bool(net), has_rdma=bool(rdma), vendor=vendor)
    if category is None and physfn is None and not totalvfs:
        return None
    numa_node = read_sysfs_int(f"{device_dir}/numa_node") if "numa_node" in entries else None
    if numa_node is None or numa_node < 0:
        numa_node = UNKNOWN_NUMA_NODE
    unknown = numa_node == UNKNOWN_NUMA_NODE
    root, bridges = _pcie_place(device_dir)
    vfs = sorted(
        (name for name in entries if name.startswith("virtfn") and name[6:].isdigit()), key=lambda n: int(n[6:])
    )
    return PciDevice(
        address=address,
        vendor_id=vendor,
        device_id=_hex_id(read_sysfs_text(f"{device_dir}/device")),
        class_code=class_code,
        numa_node=numa_node,
        local_cpus=_local_cpus(device_dir, entries) if unknown else frozenset(),
        kind=device_kind(category=category, is_vf=physfn is not None),
        category=category or "other",
        driver=_link_name(f"{device_dir}/driver") if "driver" in entries else None,
        net_interfaces=tuple(sorted(net)),
        rdma_devices=tuple(sorted(rdma)),
        physfn=physfn,
        sriov_totalvfs=totalvfs,
        sriov_numvfs=read_sysfs_int(f"{device_dir}/sriov_numvfs") if totalvfs is not None else None,
        vfs=tuple(name for name in (_link_name(f"{device_dir}/{vf}") for vf in vfs) if name),
        pcie_root=root,
        pcie_bridges=bridges,
    )


def _local_cpus(device_dir: str, entries: set[str]) -> CpuSet:
    """The device's `local_cpulist` (else its `local_cpus` mask); empty where neither reads."""
    for name, parse in (("local_cpulist", parse_sysfs_cpulist), ("local_cpus", parse_cpumask)):
        if name in entries:
            text = read_sysfs_text(f"{device_dir}/{name}")
            try:
                return parse(text) if text is not None else frozenset()
            except InvalidText:
                return frozenset()
    return frozenset()


def _pcie_place(device_dir: str) -> tuple[str, tuple[str, ...]]:
    """The root complex and the bridges below it, from the device's real sysfs path
    (`/sys/devices/pci0000:00/0000:00:03.0/0000:05:00.0/0000:06:08.0/0000:07:00.0`: root pci0000:00, bridges
    00:03.0 (root port), 05:00.0 and 06:08.0 (a switch's upstream and downstream ports)), as hwloc and NCCL
    read the PCI tree. A device under no `pci<domain>:<bus>` (virtual, or a tree without links) has neither."""
    parts = os.path.realpath(device_dir).split("/")
    root = next((index for index, part in enumerate(parts) if PCIE_ROOT.match(part)), None)
    if root is None:
        return "", ()
    below = parts[root + 1 : -1]
    bridges = []
    for part in below:
        if not PCI_ADDRESS.match(part):
            break  # a device under a non-PCI parent (a virtio bus, a platform device): the chain ends here
        bridges.append(part)
    return parts[root], tuple(bridges)


def classify(*, class_code: int, has_net: bool, has_rdma: bool, vendor: str = "") -> str | None:
    """A device's category from its PCI class (24-bit `class` file value), or None if not reported. A display
    controller of a BMC or a virtual machine's emulated card (ASPEED, Matrox, ...) is not a GPU: "display"."""
    base = class_code >> 16
    base_sub = class_code >> 8
    if base == _CLASS_DISPLAY:
        return "display" if vendor in CONSOLE_VGA_VENDORS else "gpu"
    if base_sub == _CLASS_INFINIBAND or has_rdma:
        return "infiniband"
    if base == _CLASS_NETWORK or has_net:
        return "ethernet"
    if base == _CLASS_ACCELERATOR:
        return "accelerator"
    if base_sub == _CLASS_COPROCESSOR:
        return "coprocessor"
    return None


def device_kind(*, category: str | None, is_vf: bool) -> DeviceKind:
    if is_vf:
        return "vf"
    if category == "gpu":
        return "gpu"
    if category in ("ethernet", "infiniband"):
        return "nic"
    return "other"


def _hex_id(text: str | None) -> str:
    if not text:
        return ""
    value = text.strip().lower()
    return value[2:] if value.startswith("0x") else value


def _link_name(link: str) -> str | None:
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None

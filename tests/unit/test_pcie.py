"""Path classes (exporter/hardware/pcie.py) for the shapes hwloc's captures do not hold: switches under switches (PXB),
a device under one switch beside a deeper one, devices of unknown NUMA node, and the closest GPU-NIC pair."""

from __future__ import annotations

from exporter.hardware.pcie import bridge_path_class, closest_gpu_nic, path_class
from exporter.model import PciDevice

ROOT_PORT, UP, DOWN_1, DOWN_2 = "0000:17:00.0", "0000:18:00.0", "0000:19:00.0", "0000:19:01.0"


def device(address: str, *, kind: str = "gpu", root: str = "pci0000:17", bridges: tuple[str, ...] = (),
           numa: int = 0) -> PciDevice:  # fmt: skip
    category = {"gpu": "gpu", "nic": "ethernet", "vf": "ethernet"}[kind]
    return PciDevice(address=address, vendor_id="", device_id="", class_code=0, numa_node=numa, kind=kind,  # type: ignore[arg-type]
                     category=category, pcie_root=root, pcie_bridges=bridges)  # fmt: skip


def test_bridge_classes() -> None:
    assert bridge_path_class((), ()) == "PHB"  # both on the root bus
    assert bridge_path_class((ROOT_PORT,), ("0000:17:01.0",)) == "PHB"  # two root ports
    assert bridge_path_class((ROOT_PORT,), (ROOT_PORT,)) == "PIX"  # functions of one card
    assert bridge_path_class((ROOT_PORT, UP, DOWN_1), (ROOT_PORT, UP, DOWN_2)) == "PIX"  # one switch
    # A second switch below DOWN_1: two switches between them, no host bridge.
    deeper = (ROOT_PORT, UP, DOWN_1, "0000:1a:00.0", "0000:1b:00.0")
    assert bridge_path_class(deeper, (ROOT_PORT, UP, DOWN_2)) == "PXB"
    assert bridge_path_class((ROOT_PORT, UP, DOWN_2), deeper) == "PXB"  # symmetric


def test_root_complexes_and_numa_nodes() -> None:
    gpu = device("0000:1a:00.0", bridges=(ROOT_PORT,))
    assert path_class(gpu, device("0000:3b:00.0", kind="nic", root="pci0000:3a")) == "NODE"
    assert path_class(gpu, device("0000:af:00.0", kind="nic", root="pci0000:ae", numa=1)) == "SYS"
    # A NUMA node nobody knows is never called the same: SYS.
    unknown = device("0000:c1:00.0", root="pci0000:c0", numa=-1)
    assert path_class(unknown, device("0000:d1:00.0", root="pci0000:d0", numa=-1)) == "SYS"


def test_the_closest_gpu_nic_pair_of_what_a_container_holds() -> None:
    gpus = [device("0000:1a:00.0", bridges=(ROOT_PORT, UP, DOWN_1)), device("0000:8a:00.0", root="pci0000:85",
            bridges=("0000:85:00.0",), numa=1)]  # fmt: skip
    vf = device("0000:3b:02.0", kind="vf", bridges=(ROOT_PORT, UP, DOWN_2))
    far = device("0000:af:02.0", kind="vf", root="pci0000:ae", bridges=("0000:ae:00.0",), numa=1)
    closest = closest_gpu_nic([*gpus, far, vf])
    assert closest is not None
    assert (closest.a, closest.b, closest.path) == ("0000:1a:00.0", "0000:3b:02.0", "PIX")
    only_far = closest_gpu_nic([gpus[0], far])
    assert only_far is not None
    assert only_far.path == "SYS"
    assert closest_gpu_nic(gpus) is None  # no NIC: nothing to judge

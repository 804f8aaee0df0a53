"""Discovery on host trees built for the edge cases real machines have."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.errors import SourceMissing
from exporter.hardware.discovery import discover
from exporter.paths import HostPaths
from tests.hosttree import HostTree


def topology_of(host: HostTree):  # type: ignore[no-untyped-def]
    return discover(host.paths, use_nvml=False, use_udev=False)


def test_offline_cpus_are_not_reported(host: HostTree) -> None:
    host.cpus(present=range(8), online=[0, 1, 2, 3, 5, 6])
    host.numa_node(0, cpus=range(4), memory_kb=1 << 20, distances=[10, 20])
    host.numa_node(1, cpus=range(4, 8), memory_kb=1 << 20, distances=[20, 10])
    topology = topology_of(host)
    assert [numa.cpus for numa in topology.numa_nodes] == [{0, 1, 2, 3}, {5, 6}]
    assert [cpu.cpu for cpu in topology.cpus] == [0, 1, 2, 3, 5, 6]


def test_memory_only_node_and_missing_node_zero(host: HostTree) -> None:
    host.cpus(present=range(4))
    host.numa_node(1, cpus=range(4), memory_kb=8 << 20, free_kb=1 << 20, distances=[10, 30])
    host.numa_node(3, memory_kb=32 << 20, free_kb=32 << 20, distances=[30, 10])
    topology = topology_of(host)
    assert topology.numa_node_ids == (1, 3)
    cxl = topology.numa_nodes[1]
    assert cxl.cpus == frozenset()
    assert cxl.memory_total_bytes == 32 << 30
    assert cxl.memory_free_bytes == 32 << 30
    assert dict(topology.numa_nodes[0].distances) == {1: 10, 3: 30}
    assert dict(cxl.distances) == {1: 30, 3: 10}
    assert topology.warnings == ()


def test_distance_row_of_the_wrong_length_is_dropped_with_a_warning(host: HostTree) -> None:
    host.cpus(present=range(2))
    host.numa_node(0, cpus=[0], memory_kb=1024, distances=[10, 20, 30])
    host.numa_node(1, cpus=[1], memory_kb=1024, distances=[20, 10])
    topology = topology_of(host)
    assert dict(topology.numa_nodes[0].distances) == {}
    assert any("distance row has 3 entries" in warning for warning in topology.warnings)


def test_hugepage_size_on_some_nodes_only(host: HostTree) -> None:
    host.cpus(present=range(4))
    host.numa_node(0, cpus=[0, 1], memory_kb=1 << 20, hugepages={2048: (512, 100), 1048576: (4, 3)})
    host.numa_node(1, cpus=[2, 3], memory_kb=1 << 20, hugepages={2048: (256, 256)})
    topology = topology_of(host)
    first, second = topology.numa_nodes
    assert [(p.size_bytes, p.total_pages, p.free_pages) for p in first.hugepages] == [
        (2 << 20, 512, 100),
        (1 << 30, 4, 3),
    ]
    assert [(p.size_bytes, p.total_pages, p.free_pages) for p in second.hugepages] == [(2 << 20, 256, 256)]
    assert second.hugepage_pool(1 << 30) is None


def test_numastat_counters(host: HostTree) -> None:
    host.cpus(present=[0])
    host.numa_node(0, cpus=[0], memory_kb=1024, numastat={"numa_hit": 42, "numa_miss": 7, "other_node": 3})
    assert dict(topology_of(host).numa_nodes[0].numastat) == {"numa_hit": 42, "numa_miss": 7, "other_node": 3}


def test_pci_unknown_numa_vfs_and_device_kinds(host: HostTree) -> None:
    host.cpus(present=range(2))
    host.numa_node(0, cpus=[0], memory_kb=1024)
    host.numa_node(1, cpus=[1], memory_kb=1024)
    host.pci_device("0000:17:00.0", class_code=0x030200, numa_node=-1, vendor="0x10de", device="0x2330")
    host.pci_device(
        "0000:3b:00.0",
        class_code=0x020000,
        numa_node=1,
        driver="mlx5_core",
        net=["ens1f0"],
        rdma=["mlx5_0"],
        totalvfs=8,
    )
    host.pci_device("0000:3b:00.2", class_code=0x020000, numa_node=1, driver="mlx5_core", physfn="0000:3b:00.0")
    host.pci_device("0000:3b:00.3", class_code=0x020000, numa_node=1, driver="mlx5_core", physfn="0000:3b:00.0")
    host.pci_device("0000:5e:00.0", class_code=0x120000, numa_node=None, vendor="0x1da3", device="0x1020")
    host.pci_device("0000:00:1f.0", class_code=0x060100, numa_node=0)  # an ISA bridge: not reported
    devices = {dev.address: dev for dev in topology_of(host).pci_devices}
    assert sorted(devices) == ["0000:17:00.0", "0000:3b:00.0", "0000:3b:00.2", "0000:3b:00.3", "0000:5e:00.0"]
    gpu = devices["0000:17:00.0"]
    assert (gpu.kind, gpu.numa_node, gpu.vendor_id, gpu.device_id) == ("gpu", -1, "10de", "2330")
    pf = devices["0000:3b:00.0"]
    assert (pf.kind, pf.category, pf.numa_node) == ("nic", "infiniband", 1)
    assert (pf.sriov_totalvfs, pf.sriov_numvfs, pf.vfs) == (8, 2, ("0000:3b:00.2", "0000:3b:00.3"))
    assert (pf.net_interfaces, pf.rdma_devices, pf.driver) == (("ens1f0",), ("mlx5_0",), "mlx5_core")
    vf = devices["0000:3b:00.3"]
    assert (vf.kind, vf.physfn, vf.numa_node) == ("vf", "0000:3b:00.0", 1)
    accelerator = devices["0000:5e:00.0"]
    assert (accelerator.kind, accelerator.category, accelerator.numa_node) == ("other", "accelerator", -1)


def test_kernel_without_numa_is_one_node(host: HostTree) -> None:
    host.cpus(present=range(4))
    host.node_dir.rmdir()
    host.write("proc/meminfo", "MemTotal:       16384 kB\nMemFree:         8192 kB\n")
    topology = topology_of(host)
    assert topology.numa_node_ids == (0,)
    assert topology.numa_nodes[0].cpus == {0, 1, 2, 3}
    assert topology.numa_nodes[0].memory_total_bytes == 16384 * 1024
    assert topology.warnings


def test_an_empty_sysfs_is_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing, match="no devices/system/cpu"):
        discover(HostPaths(sysfs=tmp_path), use_nvml=False, use_udev=False)


def test_cpu_topology_cores_sockets_siblings(machine: HostTree) -> None:
    topology = topology_of(machine)
    by_id = {cpu.cpu: cpu for cpu in topology.cpus}
    assert by_id[3].siblings == {3, 19}
    assert (by_id[19].core_id, by_id[19].socket_id) == (3, 0)
    assert (by_id[9].core_id, by_id[9].socket_id) == (9, 1)
    assert len({(cpu.socket_id, cpu.core_id) for cpu in topology.cpus}) == 16


def test_numbers_are_ascii_digits_only() -> None:
    """Found by the fuzzer: str.isdigit() accepts '¹', which int() refuses; such a line is skipped."""
    from exporter.sources.numa import parse_node_meminfo, parse_numastat

    assert parse_numastat("numa_hit 12\nnuma_miss ¹\nother_node ٣\n") == {"numa_hit": 12}
    assert parse_node_meminfo("Node 0 MemTotal:       ¹ kB\n") == parse_node_meminfo("")


def test_a_bmc_or_virtual_console_is_not_a_gpu(tmp_path: Path) -> None:
    """ASPEED and Matrox BMC consoles, a QEMU VGA: display controllers, not GPUs; NVIDIA's is a GPU."""
    from exporter.hardware.discovery import discover
    from tests.hosttree import fixture_machine

    host = fixture_machine(tmp_path / "m")
    host.pci_device("0000:05:00.0", class_code=0x030000, numa_node=0, vendor="0x1a03", device="0x2000")
    host.pci_device("0000:09:03.0", class_code=0x030000, numa_node=-1, vendor="0x102b", device="0x0532")
    host.pci_device("0000:00:02.0", class_code=0x030000, numa_node=0, vendor="0x1234", device="0x1111")
    kinds = {d.address: (d.kind, d.category) for d in discover(host.paths, use_nvml=False, use_udev=False).pci_devices}
    assert kinds["0000:05:00.0"] == ("other", "display")
    assert kinds["0000:09:03.0"] == ("other", "display")
    assert kinds["0000:00:02.0"] == ("other", "display")
    assert kinds["0000:1a:00.0"] == ("gpu", "gpu")


def test_a_virtio_nic_has_its_interface(tmp_path: Path) -> None:
    """virtio-net's interface is under the PCI device's virtioN child, not directly under it."""
    from exporter.hardware.discovery import discover
    from tests.hosttree import fixture_machine

    host = fixture_machine(tmp_path / "m")
    device = host.pci_device("0000:00:03.0", class_code=0x020000, numa_node=0, vendor="0x1af4", device="0x1000",
                             driver="virtio-pci")  # fmt: skip
    (device / "virtio0" / "net" / "eth0").mkdir(parents=True)
    found = {d.address: d for d in discover(host.paths, use_nvml=False, use_udev=False).pci_devices}
    assert found["0000:00:03.0"].net_interfaces == ("eth0",)
    assert found["0000:00:03.0"].kind == "nic"


def test_a_device_without_numa_node_is_placed_by_its_local_cpus_as_the_hardware_view(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """numa_node -1 with all local CPUs on NUMA 1: shown (table, device_info's hardware_numa_node, doctor)
    as the hardware's view, while numa_node, and so admission, stays -1. Local CPUs on both NUMA nodes
    place nothing."""
    from exporter.cli import main
    from tests.hosttree import fixture_machine

    host = fixture_machine(tmp_path / "m")
    host.pci_device("0000:c1:00.0", class_code=0x030200, numa_node=-1, vendor="0x10de", device="0x2330",
                    local_cpulist="8-15,24-31")  # fmt: skip
    host.pci_device("0000:c2:00.0", class_code=0x030200, numa_node=-1, vendor="0x10de", device="0x2330",
                    local_cpulist="0-31")  # fmt: skip
    found = {d.address: d for d in discover(host.paths, use_nvml=False, use_udev=False).pci_devices}
    assert (found["0000:c1:00.0"].numa_node, found["0000:c1:00.0"].hardware_numa_node) == (-1, 1)
    assert (found["0000:c2:00.0"].numa_node, found["0000:c2:00.0"].hardware_numa_node) == (-1, -1)
    assert found["0000:1a:00.0"].local_cpus == frozenset(), "read only where numa_node is unknown"

    argv = ["--no-nvml", "--path.sysfs", str(host.sys), "--path.kubelet", str(tmp_path / "none")]
    assert main(["snapshot", "--format", "metrics", *argv]) == 0
    metrics = capsys.readouterr().out
    line = next(x for x in metrics.splitlines() if x.startswith("numa_topology_device_info") and "c1:00.0" in x)
    assert 'numa_node="-1"' in line
    assert 'hardware_numa_node="1"' in line
    other = next(x for x in metrics.splitlines() if x.startswith("numa_topology_device_info") and "c2:00.0" in x)
    assert 'hardware_numa_node="-1"' in other
    assert main(["snapshot", *argv]) == 0
    table = capsys.readouterr().out
    assert next(x for x in table.splitlines() if x.startswith("0000:c1:00.0")).split()[3:6] == ["-1", "(CPUs:", "1)"]
    main(["doctor", *argv])
    doctor = capsys.readouterr().out
    assert "the firmware gives no NUMA node for 0000:c1:00.0 on NUMA 1, but their local CPUs are all there" in doctor
    assert "0000:c2:00.0 on" not in doctor

    # A container pinned to NUMA 1's CPUs 9-10 holding that GPU: the audit (hardware) calls it aligned (the GPU
    # is on NUMA 1 by its local CPUs), while admission, like the kubelet and its plugin, places the GPU nowhere.
    from tests.kubelet_files import cpu_state, device_entry, device_state, fixture_config, install

    pinned = {"uid-1": {"app": [9, 10]}}
    install(host, cpu=cpu_state(default=[c for c in range(32) if c not in (9, 10)], entries=pinned),
            devices=device_state([device_entry("uid-1", "app", "nvidia.com/gpu", {-1: ["0000:c1:00.0"]})],
                                 {"nvidia.com/gpu": ["0000:c1:00.0"]}),
            config=fixture_config(memory="None"))  # fmt: skip
    kubelet = ["--no-nvml", "--path.sysfs", str(host.sys), "--path.kubelet", str(host.kubelet)]
    assert main(["snapshot", "--format", "metrics", *kubelet]) == 0
    metrics = capsys.readouterr().out
    assert re.search(r'^numa_topology_container_aligned\{.*pod_uid="uid-1".*\} 1\.0$', metrics, re.MULTILINE)
    gpus = [
        x for x in metrics.splitlines() if x.startswith("numa_topology_resource_capacity") and "nvidia.com/gpu" in x
    ]
    assert gpus
    assert all('numa_node="1"' not in x for x in gpus), gpus

"""Small helpers that write fake host trees (sysfs, procfs, kubelet dir) for edge cases.

A tree looks like the real thing to the exporter: `<root>/sys/devices/system/{cpu,node}`, PCI devices
under `<root>/sys/devices/pci0000:00/` linked from `<root>/sys/bus/pci/devices/`, `<root>/proc`,
and `<root>/kubelet` as the kubelet root directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from exporter.cpuset import format_cpuset, parse_cpuset
from exporter.paths import HostPaths

NUMASTAT_FIELDS = ("numa_hit", "numa_miss", "numa_foreign", "interleave_hit", "local_node", "other_node")


class HostTree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        self.node_dir = self.sys / "devices" / "system" / "node"
        self.cpu_dir = self.sys / "devices" / "system" / "cpu"
        self.pci_root = self.sys / "devices" / "pci0000:00"
        self.pci_links = self.sys / "bus" / "pci" / "devices"
        self.kubelet = root / "kubelet"
        for directory in (self.node_dir, self.cpu_dir, self.pci_root, self.pci_links, root / "proc", self.kubelet):
            directory.mkdir(parents=True, exist_ok=True)

    @property
    def paths(self) -> HostPaths:
        return HostPaths(
            sysfs=self.sys,
            procfs=self.root / "proc",
            kubelet_dir=self.kubelet,
            pod_logs=self.root / "pods",
            cgroup=self.sys / "fs" / "cgroup",
            container_logs=self.root / "containers",
        )

    def write(self, relative: str | Path, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def cpus(
        self,
        *,
        present: Iterable[int],
        online: Iterable[int] | None = None,
        core_of: Mapping[int, int] | None = None,
        socket_of: Mapping[int, int] | None = None,
    ) -> None:
        present_set = sorted(present)
        online_set = sorted(online if online is not None else present_set)
        (self.cpu_dir / "online").write_text(format_cpuset(online_set) + "\n")
        (self.cpu_dir / "present").write_text(format_cpuset(present_set) + "\n")
        cores = core_of or {cpu: cpu for cpu in present_set}
        sockets = socket_of or dict.fromkeys(present_set, 0)
        for cpu in present_set:
            topology = self.cpu_dir / f"cpu{cpu}" / "topology"
            topology.mkdir(parents=True, exist_ok=True)
            (self.cpu_dir / f"cpu{cpu}" / "online").write_text("1\n" if cpu in online_set else "0\n")
            if cpu not in online_set:
                continue
            siblings = [other for other in present_set if cores[other] == cores[cpu] and sockets[other] == sockets[cpu]]
            (topology / "core_id").write_text(f"{cores[cpu]}\n")
            (topology / "physical_package_id").write_text(f"{sockets[cpu]}\n")
            (topology / "thread_siblings_list").write_text(format_cpuset(siblings) + "\n")

    def numa_node(
        self,
        numa: int,
        *,
        cpus: Iterable[int] = (),
        memory_kb: int = 0,
        free_kb: int | None = None,
        hugepages: Mapping[int, tuple[int, int]] | None = None,
        distances: Iterable[int] | None = None,
        numastat: Mapping[str, int] | None = None,
    ) -> None:
        """`hugepages` maps a page size in kB to (total pages, free pages)."""
        node = self.node_dir / f"node{numa}"
        node.mkdir(parents=True, exist_ok=True)
        (node / "cpulist").write_text(format_cpuset(cpus) + "\n")
        free = memory_kb // 2 if free_kb is None else free_kb
        (node / "meminfo").write_text(
            f"Node {numa} MemTotal:       {memory_kb} kB\n"
            f"Node {numa} MemFree:        {free} kB\n"
            f"Node {numa} MemUsed:        {memory_kb - free} kB\n"
            f"Node {numa} HugePages_Total:     0\n"
        )
        for size_kb, (total, available) in (hugepages or {}).items():
            pool = node / "hugepages" / f"hugepages-{size_kb}kB"
            pool.mkdir(parents=True, exist_ok=True)
            (pool / "nr_hugepages").write_text(f"{total}\n")
            (pool / "free_hugepages").write_text(f"{available}\n")
            (pool / "surplus_hugepages").write_text("0\n")
        if distances is not None:
            (node / "distance").write_text(" ".join(map(str, distances)) + "\n")
        stats = numastat if numastat is not None else dict.fromkeys(NUMASTAT_FIELDS, 1000 * (numa + 1))
        (node / "numastat").write_text("".join(f"{key} {value}\n" for key, value in stats.items()))

    def pci_device(
        self,
        address: str,
        *,
        class_code: int,
        numa_node: int | None,
        vendor: str = "0x8086",
        device: str = "0x1572",
        driver: str | None = None,
        net: Iterable[str] = (),
        rdma: Iterable[str] = (),
        totalvfs: int | None = None,
        physfn: str | None = None,
        local_cpulist: str | None = None,
        root: str = "pci0000:00",
        bridges: Iterable[str] = (),
    ) -> Path:
        """A PCI function under root complex `root`, below `bridges` (root port first; a VF goes where its PF
        is), as `/sys/devices/<root>/<bridge>/.../<address>` linked from bus/pci/devices."""
        if physfn is not None:
            directory = (self.pci_links / physfn).resolve().parent / address
        else:
            directory = self.sys / "devices" / root
            for bridge in bridges:
                directory /= bridge
            directory /= address
        directory.mkdir(parents=True, exist_ok=True)
        if local_cpulist is not None:
            (directory / "local_cpulist").write_text(f"{local_cpulist}\n")
        (directory / "class").write_text(f"0x{class_code:06x}\n")
        (directory / "vendor").write_text(f"{vendor}\n")
        (directory / "device").write_text(f"{device}\n")
        if numa_node is not None:
            (directory / "numa_node").write_text(f"{numa_node}\n")
        if driver:
            drivers = self.sys / "bus" / "pci" / "drivers" / driver
            drivers.mkdir(parents=True, exist_ok=True)
            _symlink(directory / "driver", drivers)
        for name in net:
            (directory / "net" / name).mkdir(parents=True, exist_ok=True)
        for name in rdma:
            (directory / "infiniband" / name).mkdir(parents=True, exist_ok=True)
        if totalvfs is not None:
            (directory / "sriov_totalvfs").write_text(f"{totalvfs}\n")
            (directory / "sriov_numvfs").write_text("0\n")
        if physfn is not None:
            parent = (self.pci_links / physfn).resolve()
            _symlink(directory / "physfn", parent)
            index = len([name for name in os.listdir(parent) if name.startswith("virtfn")])
            _symlink(parent / f"virtfn{index}", directory)
            (parent / "sriov_numvfs").write_text(f"{index + 1}\n")
        _symlink(self.pci_links / address, directory)
        return directory

    def kubelet_view(self) -> None:
        """What the real kubelet (cadvisor) reads besides what the exporter reads: each NUMA node's `cpuN`
        links, /proc/cpuinfo and /proc/meminfo (cadvisor's regexps need MemTotal, SwapTotal and the
        hugepage lines). For `start-node`, which bind-mounts these over the host's in the kubelet's namespace."""
        cpus: dict[int, tuple[int, int]] = {}
        total_kb = 0
        for node in sorted(self.node_dir.glob("node[0-9]*")):
            for cpu in parse_cpuset((node / "cpulist").read_text().strip()):
                _symlink(node / f"cpu{cpu}", self.cpu_dir / f"cpu{cpu}")
                topology = self.cpu_dir / f"cpu{cpu}" / "topology"
                cpus[cpu] = (
                    int((topology / "physical_package_id").read_text()),
                    int((topology / "core_id").read_text()),
                )
            for line in (node / "meminfo").read_text().splitlines():
                if "MemTotal:" in line:
                    total_kb += int(line.split()[3])
        nodes = format_cpuset(int(node.name[4:]) for node in self.node_dir.glob("node[0-9]*"))
        for name in ("online", "possible", "has_memory", "has_cpu"):
            (self.node_dir / name).write_text(nodes + "\n")
        self.write(
            "proc/cpuinfo",
            "\n".join(
                f"processor\t: {cpu}\nvendor_id\t: GenuineIntel\nmodel name\t: simulated\ncpu MHz\t\t: 2000.000\n"
                f"physical id\t: {socket}\ncore id\t\t: {core}\nflags\t\t: fpu\n"
                for cpu, (socket, core) in sorted(cpus.items())
            ),
        )
        self.write(
            "proc/meminfo",
            f"MemTotal:       {total_kb} kB\nMemFree:        {total_kb // 2} kB\nMemAvailable:   {total_kb // 2} kB\n"
            "SwapTotal:             0 kB\nSwapFree:              0 kB\nHugePages_Total:       0\n"
            "HugePages_Free:        0\nHugepagesize:       2048 kB\n",
        )


def _symlink(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


def fixture_machine(root: Path, *, hugepages: bool = True) -> HostTree:
    """The 2-NUMA, 32-CPU machine the kubelet fixtures assume (tests/fixtures/kubelet/README.md).

    NUMA 0 = CPUs 0-7,16-23, NUMA 1 = 8-15,24-31 (HT siblings i / i+16); 64 GiB, 4 x 1Gi and 512 x 2Mi
    hugepages per NUMA node; 2 GPUs per NUMA node (PCI 0000:1a/1b on NUMA 0, 0000:8a/8b on NUMA 1) and one
    SR-IOV NIC per NUMA node with 4 VFs (0000:3b:02.0-3 on NUMA 0, 0000:af:02.0-3 on NUMA 1).
    """
    tree = HostTree(root)
    cpus = range(32)
    tree.cpus(present=cpus, core_of={cpu: cpu % 16 for cpu in cpus}, socket_of={cpu: (cpu % 16) // 8 for cpu in cpus})
    gib_kb = 1 << 20
    for numa, cpu_ids in ((0, [*range(8), *range(16, 24)]), (1, [*range(8, 16), *range(24, 32)])):
        tree.numa_node(
            numa,
            cpus=cpu_ids,
            memory_kb=64 * gib_kb,
            hugepages={1048576: (4, 4), 2048: (512, 512)} if hugepages else {},
            distances=[10, 21] if numa == 0 else [21, 10],
        )
    switch = ("0000:17:00.0", "0000:18:00.0")
    for address, numa, complex_, bridges in (
        ("0000:1a:00.0", 0, "pci0000:17", (*switch, "0000:19:00.0")),
        ("0000:1b:00.0", 0, "pci0000:17", (*switch, "0000:19:01.0")),
        ("0000:8a:00.0", 1, "pci0000:85", ("0000:85:00.0",)),
        ("0000:8b:00.0", 1, "pci0000:85", ("0000:85:01.0",)),
    ):
        tree.pci_device(address, class_code=0x030200, numa_node=numa, vendor="0x10de", device="0x2330",
                        driver="nvidia", root=complex_, bridges=bridges)  # fmt: skip
    for pf, numa, complex_, bridges in (
        ("0000:3b:00.0", 0, "pci0000:17", (*switch, "0000:19:02.0")),
        ("0000:af:00.0", 1, "pci0000:ae", ("0000:ae:00.0",)),
    ):
        tree.pci_device(pf, class_code=0x020000, numa_node=numa, driver="i40e", net=[f"ens{numa}f0"], totalvfs=64,
                        root=complex_, bridges=bridges)  # fmt: skip
        bus = pf[:8]
        for function in range(4):
            tree.pci_device(
                f"{bus}02.{function}",
                class_code=0x020000,
                numa_node=numa,
                device="0x154c",
                driver="iavf",
                physfn=pf,
            )
    return tree


FIXTURE_GPUS = (
    ("GPU-1b7c9a2e-0000-0000-0000-000000000000", "00000000:1A:00.0"),
    ("GPU-1b7c9a2e-0000-0000-0000-000000000001", "00000000:1B:00.0"),
    ("GPU-1b7c9a2e-0000-0000-0000-000000000002", "00000000:8A:00.0"),
    ("GPU-1b7c9a2e-0000-0000-0000-000000000003", "00000000:8B:00.0"),
)


def fixture_nvml_config(path: Path) -> Path:
    """A fake-NVML configuration listing the fixture machine's four GPUs (80 GiB H100s, MIG off)."""
    lines = [f"gpu {uuid} NVIDIA_H100_80GB_HBM3 85899345920 {bus} 0" for uuid, bus in FIXTURE_GPUS]
    path.write_text("\n".join(lines) + "\n")
    return path

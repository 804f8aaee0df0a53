"""`verify`: run inside any container, it checks the container's own NUMA placement the way the seeds check
it by hand (`Cpus_allowed_list`, `Mems_allowed_list`, `numastat -p`, the NUMA node of each GPU and NIC) and
gives one verdict a person can act on, with the likely cause from the seeds' troubleshooting list.

Aligned: the CPUs the process may run on, the NUMA nodes it may allocate from, the GPUs it sees (NVML) and
its network interfaces' devices all sit on one NUMA node, at most `REMOTE_LIMIT` of its resident memory is on
other NUMA nodes, and where it sees both GPUs and NICs, the closest pair is near enough for GPUDirect RDMA
(PIX or PXB: NCCL's default). A machine with one NUMA node is aligned by construction. Devices of unknown NUMA node
(-1) are listed but judge nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from exporter.cpuset import format_cpuset
from exporter.hardware.discovery import discover
from exporter.hardware.pcie import GPUDIRECT_RDMA, closest_gpu_nic
from exporter.model import UNKNOWN_NUMA_NODE, Topology
from exporter.paths import HostPaths
from exporter.sources.process import ProcessPlacement, read_process

REMOTE_LIMIT = 0.10


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    aligned: bool
    numa_nodes: int  # on this machine
    cpus: str
    cpu_numa_nodes: list[int]
    mems: list[int]
    memory_bytes: dict[int, int]
    remote_memory_ratio: float
    gpus: list[dict[str, object]] = field(default_factory=list)
    interfaces: list[dict[str, object]] = field(default_factory=list)
    # The closest PCIe path between a GPU and a network interface it sees, as nvidia-smi topo -m names it,
    # and whether NCCL's default would use GPUDirect RDMA over it (PIX, PXB); None without both.
    gpu_nic_path: dict[str, object] | None = None
    cgroups: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what spans which NUMA nodes, and the likely cause

    def text(self) -> str:
        head = "aligned" if self.aligned else "NOT aligned"
        lines = [
            f"{head}: CPUs {self.cpus} (NUMA {format_cpuset(frozenset(self.cpu_numa_nodes)) or '-'}), "
            f"memory allowed on NUMA {format_cpuset(frozenset(self.mems)) or '-'}, "
            f"{self.remote_memory_ratio:.0%} of resident memory on other NUMA nodes"
        ]
        if self.numa_nodes == 1:
            lines.append("  this machine has one NUMA node: every placement is local")
        lines += [f"  GPU {g['uuid']} {g['pci_address']} on NUMA {g['numa_node']}" for g in self.gpus]
        lines += [f"  interface {i['name']} {i['pci_address']} on NUMA {i['numa_node']}" for i in self.interfaces]
        if self.gpu_nic_path is not None:
            path = self.gpu_nic_path
            rdma = "GPUDirect RDMA" if path["gpudirect_rdma"] else "no GPUDirect RDMA under NCCL's default"
            lines.append(f"  GPU {path['gpu_pci_address']} - NIC {path['nic_pci_address']}: {path['path']} ({rdma})")
        lines += [f"- {problem}" for problem in self.problems]
        return "\n".join(lines) + "\n"


def verify(paths: HostPaths, *, use_nvml: bool = True, pid: str = "self") -> Verdict:
    topology = discover(paths, use_nvml=use_nvml, use_udev=False)
    process = read_process(paths.procfs, pid)
    return judge(topology, process, interfaces=_interfaces(paths))


def _interfaces(paths: HostPaths) -> list[str]:
    """The network interfaces this container's network namespace has (its sysfs shows only those)."""
    try:
        return sorted(os.listdir(paths.sysfs / "class" / "net"))
    except OSError:
        return []


def judge(topology: Topology, process: ProcessPlacement, *, interfaces: list[str]) -> Verdict:
    numa_of_cpu = topology.numa_node_of_cpu()
    cpu_numa = sorted({numa_of_cpu.get(cpu, UNKNOWN_NUMA_NODE) for cpu in process.cpus})
    total = sum(process.memory.values())
    remote = sum(size for numa, size in process.memory.items() if numa not in cpu_numa)
    ratio = remote / total if total else 0.0
    gpus = [{"uuid": g.uuid, "pci_address": g.pci_address, "numa_node": g.numa_node} for g in topology.gpus]
    nics = [
        {"name": name, "pci_address": device.address, "numa_node": device.numa_node}
        for device in topology.pci_devices
        for name in device.net_interfaces
        if name in interfaces
    ]
    problems = []
    if len(topology.numa_nodes) > 1:
        problems = _problems(cpu_numa=cpu_numa, mems=sorted(process.mems), ratio=ratio, gpus=gpus, nics=nics)
    seen = {gpu.pci_address for gpu in topology.gpus} | {str(nic["pci_address"]) for nic in nics}
    closest = closest_gpu_nic(device for device in topology.pci_devices if device.address in seen)
    gpu_nic = None
    if closest is not None:
        gpu_nic = {"gpu_pci_address": closest.a, "nic_pci_address": closest.b, "path": closest.path,
                   "gpudirect_rdma": closest.path in GPUDIRECT_RDMA}  # fmt: skip
        if closest.path not in GPUDIRECT_RDMA:
            problems.append(
                f"the closest GPU and NIC ({closest.a}, {closest.b}) are {closest.path} apart: NCCL uses no "
                "GPUDirect RDMA beyond PXB by default, so network traffic goes through host memory; ask for a NIC "
                "or VF under the GPU's PCIe switch (the SR-IOV device plugin does not look at PCIe topology: a DRA "
                "driver's resource.kubernetes.io/pcieRoot attribute can be matched in the claim)"
            )
    return Verdict(
        aligned=not problems,
        numa_nodes=len(topology.numa_nodes),
        cpus=format_cpuset(process.cpus),
        cpu_numa_nodes=cpu_numa,
        mems=sorted(process.mems),
        memory_bytes=dict(process.memory),
        remote_memory_ratio=ratio,
        gpus=gpus,
        interfaces=nics,
        gpu_nic_path=gpu_nic,
        cgroups=list(process.cgroups),
        problems=problems,
    )


def _problems(
    *, cpu_numa: list[int], mems: list[int], ratio: float, gpus: list[dict[str, object]], nics: list[dict[str, object]]
) -> list[str]:
    found = []
    if len(cpu_numa) > 1:
        found.append(
            f"CPUs span NUMA nodes {format_cpuset(frozenset(cpu_numa))}: the CPU Manager did not pin this container "
            "(cpuManagerPolicy is not static, or the pod is not Guaranteed with an integer CPU request), or the "
            "Topology Manager policy lets it span (none, best-effort)"
        )
    if len(mems) > 1:
        found.append(
            f"memory may come from NUMA nodes {format_cpuset(frozenset(mems))}: the Memory Manager isn't configured "
            "(memoryManagerPolicy: Static, with reservedMemory), or the pod isn't Guaranteed QoS"
        )
    if ratio > REMOTE_LIMIT:
        found.append(
            f"{ratio:.0%} of resident memory is on NUMA nodes without this container's CPUs (a large NumaForeign): "
            "a cross-NUMA memory placement problem; check the Memory Manager (Static) and the pod's QoS class"
        )
    home = set(cpu_numa)
    for kind, items in (("GPU", gpus), ("network interface", nics)):
        for item in items:
            numa = item["numa_node"]
            if isinstance(numa, int) and numa != UNKNOWN_NUMA_NODE and home and numa not in home:
                ident = item.get("uuid") or item.get("name")
                found.append(
                    f"{kind} {ident} is on NUMA node {numa}, the CPUs on {format_cpuset(frozenset(home))}: the "
                    "Topology Manager policy is not single-numa-node or restricted, the device plugin reports no "
                    "topology, or the device came from a DRA claim (which the Topology Manager does not align)"
                )
    return found

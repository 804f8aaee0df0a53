"""The per-container alignment audit: which NUMA nodes each exclusive resource of a container spans.

CPUs through the container's cpuset, memory and hugepages through its blocks' `numaAffinity` (blocks
shrunk to 0 by init-container reuse hold nothing), devices through their NUMA node, DRA devices (resource
`dra:<driver>`) through where their slice or the hardware puts them (dra.py). A container is aligned when
all of them together sit on exactly one known NUMA node.

The Topology Manager aligns none of the DRA devices with the kubelet's CPUs and memory: a container is
DRA-misaligned when one of its DRA devices sits on a NUMA node that holds none of its pinned CPUs, Static
memory or device-plugin devices, or, holding nothing else exclusive, when its DRA devices span several NUMA
nodes. Devices whose NUMA node is unknown are judged by nothing. Claims known only from the kubelet's
checkpoint name no container: they are audited as the pod's (`(pod)`), against all its containers.

A container given GPUs and NICs (or VFs), by device plugins or DRA, also gets its closest GPU-NIC PCIe path
(pcie.py) and whether NCCL would use GPUDirect RDMA over it (PIX or PXB, its default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exporter.hardware.pcie import GPUDIRECT_RDMA, closest_gpu_nic
from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.devices import REPLICA_SEPARATOR, UNKNOWN
from exporter.kubelet.dra import EMPTY, POD_SCOPE, DraView, held_numa_nodes, is_dra_resource
from exporter.model import UNKNOWN_NUMA_NODE, PciePath, Topology

__all__ = ["POD_SCOPE", "ContainerAlignment", "container_alignment"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerAlignment:
    pod_uid: str
    namespace: str
    pod: str
    container: str
    numa_nodes: Mapping[str, frozenset[int]]
    dra_misaligned: bool | None = False  # None: none of its DRA devices' NUMA node is known (never a guess)
    gpu_nic: PciePath | None = None  # the closest GPU-NIC path of a container given both (a: GPU, b: NIC)

    @property
    def gpudirect_rdma(self) -> bool | None:
        """Whether NCCL's default would use GPUDirect RDMA between its GPU and NIC; None without both."""
        return None if self.gpu_nic is None else self.gpu_nic.path in GPUDIRECT_RDMA

    @property
    def aligned(self) -> bool:
        spanned = frozenset().union(*self.numa_nodes.values())
        return len(spanned) == 1 and UNKNOWN_NUMA_NODE not in spanned

    @property
    def holds_dra(self) -> bool:
        return any(is_dra_resource(resource) for resource in self.numa_nodes)


def _dra_misaligned(spans: Mapping[str, set[int]], others: set[int]) -> bool | None:
    dra = {numa for resource, numas in spans.items() if is_dra_resource(resource) for numa in numas}
    held = bool(dra)
    dra.discard(UNKNOWN_NUMA_NODE)
    others = others - {UNKNOWN_NUMA_NODE}
    if not dra:
        return None if held else False
    return bool(dra - others) if others else len(dra) > 1


def container_alignment(
    topology: Topology, state: KubeletState, *, placement: Mapping[str, frozenset[int]], dra: DraView = EMPTY
) -> tuple[ContainerAlignment, ...]:
    spans: dict[tuple[str, str], dict[str, set[int]]] = {}

    held: dict[tuple[str, str], set[str]] = {}  # (pod, container) -> PCI addresses of its devices

    def add(pod: str, container: str, resource: str, numas: frozenset[int] | set[int]) -> None:
        spans.setdefault((pod, container), {}).setdefault(resource, set()).update(numas)

    pci_of = _pci_addresses(topology)
    by_address = {device.address: device for device in topology.pci_devices}

    if state.cpu is not None and state.cpu_policy == "static":
        cpu_numa = topology.numa_node_of_cpu()
        for pod, containers in state.cpu.entries.items():
            for container, cpus in containers.items():
                add(pod, container, "cpu", {cpu_numa.get(cpu, UNKNOWN_NUMA_NODE) for cpu in cpus})
        for pod, cpus in state.cpu.pod_entries.items():
            add(pod, POD_SCOPE, "cpu", {cpu_numa.get(cpu, UNKNOWN_NUMA_NODE) for cpu in cpus})
    if state.memory is not None and state.memory.is_static:
        for pod, memory_containers in state.memory.entries.items():
            for container, blocks in memory_containers.items():
                for block in blocks:
                    if block.size_bytes > 0:
                        add(pod, container, block.resource, set(block.numa_affinity) or {UNKNOWN_NUMA_NODE})
    if state.devices is not None:
        for allocation in state.devices.allocations:
            numas: set[int] = set()
            for device in allocation.device_ids:
                numas.update(placement.get(device, UNKNOWN))
                address = pci_of.get(device) or pci_of.get(device.partition(REPLICA_SEPARATOR)[0])
                if address:
                    held.setdefault((allocation.pod_uid, allocation.container), set()).add(address)
            if numas:
                add(allocation.pod_uid, allocation.container, allocation.resource, numas)
    for (pod_uid, container), refs in dra.held.items():
        for resource, numas in held_numa_nodes(dra, refs).items():
            add(pod_uid, container, resource, numas)
        for held_ref in refs:
            dra_device = dra.device(held_ref)
            if dra_device is not None and dra_device.pci_address:
                held.setdefault((pod_uid, container), set()).add(dra_device.pci_address)

    def others(pod_uid: str, container: str) -> set[int]:
        keys = [key for key in spans if key[0] == pod_uid] if container == POD_SCOPE else [(pod_uid, container)]
        return {n for key in keys for r, numas in spans[key].items() if not is_dra_resource(r) for n in numas}

    names = {pod.uid: pod for pod in state.pods or ()}
    result = []
    for (pod_uid, container), resources in sorted(spans.items()):
        ref = names.get(pod_uid)
        result.append(
            ContainerAlignment(
                pod_uid=pod_uid,
                namespace=ref.namespace if ref else "",
                pod=ref.name if ref else "",
                container=container,
                numa_nodes={resource: frozenset(numas) for resource, numas in sorted(resources.items())},
                dra_misaligned=_dra_misaligned(resources, others(pod_uid, container)),
                gpu_nic=closest_gpu_nic(by_address[a] for a in held.get((pod_uid, container), ()) if a in by_address),
            )
        )
    return tuple(result)


def _pci_addresses(topology: Topology) -> dict[str, str]:
    """Device ID -> PCI address: PCI address IDs (SR-IOV VFs, NICs), GPU and MIG UUIDs."""
    addresses = {device.address: device.address for device in topology.pci_devices}
    for gpu in topology.gpus:
        addresses[gpu.uuid] = gpu.pci_address
        for mig in gpu.mig_devices:
            addresses[mig.uuid] = gpu.pci_address
    return addresses

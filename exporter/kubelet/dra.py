"""DRA devices on this node: where each one is, which are handed out, and which container holds which.

Pure: discovery, the kubelet's DRA checkpoint and health file, this node's ResourceSlices and its pods'
claims (the API), and the kubelet's podresources answer in; one DraView out.

* Where a device is. Its slice's standard attribute `resource.kubernetes.io/numaNode` (or the CPU driver's
  `dra.cpu/numaNodeID`) first; then what the hardware says for the PCI address the slice names
  (`resource.kubernetes.io/pciBusID`, NVIDIA's `pcieBusID`), for its PCI root (`pcieRoot`: the NUMA node
  every known device under that root shares), or for its GPU UUID (NVML); else unknown (-1), never
  guessed. A device published by a DRA driver and seen by discovery (same PCI address or UUID) is one
  device.
* Handed out. A device is allocated when a claim holds it: the kubelet's checkpoint (claims it prepared
  here), the claims of this node's pods (their `status.allocation`), or podresources' per-container claim
  devices. A device shared by several claims is one allocated device.
* Who holds it. podresources names the container; else the pod's spec names the claims each container
  uses (with the request, when it names one) and the claim's allocation gives the devices; else, from the
  checkpoint alone (no container names there), the devices are the pod's (container `(pod)`).
* CPUs. A CPU driver's device (`dra.cpu/cpuID`) that is allocated holds exclusive CPUs: they leave the
  shared pool, though the kubelet's CPU manager does not know it.

Resources are named `dra:<driver>` (e.g. `dra:gpu.nvidia.com`): a colon is in no Kubernetes resource name,
so the name never collides with a device plugin's or an extended resource.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.cpuset import CpuSet
from exporter.model import (
    UNKNOWN_NUMA_NODE,
    DeviceKind,
    DraAllocatedDevice,
    DraApiReading,
    DraCheckpoint,
    DraDeviceHealth,
    DraDeviceRef,
    PodRef,
    PodResourcesReading,
    SliceDevice,
    Topology,
)

PREFIX = "dra:"
POD_SCOPE = "(pod)"


def resource_name(driver: str) -> str:
    return f"{PREFIX}{driver}"


def is_dra_resource(resource: str) -> bool:
    return resource.startswith(PREFIX)


@dataclass(frozen=True, slots=True, kw_only=True)
class DraDevice:
    ref: DraDeviceRef
    numa_nodes: frozenset[int]  # empty: unknown
    numa_source: str  # "attribute", "pci", "pcie_root", "nvml" or "unknown"
    kind: DeviceKind
    pci_address: str
    model: str
    cpu_ids: CpuSet
    published: bool  # False: held by a claim, but no slice of this node publishes it now
    health: str | None = None  # the kubelet's dra_health_state, where it lists the device

    @property
    def resource(self) -> str:
        return resource_name(self.ref.driver)


@dataclass(frozen=True, slots=True, kw_only=True)
class DraView:
    devices: tuple[DraDevice, ...]
    allocated: frozenset[DraDeviceRef]
    held: Mapping[tuple[str, str], tuple[DraDeviceRef, ...]]  # (pod UID, container) -> devices
    exclusive_cpus: CpuSet  # CPUs of allocated CPU-driver devices

    def device(self, ref: DraDeviceRef) -> DraDevice | None:
        return next((device for device in self.devices if device.ref == ref), None)

    def numa_of(self) -> dict[DraDeviceRef, frozenset[int]]:
        return {device.ref: device.numa_nodes for device in self.devices}


EMPTY = DraView(devices=(), allocated=frozenset(), held={}, exclusive_cpus=frozenset())


def dra_view(
    topology: Topology,
    *,
    checkpoint: DraCheckpoint | None,
    health: tuple[DraDeviceHealth, ...] | None,
    api: DraApiReading | None,
    pods: tuple[PodRef, ...] | None,
    podresources: PodResourcesReading | None,
) -> DraView:
    if checkpoint is None and api is None and not _reported_claims(podresources):
        return EMPTY
    published = {device.ref: device for device in (api.devices if api else ())}
    remembered = {device.ref: device for device in (api.remembered if api else ())}
    claims = {(claim.namespace, claim.name): claim.devices for claim in (api.claims if api else ())}
    for entry in checkpoint.entries if checkpoint else ():
        if entry.devices:
            claims.setdefault((entry.namespace, entry.claim_name), entry.devices)
    held = _held(pods=pods or (), claims=claims, checkpoint=checkpoint, podresources=podresources)
    allocated = {device.ref for devices in claims.values() for device in devices}
    allocated.update(ref for refs in held.values() for ref in refs)
    health_of = {item.ref: item.health for item in health or ()}
    locate = _Locator(topology)
    devices = []
    for ref in sorted(set(published) | allocated, key=str):
        source = published.get(ref) or remembered.get(ref) or SliceDevice(ref=ref)
        devices.append(locate.device(source, published=ref in published, health=health_of.get(ref)))
    by_ref = {device.ref: device for device in devices}
    cpus = frozenset(cpu for ref in allocated if ref in by_ref for cpu in by_ref[ref].cpu_ids)
    return DraView(devices=tuple(devices), allocated=frozenset(allocated), held=held, exclusive_cpus=cpus)


def _reported_claims(reading: PodResourcesReading | None) -> bool:
    return reading is not None and any(c.claims for pod in reading.pods for c in pod.containers)


def _held(
    *,
    pods: tuple[PodRef, ...],
    claims: Mapping[tuple[str, str], tuple[DraAllocatedDevice, ...]],
    checkpoint: DraCheckpoint | None,
    podresources: PodResourcesReading | None,
) -> dict[tuple[str, str], tuple[DraDeviceRef, ...]]:
    held: dict[tuple[str, str], set[DraDeviceRef]] = {}
    uid_of = {(pod.namespace, pod.name): pod.uid for pod in pods}
    covered: set[str] = set()
    for reported in podresources.pods if podresources else ():
        uid = uid_of.get((reported.namespace, reported.name), f"{reported.namespace}/{reported.name}")
        for container in reported.containers:
            refs = {DraDeviceRef(driver=c.driver, pool=c.pool, device=c.device) for c in container.claims}
            if refs:
                held.setdefault((uid, container.name), set()).update(refs)
                covered.add(uid)
    for pod in pods:
        if pod.uid in covered or not pod.claims:
            continue
        for use in pod.claims:
            for device in claims.get((pod.namespace, use.claim), ()):
                if use.request is None or any(_serves(request, use.request) for request in device.requests):
                    held.setdefault((pod.uid, use.container), set()).add(device.ref)
        covered.add(pod.uid)
    for entry in checkpoint.entries if checkpoint else ():
        for uid in sorted(entry.pod_uids - covered):
            held.setdefault((uid, POD_SCOPE), set()).update(device.ref for device in entry.devices)
    return {key: tuple(sorted(refs, key=str)) for key, refs in sorted(held.items()) if refs}


def _serves(result_request: str, wanted: str) -> bool:
    """A result for `req` or for one of its sub-requests `req/sub` serves a container asking for `req`."""
    return result_request == wanted or result_request.startswith(f"{wanted}/")


class _Locator:
    """Where hardware puts a DRA device, from what discovery found."""

    def __init__(self, topology: Topology) -> None:
        self._pci = {device.address: device for device in topology.pci_devices}
        self._gpus = {gpu.uuid: gpu for gpu in topology.gpus}
        self._gpus.update({mig.uuid: gpu for gpu in topology.gpus for mig in gpu.mig_devices})
        self._gpu_by_pci = {gpu.pci_address.lower(): gpu for gpu in topology.gpus}
        roots: dict[str, set[int]] = {}
        for device in topology.pci_devices:
            if device.pcie_root:
                roots.setdefault(device.pcie_root, set()).add(device.numa_node)
        self._roots = {root: next(iter(numas)) for root, numas in roots.items() if len(numas) == 1}

    def device(self, source: SliceDevice, *, published: bool, health: str | None) -> DraDevice:
        pci = self._pci.get(source.pci_address) if source.pci_address else None
        gpu = self._gpus.get(source.uuid) if source.uuid else None
        gpu = gpu or (self._gpu_by_pci.get(source.pci_address) if source.pci_address else None)
        if pci is None and gpu is not None:
            pci = self._pci.get(gpu.pci_address.lower()) or self._pci.get(gpu.pci_address)
        numas, where = self._numa(source, pci_numa=pci.numa_node if pci else UNKNOWN_NUMA_NODE,
                                  gpu_numa=gpu.numa_node if gpu else UNKNOWN_NUMA_NODE)  # fmt: skip
        kind: DeviceKind = "cpu" if source.cpu_ids else (pci.kind if pci else ("gpu" if gpu else "other"))
        return DraDevice(
            ref=source.ref,
            numa_nodes=numas,
            numa_source=where,
            kind=kind,
            pci_address=pci.address if pci else (gpu.pci_address if gpu else source.pci_address),
            model=(gpu.name if gpu else "") or source.model or (pci.model_name or "" if pci else ""),
            cpu_ids=source.cpu_ids,
            published=published,
            health=health,
        )

    def _numa(self, source: SliceDevice, *, pci_numa: int, gpu_numa: int) -> tuple[frozenset[int], str]:
        if source.numa_nodes:
            return source.numa_nodes, "attribute"
        if pci_numa != UNKNOWN_NUMA_NODE:
            return frozenset({pci_numa}), "pci"
        if source.pcie_root in self._roots and self._roots[source.pcie_root] != UNKNOWN_NUMA_NODE:
            return frozenset({self._roots[source.pcie_root]}), "pcie_root"
        if gpu_numa != UNKNOWN_NUMA_NODE:
            return frozenset({gpu_numa}), "nvml"
        return frozenset(), "unknown"


def dra_counts(view: DraView) -> dict[str, dict[int, tuple[int, int]]]:
    """resource -> NUMA node -> (published devices, allocated among them). A device on no known NUMA node, or
    on several (a list-type `numaNode`), is counted once, under -1: it is local to no single NUMA node."""
    counts: dict[str, dict[int, list[int]]] = {}
    for device in view.devices:
        if not device.published:
            continue
        numa = next(iter(device.numa_nodes)) if len(device.numa_nodes) == 1 else UNKNOWN_NUMA_NODE
        cell = counts.setdefault(device.resource, {}).setdefault(numa, [0, 0])
        cell[0] += 1
        cell[1] += device.ref in view.allocated
    return {r: {n: (c[0], c[1]) for n, c in sorted(per.items())} for r, per in sorted(counts.items())}


def held_numa_nodes(view: DraView, refs: Iterable[DraDeviceRef]) -> dict[str, set[int]]:
    """resource -> the NUMA nodes the given devices sit on ({-1} for a device whose place is unknown)."""
    numa = view.numa_of()
    spans: dict[str, set[int]] = {}
    for ref in refs:
        spans.setdefault(resource_name(ref.driver), set()).update(numa.get(ref) or {UNKNOWN_NUMA_NODE})
    return spans

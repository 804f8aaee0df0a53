"""The Prometheus exposition: a custom collector that renders the current Snapshot (docs/product.md).

`collect()` reads one reference and does no I/O: scrapes stay fast and never see half an update. The
collector lives on the exporter's own CollectorRegistry, never the global one. Refresh timing and NRT
write counts come from small holders the refresher and publisher update; they are read, not computed.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version as _package_version

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.cpuset import format_cpuset
from exporter.errors import SourceError
from exporter.hardware.pcie import nearest_nics
from exporter.kubelet.placement import PlacementView
from exporter.snapshot import Snapshot
from exporter.units import hugepage_size_name

PREFIX = "numa_topology_"
CLIENT_VERSION = _package_version("prometheus-client")
PROCESS_SECONDS = 5.0
REFRESH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
NUMA_LABELS = ("numa_node", "resource", "unit")


class RefreshStats:
    """Refresh durations as a histogram, fed by the refresher, read by scrapes."""

    def __init__(self, buckets: tuple[float, ...] = REFRESH_BUCKETS) -> None:
        self._lock = threading.Lock()
        self.buckets = buckets
        self._counts = [0] * len(buckets)
        self._count = 0
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        with self._lock:
            for index, bound in enumerate(self.buckets):
                if seconds <= bound:
                    self._counts[index] += 1
            self._count += 1
            self._sum += seconds

    @property
    def count(self) -> int:
        return self._count

    def read(self) -> tuple[list[tuple[str, float]], float]:
        with self._lock:
            buckets = [(repr(bound), float(count)) for bound, count in zip(self.buckets, self._counts, strict=True)]
            return [*buckets, ("+Inf", float(self._count))], self._sum


@dataclass(slots=True)
class NrtStats:
    """NRT write outcomes, fed by the publisher: (operation, result) -> count, and the last success time."""

    writes: dict[tuple[str, str], int] = field(default_factory=dict)
    last_success_timestamp: float | None = None
    version: int = 0
    api_warnings: int = 0

    def warning(self) -> None:
        self.version += 1
        self.api_warnings += 1

    def record(self, *, operation: str, result: str, when: float | None = None) -> None:
        self.version += 1
        self.writes[(operation, result)] = self.writes.get((operation, result), 0) + 1
        if result == "success" and when is not None:
            self.last_success_timestamp = when


class SnapshotCollector(Collector):
    def __init__(
        self,
        current: Callable[[], Snapshot | None],
        *,
        refresh: RefreshStats | None = None,
        nrt: NrtStats | None = None,
        placement: Callable[[], PlacementView | None] | None = None,
        failure: Callable[[], SourceError | None] | None = None,
        errors: Callable[[], Mapping[tuple[str, str], int]] | None = None,
    ) -> None:
        self._current = current
        self._placement = placement or (lambda: None)
        self._failure = failure or (lambda: None)
        self._errors = errors or (lambda: {})
        self._refresh = refresh
        self._nrt = nrt

    def collect(self) -> Iterator[Metric]:
        yield from _build_info()
        snapshot = self._current()
        if snapshot is not None:
            yield from snapshot_metrics(snapshot, self._placement())
        elif (failure := self._failure()) is not None:
            yield from _no_snapshot_metrics(failure, dict(self._errors()))
        if self._refresh is not None:
            buckets, total = self._refresh.read()
            histogram = HistogramMetricFamily(
                f"{PREFIX}refresh_duration_seconds", "Time to build one snapshot: read every source and account."
            )
            histogram.add_metric([], buckets, total)
            yield histogram
        if self._nrt is not None:
            yield from _nrt_metrics(self._nrt)


def _build_info() -> Iterator[Metric]:
    info = GaugeMetricFamily(
        f"{PREFIX}exporter_build_info",
        "The exporter's version, and the Python and prometheus_client it runs on.",
        labels=["version", "python_version", "implementation", "prometheus_client"],
    )
    info.add_metric([__version__, platform.python_version(), platform.python_implementation(), CLIENT_VERSION], 1)
    yield info


def _nrt_metrics(nrt: NrtStats) -> Iterator[Metric]:
    writes = CounterMetricFamily(
        f"{PREFIX}nrt_writes", "NodeResourceTopology writes by operation and result.", labels=["operation", "result"]
    )
    for (operation, result), count in sorted(nrt.writes.items()):
        writes.add_metric([operation, result], count)
    yield writes
    warnings = CounterMetricFamily(
        f"{PREFIX}api_warnings", "Warning headers the API server sent back (e.g. an unknown field it dropped)."
    )
    warnings.add_metric([], nrt.api_warnings)
    yield warnings
    if nrt.last_success_timestamp is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}nrt_last_success_timestamp_seconds",
            "When the NodeResourceTopology object was last written or confirmed current.",
            value=nrt.last_success_timestamp,
        )


def snapshot_metrics(snapshot: Snapshot, placement: PlacementView | None = None) -> Iterator[Metric]:
    accounting = snapshot.accounting
    topology = snapshot.topology
    families = {
        kind: GaugeMetricFamily(f"{PREFIX}resource_{kind}", text, labels=list(NUMA_LABELS))
        for kind, text in (
            ("capacity", "Per-NUMA capacity of a resource (cores, bytes, or devices)."),
            ("allocatable", "Per-NUMA allocatable: capacity minus reservations."),
            ("available", "Per-NUMA available: allocatable minus what the kubelet has pinned or allocated."),
            ("stranded", "Per-NUMA stranded: available but unusable by any profile for lack of a companion resource."),
        )
    }
    for account in sorted(accounting.accounts, key=lambda a: (a.resource, a.numa_node)):
        labels = [str(account.numa_node), account.resource, account.unit]
        families["capacity"].add_metric(labels, account.capacity)
        if account.allocatable is not None:
            families["allocatable"].add_metric(labels, account.allocatable)
        if account.available is not None:
            families["available"].add_metric(labels, account.available)
            families["stranded"].add_metric(labels, account.stranded)
    yield from families.values()

    fit = GaugeMetricFamily(
        f"{PREFIX}profile_fit", "Pods of a profile that fit on one NUMA node alone.", labels=["numa_node", "profile"]
    )
    fit_node = GaugeMetricFamily(
        f"{PREFIX}profile_fit_node",
        "Pods of a profile the node can still admit: aligned (single-numa-node) or unaligned (NUMA ignored).",
        labels=["profile", "placement"],
    )
    for profile_fit in accounting.fits:
        for numa_id, count in sorted(profile_fit.per_numa.items()):
            fit.add_metric([str(numa_id), profile_fit.profile], count)
        fit_node.add_metric([profile_fit.profile, "aligned"], profile_fit.aligned)
        fit_node.add_metric([profile_fit.profile, "unaligned"], profile_fit.unaligned)
    yield fit
    yield fit_node

    info = GaugeMetricFamily(
        f"{PREFIX}numa_node_info",
        "One per NUMA node, with its online CPUs and what its memory is (memory_kind: dram, hbm, nvm, spm, cxl, "
        "gpu-memory; memory_owner: the GPU's PCI address for gpu-memory). Join on numa_node to label other series.",
        labels=["numa_node", "cpulist", "memory_kind", "memory_owner"],
    )
    distance = GaugeMetricFamily(
        f"{PREFIX}distance", "SLIT distance between two NUMA nodes (10 = local).", labels=["numa_node", "to_numa_node"]
    )
    hugepages = GaugeMetricFamily(
        f"{PREFIX}hugepages_pages",
        "Hugepages per NUMA node and size, as the kernel counts them.",
        labels=["numa_node", "size", "state"],
    )
    numastat = CounterMetricFamily(
        f"{PREFIX}numastat_pages", "The kernel's per-NUMA allocation counters (numastat).", labels=["numa_node", "type"]
    )
    for numa in topology.numa_nodes:
        node = str(numa.numa_node)
        info.add_metric([node, format_cpuset(numa.cpus), numa.memory_kind, numa.memory_owner], 1)
        for other, value in sorted(numa.distances.items()):
            distance.add_metric([node, str(other)], value)
        for pool in numa.hugepages:
            size = hugepage_size_name(pool.size_bytes)
            hugepages.add_metric([node, size, "total"], pool.total_pages)
            hugepages.add_metric([node, size, "free"], pool.free_pages)
        for counter, value in sorted(numa.numastat.items()):
            numastat.add_metric([node, counter], value)
    yield from (info, distance, hugepages, numastat)

    devices = GaugeMetricFamily(
        f"{PREFIX}device_info",
        "One per device (GPU, NIC, VF, accelerator), registered with the kubelet or not. hardware_numa_node: "
        "where the hardware puts it (numa_node, else the NUMA node of its local CPUs when the firmware gives -1).",
        labels=["numa_node", "resource", "device", "kind", "pci_address", "model", "pool", "hardware_numa_node"],
    )
    for record in accounting.devices:
        devices.add_metric(
            [
                str(record.numa_node),
                record.resource,
                record.device,
                record.kind,
                record.pci_address,
                record.model,
                record.pool,
                str(record.hardware_numa_node),
            ],
            1,
        )
    yield devices
    yield from _dra_metrics(snapshot)

    spans = GaugeMetricFamily(
        f"{PREFIX}container_numa_nodes",
        "NUMA nodes an exclusive resource of a container spans.",
        labels=["namespace", "pod", "pod_uid", "container", "resource"],
    )
    aligned = GaugeMetricFamily(
        f"{PREFIX}container_aligned",
        "1 when all of a container's exclusive resources share one NUMA node.",
        labels=["namespace", "pod", "pod_uid", "container"],
    )
    dra_misaligned = GaugeMetricFamily(
        f"{PREFIX}container_dra_misaligned",
        "For each container holding DRA devices: 1 when one of them is on a NUMA node none of the container's "
        "CPUs, Static memory or device-plugin devices are on (the Topology Manager does not align DRA).",
        labels=["namespace", "pod", "pod_uid", "container"],
    )
    for container in accounting.containers:
        ident = [container.namespace, container.pod, container.pod_uid, container.container]
        for resource, numas in container.numa_nodes.items():
            spans.add_metric([*ident, resource], len(numas))
        aligned.add_metric(ident, 1 if container.aligned else 0)
        if container.holds_dra and container.dra_misaligned is not None:  # unknown places: no series, no guess
            dra_misaligned.add_metric(ident, 1 if container.dra_misaligned else 0)
    yield spans
    yield aligned
    yield dra_misaligned
    yield from _gpu_nic_metrics(snapshot)

    stale = GaugeMetricFamily(
        f"{PREFIX}stale_entries", "Kubelet state entries for pods no longer on the node.", labels=["source"]
    )
    for source, count in sorted(accounting.stale_entries.items()):
        stale.add_metric([source], count)
    yield stale

    config = snapshot.kubelet.config
    config_info = GaugeMetricFamily(
        f"{PREFIX}kubelet_config_info",
        "The kubelet's NUMA-relevant settings; reserved_cpus_source says where reserved_cpus came from.",
        labels=[
            "cpu_manager_policy",
            "memory_manager_policy",
            "topology_manager_policy",
            "topology_manager_scope",
            "reserved_cpus",
            "reserved_cpus_source",
        ],
    )
    config_info.add_metric(
        [
            snapshot.kubelet.cpu_policy,
            snapshot.kubelet.memory_policy,
            config.topology_manager_policy if config.known else "unknown",
            config.topology_manager_scope if config.known else "unknown",
            format_cpuset(accounting.reserved.cpus),
            accounting.reserved.source,
        ],
        1,
    )
    yield config_info

    up = GaugeMetricFamily(
        f"{PREFIX}source_up", "1 when the last read of a source succeeded and verified.", labels=["source"]
    )
    for status in (*snapshot.sources, *((placement.status,) if placement is not None else ())):
        if status.available:
            up.add_metric([status.source], 1 if status.up else 0)
    yield up
    yield _errors({**snapshot.errors_total, **(placement.errors_total if placement is not None else {})})
    disagreements = CounterMetricFamily(
        f"{PREFIX}source_disagreements",
        "Distinct disagreements between the kubelet's state files and its podresources API, by resource.",
        labels=["resource"],
    )
    for resource, count in sorted(snapshot.disagreements_total.items()):
        disagreements.add_metric([resource], count)
    yield disagreements
    if accounting.crosscheck is not None:
        current = GaugeMetricFamily(
            f"{PREFIX}source_disagreement",
            "1 for each container and resource on which the state files and podresources disagree now.",
            labels=["namespace", "pod", "pod_uid", "container", "resource"],
        )
        for item in accounting.crosscheck.disagreements:
            current.add_metric([item.namespace, item.pod, item.pod_uid, item.container, item.resource], 1)
        yield current
    yield GaugeMetricFamily(
        f"{PREFIX}last_refresh_timestamp_seconds", "When the current snapshot was built.", value=snapshot.taken_at
    )
    if placement is not None:
        yield from placement_metrics(placement)


def _gpu_nic_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    """GPU-NIC PCIe paths: each container's closest pair, and each GPU's nearest NIC on the node."""
    path = GaugeMetricFamily(
        f"{PREFIX}container_gpu_nic_path",
        "For each container given GPUs and NICs (or VFs): 1, labelled with its closest GPU-NIC pair and the PCIe "
        "path class between them (PIX, PXB, PHB, NODE, SYS as nvidia-smi topo -m).",
        labels=["namespace", "pod", "pod_uid", "container", "gpu_pci_address", "nic_pci_address", "path"],
    )
    gdr = GaugeMetricFamily(
        f"{PREFIX}container_gpudirect_rdma",
        "For each container given GPUs and NICs: 1 when NCCL's default would use GPUDirect RDMA between them "
        "(path PIX or PXB), 0 when its traffic crosses a host bridge or NUMA nodes.",
        labels=["namespace", "pod", "pod_uid", "container"],
    )
    for container in snapshot.accounting.containers:
        if container.gpu_nic is None:
            continue
        ident = [container.namespace, container.pod, container.pod_uid, container.container]
        path.add_metric([*ident, container.gpu_nic.a, container.gpu_nic.b, container.gpu_nic.path], 1)
        gdr.add_metric(ident, 1 if container.gpudirect_rdma else 0)
    yield path
    yield gdr
    nearest = GaugeMetricFamily(
        f"{PREFIX}gpu_nearest_nic",
        'For each GPU: 1, labelled with the nearest NIC and the PCIe path class to it (nic "" and path '
        '"none" on a node without NICs).',
        labels=["gpu_pci_address", "nic_pci_address", "path"],
    )
    without = GaugeMetricFamily(
        f"{PREFIX}gpus_without_local_nic",
        "GPUs with no NIC under the same PCIe switch hierarchy (PIX or PXB): NCCL's default uses no GPUDirect "
        "RDMA for them, their network traffic crosses the host bridge.",
    )
    lonely = 0
    for gpu, nic, found in nearest_nics(snapshot.topology):
        nearest.add_metric([gpu, nic, found], 1)
        lonely += found not in ("PIX", "PXB")
    without.add_metric([], lonely)
    yield nearest
    yield without


def placement_metrics(view: PlacementView) -> Iterator[Metric]:
    """Observed placement (the cgroup tree), one sample; docs/product.md, "Observed placement"."""
    ident = ["namespace", "pod", "pod_uid", "container"]
    memory = GaugeMetricFamily(
        f"{PREFIX}container_memory_bytes",
        "A container's memory per NUMA node, from its cgroup's memory.numa_stat (anon or file).",
        labels=[*ident, "numa_node", "type"],
    )
    remote = GaugeMetricFamily(
        f"{PREFIX}container_remote_memory_ratio",
        "Share of a container's memory on NUMA nodes holding none of its enforced CPUs (the cross-NUMA tax).",
        labels=ident,
    )
    enforced = GaugeMetricFamily(
        f"{PREFIX}container_enforced_numa_nodes",
        "How many NUMA nodes the container's cgroup cpuset allows: its CPUs' (cpu) or cpuset.mems (memory).",
        labels=[*ident, "resource"],
    )
    drift = GaugeMetricFamily(
        f"{PREFIX}container_placement_drift",
        "1 where the kubelet pinned CPUs or assigned Static memory that the container's cgroup does not enforce.",
        labels=[*ident, "resource"],
    )
    for container in view.containers:
        labels = [container.namespace, container.pod, container.pod_uid, container.container]
        for (numa, kind), size in sorted(container.memory.items()):
            memory.add_metric([*labels, str(numa), kind], size)
        remote.add_metric(labels, container.remote_ratio)
        enforced.add_metric([*labels, "cpu"], len(container.cpu_numa_nodes))
        enforced.add_metric([*labels, "memory"], len(container.mems))
        drift.add_metric([*labels, "cpu"], 1 if container.cpu_drift else 0)
        drift.add_metric([*labels, "memory"], 1 if container.memory_drift else 0)
    per_numa = GaugeMetricFamily(
        f"{PREFIX}numa_node_remote_memory_bytes",
        "Memory on a NUMA node that belongs to sampled containers none of whose enforced CPUs are on it.",
        labels=["numa_node"],
    )
    for numa, size in view.remote_bytes_by_numa.items():
        per_numa.add_metric([str(numa)], size)
    yield from (memory, remote, enforced, drift, per_numa)
    yield GaugeMetricFamily(
        f"{PREFIX}placement_last_sample_timestamp_seconds",
        "When the last placement sample was taken.",
        value=view.taken_at,
    )


def _dra_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    health = GaugeMetricFamily(
        f"{PREFIX}dra_device_health",
        "1 for the health the kubelet last heard from the DRA driver for a device (dra_health_state).",
        labels=["resource", "pool", "device", "health"],
    )
    unpublished = GaugeMetricFamily(
        f"{PREFIX}dra_device_unpublished",
        "1 for a DRA device a claim still holds though no ResourceSlice of this node publishes it now.",
        labels=["resource", "pool", "device"],
    )
    dra = snapshot.accounting.dra
    for device in dra.devices if dra is not None else ():
        ident = [device.resource, device.ref.pool, device.ref.device]
        if device.health is not None:
            health.add_metric([*ident, device.health], 1)
        if not device.published:
            unpublished.add_metric(ident, 1)
    yield health
    yield unpublished


def _no_snapshot_metrics(failure: SourceError, errors: Mapping[tuple[str, str], int]) -> Iterator[Metric]:
    """Before any snapshot (sysfs never readable): the failing source down, its errors, and a last refresh
    at 0, so that NumaSourceDown and NumaExporterStale can fire."""
    up = GaugeMetricFamily(
        f"{PREFIX}source_up", "1 when the last read of a source succeeded and verified.", labels=["source"]
    )
    up.add_metric([failure.source], 0)
    yield up
    yield _errors(errors)
    yield GaugeMetricFamily(
        f"{PREFIX}last_refresh_timestamp_seconds", "When the current snapshot was built (0: never).", value=0.0
    )


def _errors(errors: Mapping[tuple[str, str], int]) -> Metric:
    family = CounterMetricFamily(
        f"{PREFIX}source_errors", "Failed reads of a source, by reason.", labels=["source", "reason"]
    )
    for (source, reason), count in sorted(errors.items()):
        family.add_metric([source, reason], count)
    return family

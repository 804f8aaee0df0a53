"""One consistent picture of the node: discovery + kubelet state + accounting, built by SnapshotBuilder.

The builder owns the last good reading of every source. A source that fails to read, parse or verify
keeps its last good value, is marked down and has its error counted by reason; a source that is absent on
purpose (no NVIDIA driver, no kubelet on this machine, a `none` policy's file) is marked unavailable and
counted nowhere. Snapshots are frozen: a refresh builds a new one, it never edits an old one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from exporter.errors import SourceContradicted, SourceError, SourceMissing
from exporter.hardware.discovery import discover
from exporter.kubelet import podresources_state
from exporter.kubelet.accounting import (
    KubeletState,
    ReservedCpus,
    ResourceAccount,
    entry_pods,
    exclusive_cpus,
    numa_accounted_resources,
    reserved_cpus,
    resource_accounts,
    stale_entries,
    without_gone_pods,
)
from exporter.kubelet.alignment import ContainerAlignment, container_alignment
from exporter.kubelet.configuration import EffectiveConfigReader
from exporter.kubelet.cpu_assignment import CpuTopology
from exporter.kubelet.crosscheck import CrossCheck, Disagreement, cross_check
from exporter.kubelet.devices import DeviceRecord, admission_numa_nodes, device_inventory, device_numa_nodes
from exporter.kubelet.dra import DraView, dra_view
from exporter.kubelet.fit import ProfileFit, profile_fits, with_stranded
from exporter.kubelet.profiles import Profile, default_profiles
from exporter.model import (
    DraApiReading,
    DraDeviceRef,
    KubeletConfig,
    PodRef,
    PodResourcesReading,
    SliceDevice,
    SourceStatus,
    Topology,
)
from exporter.paths import HostPaths
from exporter.sources import (
    cpu_manager,
    device_checkpoint,
    dra_state,
    kubelet_config,
    memory_manager,
    nvml,
    pod_logs,
)
from exporter.sources.files import present
from exporter.units import hugepage_resource

log = logging.getLogger(__name__)
T = TypeVar("T")

KUBELET_SOURCES = (
    "kubelet_config",
    "cpu_manager_state",
    "memory_manager_state",
    "device_checkpoint",
    dra_state.SOURCE,
    dra_state.HEALTH_SOURCE,
)
PODRESOURCES = "podresources"
UNVERIFIED_DRA = (
    "read unverified: a 1.27-1.30 checkpoint whose claims carry structured data, a layout whose hashed text "
    "cannot be reproduced"
)
RESOURCE_SLICES = "resource_slices"
NOT_READ = "not read (--no-state-files): accounted from the podresources API alone"


@dataclass(frozen=True, slots=True, kw_only=True)
class Accounting:
    accounts: tuple[ResourceAccount, ...]
    numa_accounted: frozenset[str]
    profiles: tuple[Profile, ...]
    fits: tuple[ProfileFit, ...]
    containers: tuple[ContainerAlignment, ...]
    stale_entries: Mapping[str, int]
    reserved: ReservedCpus
    devices: tuple[DeviceRecord, ...]
    crosscheck: CrossCheck | None = None
    dra: DraView | None = None
    released_pods: frozenset[str] = frozenset()  # pods whose state-file entries were released as gone


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    topology: Topology
    kubelet: KubeletState
    accounting: Accounting
    sources: tuple[SourceStatus, ...]
    errors_total: Mapping[tuple[str, str], int]
    disagreements_total: Mapping[str, int] = dataclasses.field(default_factory=dict)
    taken_at: float
    duration_seconds: float

    def source(self, name: str) -> SourceStatus | None:
        return next((status for status in self.sources if status.source == name), None)


def account(topology: Topology, state: KubeletState, *, profiles: tuple[Profile, ...] | None = None) -> Accounting:
    """Every number the exporter publishes, from discovery and the kubelet's records. Pure.

    With a podresources reading, the pods are the ones the kubelet lists (unless the API watch names
    them), a state-file entry of any other pod is stale, and a free device's plugin topology is known
    (crosscheck.py). Where that reading is of this refresh, stale entries are released as the kubelet's next
    admission releases them, and only the devices it lists are allocatable (docs/product.md, "Two sources")."""
    crosscheck = None
    files = state
    live = entry_pods(state)  # without a current reading, every entry is held but those shown gone before
    if state.podresources is not None:
        crosscheck = cross_check(state, state.podresources, api_synced=api_synced(state.pods))
        if state.podresources_current and crosscheck.kubelet_uids is not None:
            live = crosscheck.kubelet_uids | {pod.uid for pod in state.pods or () if pod.spec_known}
        if not api_synced(state.pods):
            state = dataclasses.replace(state, pods=crosscheck.pods)
    state = without_gone_pods(state, live - state.gone_pods)  # a pod UID shown gone never comes back
    cpus = CpuTopology.from_topology(topology)
    reserved = reserved_cpus(topology, state.config, cpus)
    placement = device_numa_nodes(topology, state.devices)
    admission = admission_numa_nodes(topology, state.devices, crosscheck.reported_topology if crosscheck else None)
    dra = dra_view(topology, checkpoint=state.dra, health=state.dra_health, api=state.dra_api, pods=state.pods,
                   podresources=state.podresources)  # fmt: skip
    accounts = resource_accounts(
        topology, state, reserved=reserved.cpus, placement=admission, cpus=cpus, dra=dra,
        allocatable_devices=allocatable_devices(state),
    )  # fmt: skip
    accounted = numa_accounted_resources(state, accounts)
    if profiles is None:
        present = {a.resource for a in accounts if a.resource in accounted and a.capacity > 0}
        units = {r: _hugepage_unit(r, topology) for r in present if r.startswith("hugepages-")}
        profiles = default_profiles(numa_accounted=present, unit_of=units)
    fits = profile_fits(
        accounts,
        profiles=profiles,
        numa_accounted=accounted,
        numa_nodes=topology.numa_node_ids,
        cpus=exclusive_cpus(state, cpus, reserved.cpus, dra_cpus=dra.exclusive_cpus),
    )
    return Accounting(
        accounts=with_stranded(accounts, profiles=profiles, fits=fits, numa_accounted=accounted),
        numa_accounted=accounted,
        profiles=profiles,
        fits=fits,
        containers=container_alignment(topology, state, placement=placement, dra=dra),
        stale_entries=stale_entries(files, live_uids=crosscheck.live_uids if crosscheck else None),
        reserved=reserved,
        devices=device_inventory(topology, state.devices, placement, dra),
        crosscheck=crosscheck,
        dra=dra,
        released_pods=entry_pods(files) - entry_pods(state),
    )


def allocatable_devices(state: KubeletState) -> dict[str, frozenset[str]] | None:
    """The devices the kubelet can hand out now, per resource, from a podresources reading taken in this
    refresh; None without one (every registered device then counts as allocatable)."""
    if state.podresources is None or not state.podresources_current:
        return None
    devices: dict[str, frozenset[str]] = {}
    for entry in state.podresources.allocatable_devices:
        devices[entry.resource] = devices.get(entry.resource, frozenset()) | frozenset(entry.ids)
    return devices


def config_contradiction(state: KubeletState) -> str | None:
    """Why the configuration read cannot be the one the kubelet runs with: its CPU or memory manager state file
    names another policy (the kubelet refuses to start on a state file of another policy, so the file read is
    stale or not the kubelet's). None when nothing contradicts it."""
    config, where = state.config, " + ".join(state.config.origin) or "the configuration read"
    if state.cpu is not None and state.cpu.policy_name and state.cpu.policy_name != config.cpu_manager_policy:
        return (
            f"{_written(state.cpu.version, 'cpu_manager_state')} the {state.cpu.policy_name} policy but {where} says "
            f"cpuManagerPolicy "
            f"{config.cpu_manager_policy}: not the configuration the kubelet runs with; {kubelet_config.WHERE}"
        )
    memory = state.memory
    if (
        memory is not None
        and memory.policy_name
        and memory.policy_name.casefold() != config.memory_manager_policy.casefold()
    ):
        return (
            f"{_written(memory.version, 'memory_manager_state')} the {memory.policy_name} policy but {where} says "
            f"memoryManagerPolicy {config.memory_manager_policy}: not the configuration the kubelet runs with; "
            f"{kubelet_config.WHERE}"
        )
    return None


def _written(version: str, file: str) -> str:
    return "the podresources API shows" if version == podresources_state.VERSION else f"{file} is written by"


def api_synced(pods: tuple[PodRef, ...] | None) -> bool:
    """The pods came from a synced API watch (their specs are known), not from the pod log directory."""
    return bool(pods) and all(pod.spec_known for pod in pods or ())


def _hugepage_unit(resource: str, topology: Topology) -> int:
    for numa in topology.numa_nodes:
        for pool in numa.hugepages:
            if hugepage_resource(pool.size_bytes) == resource:
                return pool.size_bytes
    return 1


class SnapshotBuilder:
    """Reads every source, keeps the last good reading of each, and builds Snapshots. Not thread-safe:
    one refresher owns it."""

    def __init__(
        self,
        paths: HostPaths,
        *,
        profiles: tuple[Profile, ...] | None = None,
        use_nvml: bool = True,
        use_udev: bool | None = None,
        nvml_library: nvml.NvmlLibrary | None = None,
        pods_reader: Callable[[], tuple[PodRef, ...]] | None = None,
        dra_reader: Callable[[], DraApiReading] | None = None,
        use_podresources: bool = True,
        use_state_files: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`use_state_files` False: the podresources-only mode (podresources_state.py); needs `use_podresources`."""
        if not (use_podresources or use_state_files):
            raise ValueError("neither the state files nor the podresources API: nothing says what the kubelet holds")
        self.paths = paths
        self.profiles = profiles
        self._use_nvml = use_nvml
        self._use_udev = use_udev
        self._nvml = nvml.NvmlSession(nvml_library)  # one NVML session for the builder's life
        self.pods_reader: Callable[[], tuple[PodRef, ...]] = pods_reader or (
            lambda: pod_logs.read_pods_from_logs(paths)
        )
        self.dra_reader = dra_reader
        self.config_reader: Callable[[], KubeletConfig] | None = None
        self._slice_memory: dict[DraDeviceRef, SliceDevice] = {}
        self._clock = clock
        self._use_podresources = use_podresources
        self._use_state_files = use_state_files
        self._podresources_client: Any = None
        self._effective_config = EffectiveConfigReader(paths)
        self._last: dict[str, Any] = {}
        self._statuses: dict[str, SourceStatus] = {}
        self.errors_total: Counter[tuple[str, str]] = Counter()
        self.disagreements_total: Counter[str] = Counter()
        self._disagreements_seen: set[Disagreement] = set()
        self._containers_logged: set[tuple[str, str, str]] = set()
        self._gone_pods: frozenset[str] = frozenset()  # bounded: only UIDs the state files still hold

    def use_config_reader(self, reader: Callable[[], KubeletConfig]) -> None:
        """Where the kubelet's configuration comes from instead of its files (its /configz, through the API)."""
        self.config_reader = reader

    def use_pods_reader(self, reader: Callable[[], tuple[PodRef, ...]]) -> None:
        """Where pods on this node come from (the API watch, when there is an API server)."""
        self.pods_reader = reader

    def use_dra_reader(self, reader: Callable[[], DraApiReading]) -> None:
        """This node's ResourceSlices and its pods' claims (the API watch)."""
        self.dra_reader = reader

    def build(self) -> Snapshot:
        """A new Snapshot. Raises SourceError only when sysfs has never been readable."""
        started = time.perf_counter()
        topology = self._topology()
        config = self._read(
            "kubelet_config",
            self.config_reader or self._effective_config.read,
            needed=self.config_reader is not None or self._kubelet_node(),
            note=lambda read: read.flags_unchecked or None,
        )
        config = config or KubeletConfig()
        state = self._state_files(config) if self._use_state_files else KubeletState(config=config)
        state = dataclasses.replace(
            state,
            pods=self._read("pods", self.pods_reader, needed=False),
            dra_api=self._read(RESOURCE_SLICES, self._read_dra_api, needed=False) if self.dra_reader else None,
            podresources=self._read(PODRESOURCES, self._read_podresources, needed=not self._use_state_files)
            if self._use_podresources
            else None,
        )
        if self._use_podresources and not self._statuses[PODRESOURCES].up:
            state = dataclasses.replace(state, podresources_current=False)
        if not self._use_state_files:
            state = self._from_podresources(topology, state)
        state = dataclasses.replace(
            state,
            gone_pods=self._gone_pods & entry_pods(state),
            unreadable=state.unreadable
            | frozenset(
                name
                for name, status in self._statuses.items()
                if not status.up and status.available and status.reason == "permission" and self._last.get(name) is None
            ),
        )
        contradiction = config_contradiction(state) if config.known else None
        if contradiction is not None:
            # Not what the kubelet runs with: nothing read from it is published as the kubelet's (no
            # topologyManagerPolicy in the NRT object), the source is down and says why.
            self._fail("kubelet_config", SourceContradicted("kubelet_config", contradiction))
            state = dataclasses.replace(state, config=dataclasses.replace(config, known=False))
        said = self._statuses.get("kubelet_config")
        if said is not None and not said.up and said.available and not state.config.known:
            # A kubelet runs here and its configuration is not known (unreadable, missing, contradicted): what it
            # reserves is not known either, so no CPU or memory number that depends on it is published.
            state = dataclasses.replace(state, unreadable=state.unreadable | {"kubelet_config"})
        accounting = account(topology, state, profiles=self.profiles)
        self._gone_pods = state.gone_pods | accounting.released_pods
        if accounting.crosscheck is not None:
            self._note_disagreements(accounting.crosscheck.disagreements)
        names = (
            *KUBELET_SOURCES,
            "pods",
            *((PODRESOURCES,) if self._use_podresources else ()),
            *((RESOURCE_SLICES,) if self.dra_reader else ()),
        )
        return Snapshot(
            topology=topology,
            kubelet=state,
            accounting=accounting,
            sources=(*topology.sources, *(self._statuses[name] for name in names)),
            errors_total=dict(self.errors_total),
            disagreements_total=dict(self.disagreements_total),
            taken_at=self._clock(),
            duration_seconds=time.perf_counter() - started,
        )

    def _state_files(self, config: KubeletConfig) -> KubeletState:
        """The kubelet's state files, each its last good reading."""
        return KubeletState(
            config=config,
            cpu=self._read(
                "cpu_manager_state",
                lambda: cpu_manager.read_cpu_manager_state(self.paths),
                needed=config.cpu_manager_policy == "static",
            ),
            memory=self._read(
                "memory_manager_state",
                lambda: memory_manager.read_memory_manager_state(self.paths),
                needed=config.memory_manager_policy == "Static",
            ),
            devices=self._read(
                "device_checkpoint", lambda: device_checkpoint.read_device_checkpoint(self.paths), needed=False
            ),
            dra=self._read(
                dra_state.SOURCE,
                lambda: dra_state.read_dra_manager_state(self.paths),
                needed=False,
                note=lambda checkpoint: None if checkpoint.checksum_verified else UNVERIFIED_DRA,
            ),
            dra_health=self._read(
                dra_state.HEALTH_SOURCE, lambda: dra_state.read_dra_health_state(self.paths), needed=False
            ),
        )

    def _from_podresources(self, topology: Topology, state: KubeletState) -> KubeletState:
        """The podresources-only mode: the state files are not read (each source says so), their records are
        built from the podresources reading (podresources_state.py). With no reading yet, what the static
        policies hold is unknown: nothing depending on it is published as a number."""
        for source in KUBELET_SOURCES[1:]:
            self._set(source, SourceStatus(source=source, up=False, available=False, reason="not read",
                                           message=NOT_READ))  # fmt: skip
        reading, config = state.podresources, state.config
        if reading is None:
            return dataclasses.replace(state, unreadable=frozenset({"cpu_manager_state", "memory_manager_state"}))
        pods = state.pods or ()
        return dataclasses.replace(
            state,
            cpu=podresources_state.cpu_state(reading, topology, config, pods=pods),
            memory=podresources_state.memory_state(reading, topology, pods=pods),
            devices=podresources_state.device_checkpoint(reading, pods=pods),
        )

    def _kubelet_node(self) -> bool:
        """A kubelet runs here (its state files are there): its configuration is then needed, and not finding it
        is an error, where on a machine without a kubelet it is an absent source."""
        if not self._use_state_files:
            return present(self.paths.podresources_socket)
        return any(
            present(path)
            for path in (self.paths.cpu_manager_state, self.paths.memory_manager_state, self.paths.device_checkpoint)
        )

    def _read_podresources(self) -> PodResourcesReading:
        socket = self.paths.podresources_socket
        if self._podresources_client is None:
            if not present(socket):  # protobuf and h2 (3.4 MiB resident) are loaded only where there is a socket
                raise SourceMissing(PODRESOURCES, f"{socket} does not exist (no podresources socket here)")
            from exporter.sources import podresources  # noqa: PLC0415 (imported on first use, see above)

            self._podresources_client = podresources.PodResourcesClient(socket)
        reading: PodResourcesReading = self._podresources_client.read()
        return reading

    def _read_dra_api(self) -> DraApiReading:
        """The API's DRA view, with the devices that held claims still name though no slice publishes them
        any more, as their slice last described them (a driver restarting withdraws its slices)."""
        assert self.dra_reader is not None
        reading = self.dra_reader()
        for device in reading.devices:
            self._slice_memory[device.ref] = device
        published = {device.ref for device in reading.devices}
        checkpoint = self._last.get(dra_state.SOURCE)
        held = [device for claim in reading.claims for device in claim.devices]
        held += [device for entry in (checkpoint.entries if checkpoint else ()) for device in entry.devices]
        wanted = {device.ref for device in held} - published
        for ref in set(self._slice_memory) - published - wanted:
            del self._slice_memory[ref]  # bounded: only devices some claim still holds are remembered
        remembered = tuple(self._slice_memory[ref] for ref in sorted(wanted & set(self._slice_memory), key=str))
        return dataclasses.replace(reading, remembered=remembered)

    def close(self) -> None:
        if self._podresources_client is not None:
            self._podresources_client.close()
        self._nvml.close()

    def _note_disagreements(self, disagreements: tuple[Disagreement, ...]) -> None:
        """Each distinct disagreement counted once, and logged once per container and resource."""
        for item in disagreements:
            if item in self._disagreements_seen:
                continue
            self._disagreements_seen.add(item)
            self.disagreements_total[item.resource] += 1
            who = (item.pod_uid or f"{item.namespace}/{item.pod}", item.container, item.resource)
            if who not in self._containers_logged:
                self._containers_logged.add(who)
                log.warning(
                    "podresources and the state files disagree on %s of %s/%s container %s: state files %s, "
                    "podresources %s",
                    item.resource, item.namespace or "?", item.pod or item.pod_uid, item.container,
                    item.state_files, item.podresources,
                )  # fmt: skip

    def _topology(self) -> Topology:
        try:
            topology = discover(self.paths, use_nvml=self._use_nvml, nvml_session=self._nvml, use_udev=self._use_udev)
        except SourceError as exc:
            self._count(exc)
            previous: Topology | None = self._last.get("sysfs")
            if previous is None:
                raise
            down = SourceStatus(source="sysfs", up=False, reason=exc.reason, message=exc.message)
            self._set("sysfs", down)
            return dataclasses.replace(previous, sources=(down, *previous.sources[1:]))
        for status in topology.sources:
            self._set(status.source, status)
            if not status.up and status.available:
                self.errors_total[(status.source, status.reason or "error")] += 1
        nvml_status = next((s for s in topology.sources if s.source == nvml.SOURCE), None)
        previous = self._last.get("sysfs")
        if nvml_status is not None and not nvml_status.up and nvml_status.available and previous is not None:
            topology = dataclasses.replace(topology, gpus=previous.gpus)  # keep the last good GPU list
        self._last["sysfs"] = topology
        return topology

    def _read(
        self, source: str, reader: Callable[[], T], *, needed: bool, note: Callable[[T], str | None] | None = None
    ) -> T | None:
        """`note`: what to say of a good reading that is still not quite verified (shown as the source's message)."""
        previous: T | None = self._last.get(source)
        try:
            value = reader()
        except SourceMissing as exc:
            if previous is None and not needed:
                self._set(
                    source,
                    SourceStatus(source=source, up=False, available=False, reason=exc.reason, message=exc.message),
                )
                return None
            self._fail(source, exc)
            return previous
        except SourceError as exc:
            self._fail(source, exc)
            return previous
        self._last[source] = value
        self._set(source, SourceStatus(source=source, up=True, message=note(value) if note else None))
        return value

    def _fail(self, source: str, exc: SourceError) -> None:
        self._count(exc)
        self._set(source, SourceStatus(source=source, up=False, reason=exc.reason, message=exc.message))

    def _count(self, exc: SourceError) -> None:
        self.errors_total[(exc.source, exc.reason)] += 1

    def _set(self, source: str, status: SourceStatus) -> None:
        if self._statuses.get(source) != status:
            if status.up and status.message:
                log.warning("%s: %s", source, status.message)
            elif status.up:
                log.info("%s: read and verified", source)
            elif status.available:
                log.warning("%s: %s (%s); keeping the last good reading", source, status.message, status.reason)
            else:
                log.info("%s: not present (%s)", source, status.message)
        self._statuses[source] = status

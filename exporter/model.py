"""Value types shared by every layer: what the host has and what the kubelet holds.

All are frozen, slotted and keyword-only; mappings inside them are never mutated after construction.
NUMA ids are called `numa_node`; the word "node" alone means the Kubernetes node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from exporter.cpuset import CpuSet

UNKNOWN_NUMA_NODE = -1

DeviceKind = Literal["gpu", "nic", "vf", "cpu", "other"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HugepagePool:
    size_bytes: int
    total_pages: int
    free_pages: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NumaNode:
    numa_node: int
    cpus: CpuSet
    memory_total_bytes: int
    memory_free_bytes: int
    hugepages: tuple[HugepagePool, ...]
    distances: Mapping[int, int]
    numastat: Mapping[str, int]
    # What the memory is (hardware/memory_kinds.py): dram, hbm, nvm, spm, cxl or gpu-memory; for GPU memory, the
    # owning GPU's PCI address. The kernel's memory tier where it has tiers. The hardware's view: the
    # kubelet counts every NUMA node's memory alike.
    memory_kind: str = "dram"
    memory_owner: str = ""
    memory_tier: int | None = None

    def hugepage_pool(self, size_bytes: int) -> HugepagePool | None:
        return next((pool for pool in self.hugepages if pool.size_bytes == size_bytes), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Cpu:
    cpu: int
    core_id: int
    socket_id: int
    siblings: CpuSet
    uncore_cache: int | None = None  # L3 id; the kubelet falls back to the socket id without one


@dataclass(frozen=True, slots=True, kw_only=True)
class PciDevice:
    address: str
    vendor_id: str
    device_id: str
    class_code: int
    numa_node: int
    kind: DeviceKind
    category: str
    driver: str | None = None
    net_interfaces: tuple[str, ...] = ()
    rdma_devices: tuple[str, ...] = ()
    physfn: str | None = None
    sriov_totalvfs: int | None = None
    sriov_numvfs: int | None = None
    vfs: tuple[str, ...] = ()
    vendor_name: str | None = None
    model_name: str | None = None
    pcie_root: str = ""  # `pci<domain>:<bus>` of the root complex above it
    # The PCI bridges from the root complex down to the device (root port, then each switch's upstream and
    # downstream ports), by address: what the path classes between two devices are read from (pcie.py).
    pcie_bridges: tuple[str, ...] = ()
    # Where numa_node is -1 only: the CPUs the kernel calls local to it, and the one NUMA node holding all of
    # them (discovery.py; -1 when they span NUMA nodes or are unknown). The hardware's view, never admission's.
    local_cpus: CpuSet = frozenset()
    local_numa_node: int = UNKNOWN_NUMA_NODE

    @property
    def hardware_numa_node(self) -> int:
        """`numa_node`, else the NUMA node of its local CPUs, else -1."""
        return self.numa_node if self.numa_node != UNKNOWN_NUMA_NODE else self.local_numa_node


@dataclass(frozen=True, slots=True, kw_only=True)
class MigDevice:
    index: int
    uuid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    pci_address: str
    numa_node: int
    mig_enabled: bool
    mig_devices: tuple[MigDevice, ...] = ()
    # NVML's own placement (nvmlDeviceGetCpuAffinity, nvmlDeviceGetMemoryAffinity at node scope): what
    # discovery checks sysfs against where the firmware gives the GPU no numa_node. Empty: not supported.
    nvml_cpus: CpuSet = frozenset()
    nvml_numa_nodes: frozenset[int] = frozenset()
    # NVLink and fabric facts, None where NVML does not support them (a PCIe GPU, a VM, an older driver).
    nvlinks_active: int | None = None
    fabric_cluster_uuid: str | None = None
    fabric_clique: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStatus:
    """How the last read of one source went. `available` False means absent on purpose, not broken."""

    source: str
    up: bool
    available: bool = True
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PciePath:
    """The PCIe path between two devices (pcie.py): `PIX`, `PXB`, `PHB`, `NODE` or `SYS`."""

    a: str  # PCI addresses: a < b in Topology.pcie_paths; the GPU and the NIC in a container's audit
    b: str
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """Everything discovery learned about the host's hardware."""

    numa_nodes: tuple[NumaNode, ...]
    cpus: tuple[Cpu, ...]
    pci_devices: tuple[PciDevice, ...]
    gpus: tuple[Gpu, ...]
    warnings: tuple[str, ...] = ()
    sources: tuple[SourceStatus, ...] = ()
    # Between every two GPUs, NICs, VFs and accelerators (pcie.py).
    pcie_paths: tuple[PciePath, ...] = ()

    @property
    def numa_node_ids(self) -> tuple[int, ...]:
        return tuple(numa.numa_node for numa in self.numa_nodes)

    def uncore_of_cpu(self) -> Mapping[int, int]:
        """CPU id -> uncore (L3) cache id, the socket id where sysfs gives none (as the kubelet does)."""
        return {cpu.cpu: cpu.socket_id if cpu.uncore_cache is None else cpu.uncore_cache for cpu in self.cpus}

    def numa_node_of_cpu(self) -> Mapping[int, int]:
        """CPU id -> NUMA node (the lowest one when firmware lists a CPU twice)."""
        owner: dict[int, int] = {}
        for numa in self.numa_nodes:
            for cpu in numa.cpus:
                owner.setdefault(cpu, numa.numa_node)
        return owner


# --- what the kubelet's state files hold -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuManagerState:
    """`cpu_manager_state`. v1 entries have no pod UID: they sit under pod UID "" keyed by container ID."""

    version: str
    policy_name: str
    default_cpuset: CpuSet
    entries: Mapping[str, Mapping[str, CpuSet]]
    pod_entries: Mapping[str, CpuSet]
    checksum_verified: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryTable:
    total_bytes: int
    system_reserved_bytes: int
    allocatable_bytes: int
    reserved_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryNumaState:
    numa_node: int
    number_of_assignments: int
    memory_map: Mapping[str, MemoryTable]
    cells: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryBlock:
    numa_affinity: tuple[int, ...]
    resource: str
    size_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryManagerState:
    version: str
    policy_name: str
    machine_state: Mapping[int, MemoryNumaState]
    entries: Mapping[str, Mapping[str, tuple[MemoryBlock, ...]]]
    pod_entries: Mapping[str, tuple[MemoryBlock, ...]]

    @property
    def is_static(self) -> bool:
        return self.policy_name.casefold() == "static"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceAllocation:
    """One (pod, container, resource) entry. NUMA key -1: the plugin gave no topology (and all of v1)."""

    pod_uid: str
    container: str
    resource: str
    devices_by_numa: Mapping[int, tuple[str, ...]]

    @property
    def device_ids(self) -> frozenset[str]:
        return frozenset(device for devices in self.devices_by_numa.values() for device in devices)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceCheckpoint:
    version: str
    allocations: tuple[DeviceAllocation, ...]
    registered: Mapping[str, tuple[str, ...]]


# Go's strconv.ParseBool, which the kubelet parses policy options with ("1", "t", "True", ... are on).
GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
            "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}  # fmt: skip


def option_enabled(options: Mapping[str, str], name: str) -> bool:
    return GO_BOOLS.get(options.get(name, "false"), False)


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeletConfig:
    """The fields of KubeletConfiguration (kubelet.config.k8s.io/v1beta1) NUMA alignment depends on,
    with the kubelet's defaults applied (docs/reference.md section 5)."""

    cpu_manager_policy: str = "none"
    cpu_manager_policy_options: Mapping[str, str] = field(default_factory=dict)
    memory_manager_policy: str = "None"
    topology_manager_policy: str = "none"
    topology_manager_scope: str = "container"
    topology_manager_policy_options: Mapping[str, str] = field(default_factory=dict)
    reserved_system_cpus: CpuSet = frozenset()
    reserved_memory: Mapping[int, Mapping[str, int]] = field(default_factory=dict)
    system_reserved: Mapping[str, str] = field(default_factory=dict)
    kube_reserved: Mapping[str, str] = field(default_factory=dict)
    eviction_hard: Mapping[str, str] | None = None  # None: unset, the kubelet's defaults apply
    feature_gates: Mapping[str, bool] = field(default_factory=dict)
    cgroup_driver: str = "cgroupfs"
    cgroup_root: str = "/"
    enforce_node_allocatable: tuple[str, ...] = ("pods",)
    system_reserved_cgroup: str = ""
    kube_reserved_cgroup: str = ""
    unknown_fields: tuple[str, ...] = ()  # keys the kubelet's strict decoder rejects and then ignores
    known: bool = (
        False  # read from what the kubelet runs with (its files or /configz), not contradicted by its state files
    )
    origin: tuple[str, ...] = ()  # the file and drop-ins merged, in order, then "flags" where flags applied
    # KubeletConfiguration field -> where its value came from: a file, a drop-in, "flag --name" or "/configz";
    # a field absent here has the kubelet's default.
    field_origins: Mapping[str, str] = field(default_factory=dict)
    kubelet_pid: int | None = None  # the kubelet process whose command line was applied
    flags_unchecked: str = ""  # why the kubelet's command line could not be read ("" where it was, or for /configz)

    def cpu_option(self, name: str) -> bool:
        """A CPU manager policy option is on, read as the kubelet reads it (Go's strconv.ParseBool)."""
        return option_enabled(self.cpu_manager_policy_options, name)

    @property
    def strict_cpu_reservation(self) -> bool:
        return self.cpu_option("strict-cpu-reservation")

    @property
    def max_allowable_numa_nodes(self) -> int:
        value = self.topology_manager_policy_options.get("max-allowable-numa-nodes", "8")
        return int(value) if value.isascii() and value.isdigit() else 8


@dataclass(frozen=True, slots=True, kw_only=True)
class PinnedContainer:
    """One of a pod's containers (init containers too) as the kubelet's resource managers record it when they
    admit the pod (podspec.py `pinned_containers`)."""

    name: str
    exclusive_cpu: bool = False  # Guaranteed with an integral CPU request: the static CPU manager pins it
    extended: frozenset[str] = frozenset()  # the extended resources it requests (a device plugin's, where one)


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRef:
    """A pod on this node. `spec_known`: it came from the API, so `exclusive_native` (Guaranteed with an
    integral CPU, memory or hugepages request in a steady-state container) and `non_native` (the extended
    resources those containers request) say what the scheduler's fingerprint rule needs (podspec.py), and
    `guaranteed` and `containers` what the kubelet's managers record when they admit it."""

    uid: str
    namespace: str
    name: str
    spec_known: bool = False
    exclusive_native: bool = False
    non_native: frozenset[str] = frozenset()
    running: bool = False  # status.phase Running: the kubelet admitted and started it
    finished: bool = False  # status.phase Succeeded or Failed: it holds nothing (kept only for the fingerprint)
    claims: tuple[ContainerClaim, ...] = ()  # the DRA claims its containers use
    container_ids: tuple[tuple[str, str], ...] = ()  # (runtime container ID, container name), from its statuses
    guaranteed: bool = False  # QoS class Guaranteed: the Static memory manager records every container
    containers: tuple[PinnedContainer, ...] = ()


# --- the kubelet's podresources API (sources/podresources.py) ---------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportedDevices:
    """Devices of one resource with the topology their plugin reported (empty: it reported none)."""

    resource: str
    ids: tuple[str, ...]
    numa_nodes: frozenset[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportedMemory:
    memory_type: str  # "memory" or "hugepages-<size>"
    size_bytes: int
    numa_nodes: frozenset[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimDevice:
    """One DRA device a container holds: the claim, and the driver/pool/device triplet naming the device."""

    claim_namespace: str
    claim_name: str
    driver: str
    pool: str
    device: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportedContainer:
    name: str
    cpu_ids: CpuSet
    devices: tuple[ReportedDevices, ...]
    memory: tuple[ReportedMemory, ...]
    claims: tuple[ClaimDevice, ...]

    @property
    def holds_anything(self) -> bool:
        return bool(self.cpu_ids or self.devices or self.memory or self.claims)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportedPod:
    namespace: str
    name: str
    containers: tuple[ReportedContainer, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PodResourcesReading:
    """One `List` and one `GetAllocatableResources` answer of the kubelet's podresources API (v1)."""

    pods: tuple[ReportedPod, ...]
    allocatable_cpus: CpuSet
    allocatable_devices: tuple[ReportedDevices, ...]
    allocatable_memory: tuple[ReportedMemory, ...]


# --- Dynamic Resource Allocation (sources/dra_state.py, sources/dra_api.py) -----------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DraDeviceRef:
    """A device as DRA names it: the driver, the pool in that driver, the device in that pool."""

    driver: str
    pool: str
    device: str

    def __str__(self) -> str:
        return f"{self.driver}/{self.pool}/{self.device}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DraAllocatedDevice:
    """One device of a claim's allocation, with the requests of the claim it serves (a sub-request is
    `request/subrequest`; the checkpoint may list several)."""

    ref: DraDeviceRef
    requests: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DraClaimEntry:
    """One entry of `dra_manager_state`: a claim the kubelet prepared on this node, for these pods. The
    legacy form (1.27-1.30) names the drivers but not the devices (`devices` empty, `drivers` set)."""

    claim_uid: str
    claim_name: str
    namespace: str
    pod_uids: frozenset[str]
    devices: tuple[DraAllocatedDevice, ...]
    drivers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class DraCheckpoint:
    version: str  # "v1" (the >= 1.31 `{"Data","Checksum"}` form) or "legacy" (1.27-1.30)
    entries: tuple[DraClaimEntry, ...]
    checksum_verified: bool  # False only for a legacy file whose hashed layout cannot be reproduced


@dataclass(frozen=True, slots=True, kw_only=True)
class DraDeviceHealth:
    ref: DraDeviceRef
    health: str  # "Healthy", "Unhealthy" or "Unknown", as the driver reported it
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceDevice:
    """A device one of this node's ResourceSlices publishes, with what its attributes say about where it is.
    `numa_nodes` empty: no NUMA attribute (never guessed here; hardware may still know, devices.py)."""

    ref: DraDeviceRef
    numa_nodes: frozenset[int] = frozenset()
    pci_address: str = ""
    pcie_root: str = ""
    uuid: str = ""
    cpu_ids: frozenset[int] = frozenset()  # a CPU DRA driver's device: the CPUs it hands out
    model: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DraClaim:
    """A ResourceClaim as the API server has it: its allocation's results (empty until allocated)."""

    namespace: str
    name: str
    uid: str
    devices: tuple[DraAllocatedDevice, ...]
    reserved_for: frozenset[str] = frozenset()  # pod UIDs in status.reservedFor


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerClaim:
    """A container's use of a claim: `pod.spec.containers[].resources.claims[]` resolved to the claim object's
    name (a claim made from a template is named in `status.resourceClaimStatuses`). No request: all of it."""

    container: str
    claim: str
    request: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DraApiReading:
    """This node's ResourceSlices (the newest generation of each pool) and the claims of its pods."""

    devices: tuple[SliceDevice, ...]
    claims: tuple[DraClaim, ...]
    remembered: tuple[SliceDevice, ...] = ()  # devices no slice publishes now, as a slice last described them


# --- observed placement: the kubelet's cgroup tree (sources/cgroups.py, sources/container_logs.py) ---------


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerCgroup:
    """One container's cgroup: what the kernel enforces (cpuset) and where its memory is (numa_stat)."""

    pod_uid: str
    container_id: str  # 64 hex digits, as the runtime names it
    runtime: str  # "containerd", "cri-o", "docker"
    qos: str  # "guaranteed", "burstable", "besteffort" (the kubelet's QoS cgroup it is under)
    cpus: frozenset[int]
    mems: frozenset[int]
    memory: Mapping[tuple[int, str], int]  # (NUMA node, "anon" or "file") -> bytes
    sandbox: bool = False  # the pod's pause container, by its process's command


@dataclass(frozen=True, slots=True, kw_only=True)
class CgroupReading:
    version: int  # 1 or 2
    driver: str  # "cgroupfs" or "systemd"
    containers: tuple[ContainerCgroup, ...]
    vanished: int = 0  # containers that disappeared while they were read


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggedContainer:
    """A `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` link: a container's name by its ID."""

    namespace: str
    pod: str
    container: str
    container_id: str

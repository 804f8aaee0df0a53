"""NVIDIA GPUs through NVML (the real `pynvml` from nvidia-ml-py).

No driver or no library is a normal host: `SourceUnavailable`, not an error. The GPUs' NUMA nodes are
not NVML facts: discovery joins each GPU's PCI address to sysfs, and checks it against NVML's own CPU and
memory affinity where sysfs has no answer. MIG devices are listed by UUID under their parent GPU, as the
NVIDIA device plugin advertises them (under either MIG strategy). NVLink and fabric facts where NVML
supports them; absent, without an error, where it answers NotSupported (PCIe GPUs, VMs, older drivers).

`NvmlSession`: NVML initialised once for the life of the process and reused by every refresh; an error
from a call shuts it down, and the next refresh initialises it again. (nvmlInit/nvmlShutdown cost 10-12 ms
per cycle on an H200 with persistence mode, seconds without it.)
"""

from __future__ import annotations

import ctypes
from contextlib import suppress
from typing import Any, Protocol

from exporter.errors import SourceReadError, SourceUnavailable
from exporter.model import UNKNOWN_NUMA_NODE, Gpu, MigDevice

SOURCE = "nvml"
_MIG_ENABLED = 1


class NvmlLibrary(Protocol):
    """The slice of pynvml the exporter calls; the real module satisfies it."""

    def nvmlInitWithFlags(self, flags: int) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...
    def nvmlDeviceGetName(self, handle: Any) -> str: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]: ...
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int: ...
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any: ...
    def nvmlDeviceGetCpuAffinity(self, handle: Any, size: int) -> Any: ...
    def nvmlDeviceGetMemoryAffinity(self, handle: Any, size: int, scope: int) -> Any: ...
    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int) -> int: ...
    def nvmlDeviceGetGpuFabricInfo(self, handle: Any, info: Any) -> int: ...


def normalize_pci_address(bus_id: str) -> str:
    """NVML's `00000000:3B:00.0` -> sysfs's `0000:3b:00.0`."""
    domain, _, rest = bus_id.strip().lower().partition(":")
    if len(domain) > 4 and domain.startswith("0" * (len(domain) - 4)):
        domain = domain[-4:]
    return f"{domain}:{rest}"


class NvmlSession:
    """One NVML session, opened at the first read and kept; closed after an error (reopened at the next
    read) or by `close`. `inits` counts the nvmlInit calls that succeeded."""

    def __init__(self, library: NvmlLibrary | None = None) -> None:
        self._library = library
        self._open = False
        self.inits = 0

    def read_gpus(self) -> tuple[Gpu, ...]:
        """Every GPU NVML sees, with `numa_node` left unknown for discovery to fill from sysfs."""
        nvml = self._library if self._library is not None else _import_pynvml()
        if not self._open:
            _init(nvml)
            self._open = True
            self.inits += 1
        try:
            return tuple(_read_gpu(nvml, index) for index in range(_call(nvml.nvmlDeviceGetCount)))
        except SourceReadError:
            self.close()
            raise

    def close(self) -> None:
        if self._open:
            nvml = self._library if self._library is not None else _import_pynvml()
            with suppress(_import_pynvml().NVMLError):
                nvml.nvmlShutdown()
            self._open = False


def read_gpus(library: NvmlLibrary | None = None) -> tuple[Gpu, ...]:
    """One read in a session of its own (a one-shot command)."""
    session = NvmlSession(library)
    try:
        return session.read_gpus()
    finally:
        session.close()


def _read_gpu(nvml: NvmlLibrary, index: int) -> Gpu:
    handle = _call(nvml.nvmlDeviceGetHandleByIndex, index)
    pci = _call(nvml.nvmlDeviceGetPciInfo, handle)
    bus_id = pci.busId.decode() if isinstance(pci.busId, bytes) else str(pci.busId)
    mig_enabled = _mig_enabled(nvml, handle)
    return Gpu(
        index=index,
        uuid=_text(_call(nvml.nvmlDeviceGetUUID, handle)),
        name=_text(_call(nvml.nvmlDeviceGetName, handle)),
        memory_total_bytes=int(_call(nvml.nvmlDeviceGetMemoryInfo, handle).total),
        pci_address=normalize_pci_address(bus_id),
        numa_node=UNKNOWN_NUMA_NODE,
        mig_enabled=mig_enabled,
        mig_devices=_mig_devices(nvml, handle) if mig_enabled else (),
        nvml_cpus=_mask(_optional(nvml.nvmlDeviceGetCpuAffinity, handle, _CPU_WORDS)),
        nvml_numa_nodes=_mask(_optional(nvml.nvmlDeviceGetMemoryAffinity, handle, _NODE_WORDS, _SCOPE_NODE)),
        nvlinks_active=_nvlinks(nvml, handle),
        **_fabric(nvml, handle),
    )


_CPU_WORDS = 64  # 64-bit words: 4096 CPUs
_NODE_WORDS = 16  # 1024 NUMA nodes (GPU memory nodes are numbered up to 255 and beyond)
_SCOPE_NODE = 0  # NVML_AFFINITY_SCOPE_NODE
_MAX_LINKS = 36  # NVML_NVLINK_MAX_LINKS


def _optional(function: Any, *args: Any) -> Any:
    """A call whose NotSupported (or a function this driver lacks) means "absent": None. Other errors raise."""
    pynvml = _import_pynvml()
    try:
        return function(*args)
    except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_InvalidArgument):
        return None
    except pynvml.NVMLError as exc:
        raise SourceReadError(SOURCE, f"{getattr(function, '__name__', 'nvml')}: {exc}") from None


def _mask(words: Any) -> frozenset[int]:
    """NVML's affinity bitmask (an array of 64-bit words, lowest first) as the set bits' indexes."""
    if words is None:
        return frozenset()
    return frozenset(index * 64 + bit for index, word in enumerate(words) for bit in range(64) if int(word) >> bit & 1)


def _nvlinks(nvml: NvmlLibrary, handle: Any) -> int | None:
    """Active NVLinks; None where link 0 is not supported (no NVLink), counting stops at the first link the
    GPU does not have."""
    active = None
    for link in range(_MAX_LINKS):
        state = _optional(nvml.nvmlDeviceGetNvLinkState, handle, link)
        if state is None:
            break
        active = (active or 0) + (1 if int(state) else 0)
    return active


def _fabric(nvml: NvmlLibrary, handle: Any) -> dict[str, Any]:
    """The NVLink fabric's cluster UUID and clique (GB200 NVL72, H100/H200 NVSwitch systems with fabric
    manager); nothing where NVML does not support it or the GPU is not registered in a fabric."""
    pynvml = _import_pynvml()
    info = pynvml.c_nvmlGpuFabricInfo_t()
    if _optional(nvml.nvmlDeviceGetGpuFabricInfo, handle, ctypes.byref(info)) is None:
        return {}
    if int(info.state) != _FABRIC_COMPLETED or int(info.status) != 0:
        return {}
    raw = bytes(info.clusterUuid)
    cluster = "-".join(raw[a:b].hex() for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 16)))
    return {"fabric_cluster_uuid": cluster, "fabric_clique": int(info.cliqueId)}


_FABRIC_COMPLETED = 3  # NVML_GPU_FABRIC_STATE_COMPLETED


def _mig_enabled(nvml: NvmlLibrary, handle: Any) -> bool:
    pynvml = _import_pynvml()
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError_NotSupported:
        return False
    except pynvml.NVMLError as exc:
        raise SourceReadError(SOURCE, f"nvmlDeviceGetMigMode: {exc}") from None
    return int(current) == _MIG_ENABLED


def _mig_devices(nvml: NvmlLibrary, handle: Any) -> tuple[MigDevice, ...]:
    pynvml = _import_pynvml()
    devices = []
    for slot in range(_call(nvml.nvmlDeviceGetMaxMigDeviceCount, handle)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError_NotFound:
            continue
        except pynvml.NVMLError as exc:
            raise SourceReadError(SOURCE, f"nvmlDeviceGetMigDeviceHandleByIndex: {exc}") from None
        devices.append(MigDevice(index=slot, uuid=_text(_call(nvml.nvmlDeviceGetUUID, mig))))
    return tuple(devices)


def _init(nvml: NvmlLibrary) -> None:
    pynvml = _import_pynvml()
    try:
        nvml.nvmlInitWithFlags(0)
    except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded) as exc:
        raise SourceUnavailable(SOURCE, f"no NVIDIA driver on this host ({exc})") from None
    except pynvml.NVMLError as exc:
        raise SourceReadError(SOURCE, f"nvmlInitWithFlags: {exc}") from None


def _call(function: Any, *args: Any) -> Any:
    pynvml = _import_pynvml()
    try:
        return function(*args)
    except pynvml.NVMLError as exc:
        raise SourceReadError(SOURCE, f"{getattr(function, '__name__', 'nvml')}: {exc}") from None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _import_pynvml() -> Any:
    try:
        import pynvml  # noqa: PLC0415 - imported lazily: the exporter runs on hosts without it
    except ImportError:  # pragma: no cover - a declared dependency
        raise SourceUnavailable(SOURCE, "the nvidia-ml-py package is not installed") from None
    return pynvml

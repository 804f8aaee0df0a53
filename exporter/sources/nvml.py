"""NVIDIA GPUs through NVML (the real `pynvml` from nvidia-ml-py).

No driver or no library is a normal host: `SourceUnavailable`, not an error. The GPUs' NUMA nodes are
not NVML facts: discovery joins each GPU's PCI address to sysfs. MIG devices are listed by UUID under
their parent GPU, as the NVIDIA device plugin advertises them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


def normalize_pci_address(bus_id: str) -> str:
    """NVML's `00000000:3B:00.0` -> sysfs's `0000:3b:00.0`."""
    domain, _, rest = bus_id.strip().lower().partition(":")
    if len(domain) > 4 and domain.startswith("0" * (len(domain) - 4)):
        domain = domain[-4:]
    return f"{domain}:{rest}"


def read_gpus(library: NvmlLibrary | None = None) -> tuple[Gpu, ...]:
    """Every GPU NVML sees, with `numa_node` left unknown for discovery to fill from sysfs."""
    nvml = library if library is not None else _import_pynvml()
    with _session(nvml):
        return tuple(_read_gpu(nvml, index) for index in range(_call(nvml.nvmlDeviceGetCount)))


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
    )


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


@contextmanager
def _session(nvml: NvmlLibrary) -> Iterator[None]:
    pynvml = _import_pynvml()
    try:
        nvml.nvmlInitWithFlags(0)
    except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded) as exc:
        raise SourceUnavailable(SOURCE, f"no NVIDIA driver on this host ({exc})") from None
    except pynvml.NVMLError as exc:
        raise SourceReadError(SOURCE, f"nvmlInitWithFlags: {exc}") from None
    try:
        yield
    finally:
        with suppress(pynvml.NVMLError):
            nvml.nvmlShutdown()


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

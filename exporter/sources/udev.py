"""Human names of PCI devices from the udev hardware database (hwdb), through pyudev.

Only for the running machine's own /sys: udev describes that machine and no other. Names come from the
device's udev properties when udevd recorded them, else from a hwdb lookup of its modalias (a container
without udevd still has the hwdb file). No libudev or no hwdb: the source is unavailable, not failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.errors import SourceUnavailable

SOURCE = "udev"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceName:
    vendor: str | None
    model: str | None


def read_pci_names() -> Mapping[str, DeviceName]:
    """PCI address -> vendor/model strings, for every PCI device udev knows."""
    try:
        import pyudev  # noqa: PLC0415 - libudev may be absent; imported where it is needed
        from pyudev._util import udev_list_iterate  # noqa: PLC0415
    except ImportError as exc:
        raise SourceUnavailable(SOURCE, f"pyudev or libudev is not available ({exc})") from None
    try:
        context = pyudev.Context()
        devices = list(context.list_devices(subsystem="pci"))
    except Exception as exc:  # libudev raises OSError subclasses or its own errors
        raise SourceUnavailable(SOURCE, f"libudev cannot enumerate devices ({exc})") from None
    hwdb = _open_hwdb(context)
    try:
        names: dict[str, DeviceName] = {}
        for device in devices:
            properties: dict[str, str] = dict(device.properties)
            if "ID_VENDOR_FROM_DATABASE" not in properties and hwdb is not None:
                properties.update(_hwdb_lookup(context, hwdb, properties.get("MODALIAS"), udev_list_iterate))
            names[device.sys_name] = DeviceName(
                vendor=properties.get("ID_VENDOR_FROM_DATABASE"),
                model=properties.get("ID_MODEL_FROM_DATABASE"),
            )
        if names and not any(name.vendor or name.model for name in names.values()):
            raise SourceUnavailable(SOURCE, "no device has a name: the udev hardware database (hwdb.bin) is missing "
                                    "(install the udev package)")  # fmt: skip
        return names
    finally:
        if hwdb is not None:
            context._libudev.udev_hwdb_unref(hwdb)


def _open_hwdb(context: Any) -> Any:
    try:
        hwdb = context._libudev.udev_hwdb_new(context)
    except Exception:
        return None
    return hwdb or None


def _hwdb_lookup(context: Any, hwdb: Any, modalias: str | None, iterate: Any) -> dict[str, str]:
    if not modalias:
        return {}
    libudev = context._libudev
    entry = libudev.udev_hwdb_get_properties_list_entry(hwdb, modalias.encode(), 0)
    if not entry:
        return {}
    return {key.decode(): value.decode() for key, value in iterate(libudev, entry)}

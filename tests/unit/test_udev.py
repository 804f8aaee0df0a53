"""pyudev on this machine's real /sys: device names come from the hwdb."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.hardware.discovery import discover
from exporter.paths import HostPaths
from exporter.sources.udev import read_pci_names

REAL_PCI = Path("/sys/bus/pci/devices")
HWDB = [Path("/lib/udev/hwdb.bin"), Path("/etc/udev/hwdb.bin"), Path("/usr/lib/udev/hwdb.bin")]


@pytest.mark.skipif(not REAL_PCI.is_dir() or not any(REAL_PCI.iterdir()), reason="this machine shows no PCI bus")
@pytest.mark.skipif(not any(path.exists() for path in HWDB), reason="no udev hwdb (make test installs udev)")
def test_real_pci_devices_get_vendor_names() -> None:
    names = read_pci_names()
    assert set(names) == {path.name for path in REAL_PCI.iterdir()}
    assert any(name.vendor for name in names.values())


def test_udev_is_consulted_only_for_the_real_sysfs(machine) -> None:  # type: ignore[no-untyped-def]
    assert not machine.paths.is_real_sysfs
    topology = discover(machine.paths, use_nvml=False)
    assert "udev" not in {status.source for status in topology.sources}
    assert all(device.vendor_name is None for device in topology.pci_devices)
    assert HostPaths().is_real_sysfs == Path("/sys").is_dir()


def test_no_hwdb_is_unavailable_not_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the udev package missing there is no hwdb: no device gets a name, and the source says so instead
    of `udev ok` with every name `-`."""
    import pyudev

    from exporter.errors import SourceUnavailable
    from exporter.sources import udev

    monkeypatch.setattr(udev, "_open_hwdb", lambda context: None)
    nameless = [
        type("Device", (), {"properties": {"MODALIAS": "pci:v00008086d00001572"}, "sys_name": "0000:00:00.0"})()
    ]
    monkeypatch.setattr(pyudev.Context, "list_devices", lambda self, **match: nameless)
    with pytest.raises(SourceUnavailable, match="hwdb"):
        udev.read_pci_names()

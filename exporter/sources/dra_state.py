"""`<kubelet>/dra_manager_state` (the DRA manager's claim cache) and `<kubelet>/dra_health_state`.

`dra_manager_state` comes in two generations (docs/reference.md section 3.3):

* >= 1.31 (unchanged to 1.37): `{"Data": "<JSON text>", "Checksum": N}` where N is CRC-32 (IEEE) of the
  `Data` bytes and `Data` decodes to `{"kind": "DRACheckpoint", "apiVersion":
  "checkpoint.dra.kubelet.k8s.io/v1", "Entries": [...]}`. Each entry is a claim the kubelet prepared: its
  UID, name, namespace, pod UIDs, and per driver the devices (pool, device, request names, CDI IDs).
* 1.27-1.30 ("legacy"): `{"version": "v1", "entries": [...], "checksum": N}` with N the FNV-1a 32 of the
  go-spew text of the decoded struct, as for the CPU and memory files. Entries name a driver and CDI
  devices, never a pool or a device. The hashed text depends on the `ResourceHandle` type of the release;
  the layouts those releases used are tried in turn (three upstream vectors reproduce). An entry whose
  handle carries `structuredData` (1.30 structured parameters) prints a struct this reader does not
  reproduce: such a file is read with `checksum_verified=False`, and says so.

`dra_health_state` is plain JSON without a checksum, written by the kubelet whenever a driver's health
report changes: `{driver: {"Devices": {"<pool>/<device>": {PoolName, DeviceName, Health, Message, ...}}}}`.
The kubelet rewrites it only on a change, so an old `LastUpdated` does not mean a stale report.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from exporter.errors import SourceChecksumError, SourceFormatError, SourceParseError
from exporter.model import DraAllocatedDevice, DraCheckpoint, DraClaimEntry, DraDeviceHealth, DraDeviceRef
from exporter.paths import HostPaths
from exporter.sources import kubelet_json as kj
from exporter.sources.files import read_bounded

SOURCE = "dra_manager_state"
HEALTH_SOURCE = "dra_health_state"
KIND = "DRACheckpoint"
API_VERSION = "checkpoint.dra.kubelet.k8s.io/v1"
HEALTH_STATES = ("Healthy", "Unhealthy", "Unknown")


def read_dra_manager_state(paths: HostPaths, *, limit_bytes: int = kj.DEFAULT_LIMIT_BYTES) -> DraCheckpoint:
    return parse_dra_manager_state(read_bounded(paths.dra_manager_state, source=SOURCE, limit_bytes=limit_bytes))


def parse_dra_manager_state(raw: bytes) -> DraCheckpoint:
    obj = kj.decode_object(raw, source=SOURCE)
    if kj.has_field(obj, "Data"):
        return _parse_current(obj)
    if kj.has_field(obj, "entries") or kj.has_field(obj, "version"):
        return _parse_legacy(obj)
    raise SourceFormatError(SOURCE, "neither the {Data, Checksum} form (>= 1.31) nor the legacy {version, entries}")


# --- >= 1.31 ------------------------------------------------------------------------------------------------


def _parse_current(obj: dict[str, Any]) -> DraCheckpoint:
    data = kj.expect_str(kj.field(obj, "Data"), source=SOURCE, what="Data")
    checksum = kj.expect_uint(kj.field(obj, "Checksum"), source=SOURCE, what="Checksum")
    if zlib.crc32(data.encode("utf-8")) != checksum:
        raise SourceChecksumError(SOURCE, f"checksum {checksum} is not the CRC-32 of the file's Data")
    inner = kj.decode_object(data.encode("utf-8"), source=SOURCE)
    kind = kj.field(inner, "kind")
    version = kj.field(inner, "apiVersion")
    if kind != KIND or version != API_VERSION:
        raise SourceFormatError(SOURCE, f"Data is {kind!r} {version!r}, not {KIND} {API_VERSION}")
    entries = kj.expect_list(kj.field(inner, "Entries"), source=SOURCE, what="Entries") or []
    return DraCheckpoint(version="v1", entries=tuple(_entry(entry) for entry in entries), checksum_verified=True)


def _entry(value: Any) -> DraClaimEntry:
    entry = kj.expect_object(value, source=SOURCE, what="Entries[]") or {}
    devices: list[DraAllocatedDevice] = []
    driver_state = kj.expect_object(kj.field(entry, "DriverState"), source=SOURCE, what="DriverState") or {}
    for driver, state in sorted(driver_state.items()):
        body = kj.expect_object(state, source=SOURCE, what=f"DriverState[{driver}]") or {}
        for item in kj.expect_list(kj.field(body, "Devices"), source=SOURCE, what="Devices") or []:
            device = kj.expect_object(item, source=SOURCE, what="Devices[]") or {}
            ref = DraDeviceRef(
                driver=driver,
                pool=kj.expect_str(kj.field(device, "PoolName"), source=SOURCE, what="PoolName"),
                device=kj.expect_str(kj.field(device, "DeviceName"), source=SOURCE, what="DeviceName"),
            )
            if not ref.pool or not ref.device:
                raise SourceParseError(SOURCE, f"a device of driver {driver} has no PoolName or DeviceName")
            requests = tuple(_strings(kj.field(device, "RequestNames"), "RequestNames"))
            devices.append(DraAllocatedDevice(ref=ref, requests=requests))
    return DraClaimEntry(
        claim_uid=kj.expect_str(kj.field(entry, "ClaimUID"), source=SOURCE, what="ClaimUID"),
        claim_name=kj.expect_str(kj.field(entry, "ClaimName"), source=SOURCE, what="ClaimName"),
        namespace=kj.expect_str(kj.field(entry, "Namespace"), source=SOURCE, what="Namespace"),
        pod_uids=_pod_uids(kj.field(entry, "PodUIDs")),
        devices=tuple(devices),
        drivers=frozenset(driver_state),
    )


def _pod_uids(value: Any) -> frozenset[str]:
    """`sets.Set[string]` marshals as an object whose keys are the members."""
    return frozenset(kj.expect_object(value, source=SOURCE, what="PodUIDs") or {})


def _strings(value: Any, what: str) -> list[str]:
    return [
        kj.expect_str(item, source=SOURCE, what=what, allow_null=False)
        for item in kj.expect_list(value, source=SOURCE, what=what) or []
    ]


# --- 1.27-1.30 ----------------------------------------------------------------------------------------------


def _parse_legacy(obj: dict[str, Any]) -> DraCheckpoint:
    version = kj.expect_str(kj.field(obj, "version"), source=SOURCE, what="version")
    if version != "v1":
        raise SourceFormatError(SOURCE, f"legacy checkpoint version {version!r} is not v1")
    checksum = kj.expect_uint(kj.field(obj, "checksum"), source=SOURCE, what="checksum")
    raw_entries = kj.expect_list(kj.field(obj, "entries"), source=SOURCE, what="entries")
    entries = tuple(_legacy_entry(entry) for entry in raw_entries or [])
    structured = any(
        kj.field(handle, "structuredData") is not None
        for entry in raw_entries or []
        for handle in (kj.field(entry, "ResourceHandles") or [])
        if isinstance(handle, dict)
    )
    if structured:
        return DraCheckpoint(version="legacy", entries=entries, checksum_verified=False)
    texts = (legacy_hash_text(obj, layout=layout) for layout in LEGACY_LAYOUTS)
    if not any(kj.spew_checksum(text) == checksum for text in texts):
        raise SourceChecksumError(SOURCE, f"checksum {checksum} matches none of the legacy layouts (1.27-1.30)")
    return DraCheckpoint(version="legacy", entries=entries, checksum_verified=True)


def _legacy_entry(value: Any) -> DraClaimEntry:
    entry = kj.expect_object(value, source=SOURCE, what="entries[]") or {}
    driver = kj.expect_str(kj.field(entry, "DriverName"), source=SOURCE, what="DriverName")
    cdi = kj.expect_object(kj.field(entry, "CDIDevices"), source=SOURCE, what="CDIDevices") or {}
    handles = kj.expect_list(kj.field(entry, "ResourceHandles"), source=SOURCE, what="ResourceHandles") or []
    drivers = {driver, *cdi}
    for handle in handles:
        body = kj.expect_object(handle, source=SOURCE, what="ResourceHandles[]") or {}
        drivers.add(kj.expect_str(kj.field(body, "driverName"), source=SOURCE, what="driverName"))
    return DraClaimEntry(
        claim_uid=kj.expect_str(kj.field(entry, "ClaimUID"), source=SOURCE, what="ClaimUID"),
        claim_name=kj.expect_str(kj.field(entry, "ClaimName"), source=SOURCE, what="ClaimName"),
        namespace=kj.expect_str(kj.field(entry, "Namespace"), source=SOURCE, what="Namespace"),
        pod_uids=_pod_uids(kj.field(entry, "PodUIDs")),
        devices=(),
        drivers=frozenset(drivers - {""}),
    )


def _handle_fields(structured: bool) -> Callable[[dict[str, Any]], list[tuple[str, str]]]:
    def render(handle: dict[str, Any]) -> list[tuple[str, str]]:
        fields = [
            ("DriverName", kj.typed("string", kj.field(handle, "driverName") or "")),
            ("Data", kj.typed("string", kj.field(handle, "data") or "")),
        ]
        if structured:
            fields.append(("StructuredData", kj.typed("*v1alpha2.StructuredResourceHandle", "<nil>")))
        return fields

    return render


# The ResourceHandle layouts of 1.27-1.30 (None: the entry struct had no ResourceHandles field yet).
LEGACY_LAYOUTS: tuple[Callable[[dict[str, Any]], list[tuple[str, str]]] | None, ...] = (
    _handle_fields(structured=True),  # 1.30 (and 1.29): v1alpha2 with StructuredData
    _handle_fields(structured=False),  # 1.28
    None,  # 1.27: ClaimInfoState without ResourceHandles
)


def legacy_hash_text(obj: dict[str, Any], *, layout: Callable[[dict[str, Any]], list[tuple[str, str]]] | None) -> str:
    """The go-spew text a 1.27-1.30 kubelet hashes for the decoded `DRAManagerCheckpoint`."""
    entries_text = kj.field_text(
        obj, "entries", absent="[]", render=lambda entries: kj.go_slice(_legacy_entry_text(e, layout) for e in entries)
    )
    return kj.typed(
        "*state.DRAManagerCheckpoint",
        kj.struct(
            [
                ("Version", kj.typed("string", kj.field(obj, "version") or "")),
                ("Entries", kj.typed("state.ClaimInfoStateList", entries_text)),
                ("Checksum", kj.typed("checksum.Checksum", "0")),
            ]
        ),
    )


def _legacy_entry_text(entry: dict[str, Any], layout: Callable[[dict[str, Any]], list[tuple[str, str]]] | None) -> str:
    pod_uids = kj.field(entry, "PodUIDs")
    fields = [
        ("DriverName", kj.typed("string", kj.field(entry, "DriverName") or "")),
        ("ClassName", kj.typed("string", kj.field(entry, "ClassName") or "")),
        ("ClaimUID", kj.typed("types.UID", kj.field(entry, "ClaimUID") or "")),
        ("ClaimName", kj.typed("string", kj.field(entry, "ClaimName") or "")),
        ("Namespace", kj.typed("string", kj.field(entry, "Namespace") or "")),
        (
            "PodUIDs",
            kj.typed("sets.Set[string]", kj.go_map(None if pod_uids is None else dict.fromkeys(pod_uids, "{}"))),
        ),
    ]
    if layout is not None:
        handles = kj.field(entry, "ResourceHandles")
        text = "<nil>" if handles is None else kj.go_slice(kj.struct(layout(handle)) for handle in handles)
        fields.append(("ResourceHandles", kj.typed("[]v1alpha2.ResourceHandle", text)))
    cdi = kj.field(entry, "CDIDevices")
    cdi_text = kj.go_map(None if cdi is None else {driver: kj.go_slice(ids) for driver, ids in cdi.items()})
    fields.append(("CDIDevices", kj.typed("map[string][]string", cdi_text)))
    return kj.struct(fields)


# --- dra_health_state ---------------------------------------------------------------------------------------


def read_dra_health_state(
    paths: HostPaths, *, limit_bytes: int = kj.DEFAULT_LIMIT_BYTES
) -> tuple[DraDeviceHealth, ...]:
    return parse_dra_health_state(read_bounded(paths.dra_health_state, source=HEALTH_SOURCE, limit_bytes=limit_bytes))


def parse_dra_health_state(raw: bytes) -> tuple[DraDeviceHealth, ...]:
    obj = kj.decode_object(raw, source=HEALTH_SOURCE)
    found = []
    for driver, state in sorted(obj.items()):
        body = kj.expect_object(state, source=HEALTH_SOURCE, what=f"{driver}") or {}
        devices = kj.expect_object(kj.field(body, "Devices"), source=HEALTH_SOURCE, what="Devices") or {}
        for key, value in sorted(devices.items()):
            device = kj.expect_object(value, source=HEALTH_SOURCE, what=f"Devices[{key}]") or {}
            pool = kj.expect_str(kj.field(device, "PoolName"), source=HEALTH_SOURCE, what="PoolName")
            name = kj.expect_str(kj.field(device, "DeviceName"), source=HEALTH_SOURCE, what="DeviceName")
            if not pool or not name:
                pool, _, name = key.rpartition("/")
            health = kj.expect_str(kj.field(device, "Health"), source=HEALTH_SOURCE, what="Health")
            found.append(
                DraDeviceHealth(
                    ref=DraDeviceRef(driver=driver, pool=pool, device=name),
                    health=health if health in HEALTH_STATES else "Unknown",
                    message=kj.expect_str(kj.field(device, "Message"), source=HEALTH_SOURCE, what="Message"),
                )
            )
    return tuple(found)

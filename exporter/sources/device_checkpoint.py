"""`<kubelet>/device-plugins/kubelet_internal_checkpoint`: v2 (k8s >= 1.20) and v1 (<= 1.19).

v2 `DeviceIDs` maps NUMA id -> device IDs (key -1: the plugin gave no topology; a device under several
keys appears under each). v1 `DeviceIDs` is a flat list: no NUMA, kept under -1 here. The kubelet tries v2
first and falls back to v1 when the file does not decode as v2; so do we. The checksum covers `Data` only.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from exporter.errors import SourceChecksumError, SourceParseError
from exporter.model import UNKNOWN_NUMA_NODE, DeviceAllocation, DeviceCheckpoint
from exporter.paths import HostPaths
from exporter.sources import kubelet_json as kj
from exporter.sources.files import read_bounded

SOURCE = "device_checkpoint"


def read_device_checkpoint(paths: HostPaths, *, limit_bytes: int = kj.DEFAULT_LIMIT_BYTES) -> DeviceCheckpoint:
    return parse_device_checkpoint(read_bounded(paths.device_checkpoint, source=SOURCE, limit_bytes=limit_bytes))


def parse_device_checkpoint(raw: bytes) -> DeviceCheckpoint:
    obj = kj.decode_object(raw, source=SOURCE)
    data = kj.expect_object(kj.field(obj, "Data"), source=SOURCE, what="Data")
    checksum = kj.expect_uint(kj.field(obj, "Checksum"), source=SOURCE, what="Checksum")
    data = data or {}
    entries = kj.expect_list(kj.field(data, "PodDeviceEntries"), source=SOURCE, what="PodDeviceEntries")
    is_v1 = any(isinstance(kj.field(entry, "DeviceIDs"), list) for entry in entries or [] if isinstance(entry, dict))
    version = "v1" if is_v1 else "v2"
    allocations = tuple(_allocation(entry, v1=is_v1) for entry in entries or [])
    registered = {
        resource: tuple(_strings(ids, f"RegisteredDevices[{resource}]"))
        for resource, ids in (
            kj.expect_object(kj.field(data, "RegisteredDevices"), source=SOURCE, what="RegisteredDevices") or {}
        ).items()
    }
    if kj.spew_checksum(hash_text(data, v1=is_v1)) != checksum:
        raise SourceChecksumError(SOURCE, f"checksum {checksum} does not match the file's content")
    return DeviceCheckpoint(version=version, allocations=allocations, registered=registered)


def _allocation(entry: Any, *, v1: bool) -> DeviceAllocation:
    body = kj.expect_object(entry, source=SOURCE, what="PodDeviceEntries[]") or {}
    raw_ids = kj.field(body, "DeviceIDs")
    by_numa: dict[int, tuple[str, ...]] = {}
    if v1:
        if raw_ids is not None and not isinstance(raw_ids, list):
            raise SourceParseError(SOURCE, "DeviceIDs mix the v1 (list) and v2 (NUMA map) shapes")
        by_numa[UNKNOWN_NUMA_NODE] = tuple(_strings(raw_ids, "DeviceIDs"))
    else:
        for key, ids in (kj.expect_object(raw_ids, source=SOURCE, what="DeviceIDs") or {}).items():
            by_numa[kj.int_key(key, source=SOURCE, what="DeviceIDs")] = tuple(_strings(ids, "DeviceIDs"))
    return DeviceAllocation(
        pod_uid=kj.expect_str(kj.field(body, "PodUID"), source=SOURCE, what="PodUID"),
        container=kj.expect_str(kj.field(body, "ContainerName"), source=SOURCE, what="ContainerName"),
        resource=kj.expect_str(kj.field(body, "ResourceName"), source=SOURCE, what="ResourceName"),
        devices_by_numa=by_numa,
    )


def _strings(value: Any, what: str) -> list[str]:
    return [
        kj.expect_str(item, source=SOURCE, what=what, allow_null=False)
        for item in kj.expect_list(value, source=SOURCE, what=what) or []
    ]


def _alloc_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    text = kj.expect_str(value, source=SOURCE, what="AllocResp")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SourceParseError(SOURCE, "AllocResp is not valid base64") from None


def hash_text(data: dict[str, Any], *, v1: bool) -> str:
    """The go-spew text the kubelet hashes for the decoded `Data` object."""
    entries_text = kj.field_text(
        data,
        "PodDeviceEntries",
        absent="[]",
        render=lambda entries: kj.go_slice(_entry_text(e, v1=v1) for e in entries),
    )
    registered_text = kj.field_text(
        data,
        "RegisteredDevices",
        absent="map[]",
        render=lambda registered: kj.go_map({resource: kj.go_slice(ids) for resource, ids in registered.items()}),
    )
    return kj.typed(
        "checkpoint.checkpointData",
        kj.struct(
            [
                ("PodDeviceEntries", kj.typed("[]checkpoint.PodDevicesEntry", entries_text)),
                ("RegisteredDevices", kj.typed("map[string][]string", registered_text)),
            ]
        ),
    )


def _entry_text(entry: dict[str, Any], *, v1: bool) -> str:
    raw_ids = kj.field(entry, "DeviceIDs")
    if v1:
        ids_text = kj.typed("[]string", kj.go_slice(raw_ids))
    else:
        ids_text = kj.typed(
            "checkpoint.DevicesPerNUMA",
            "<nil>"
            if raw_ids is None
            else kj.go_map({str(int(key)): kj.go_slice(ids) for key, ids in raw_ids.items()}, int_keys=True),
        )
    return kj.struct(
        [
            ("PodUID", kj.typed("string", kj.field(entry, "PodUID") or "")),
            ("ContainerName", kj.typed("string", kj.field(entry, "ContainerName") or "")),
            ("ResourceName", kj.typed("string", kj.field(entry, "ResourceName") or "")),
            ("DeviceIDs", ids_text),
            ("AllocResp", kj.typed("[]uint8", kj.go_bytes(_alloc_bytes(kj.field(entry, "AllocResp"))))),
        ]
    )

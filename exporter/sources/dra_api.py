"""DRA objects of the API server (`resource.k8s.io/v1`), as plain JSON in, frozen values out. Pure.

* ResourceSlices of this node (`spec.nodeName`): each lists devices of one (driver, pool). Only the
  slices of a pool's newest `pool.generation` count, as the scheduler's allocator decides (older ones are
  being replaced). A device's attributes (`spec.devices[].attributes`, under `basic` in v1beta1) are
  `{name: {int|string|bool|version: value}}`; a name without a domain belongs to the driver's domain.
  What says where a device is (docs/reference.md section 3.3):
  `resource.kubernetes.io/numaNode` (an int; a list where list-type attributes are on), the CPU driver's
  `dra.cpu/numaNodeID`; `resource.kubernetes.io/pciBusID` or the NVIDIA driver's `pcieBusID`; the
  standard `resource.kubernetes.io/pcieRoot`; a GPU `uuid`. Where none gives the NUMA node, hardware may
  (devices.py); nothing here guesses.
* ResourceClaims: `status.allocation.devices.results[]` (`request`, `driver`, `pool`, `device`) and
  `status.reservedFor[]` (the pods using it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from exporter.model import DraAllocatedDevice, DraClaim, DraDeviceRef, SliceDevice

STANDARD = "resource.kubernetes.io"
NUMA_ATTRIBUTES = (f"{STANDARD}/numaNode", "dra.cpu/numaNodeID", "dra.net/numaNode")
PCI_ATTRIBUTES = (f"{STANDARD}/pciBusID", "pcieBusID", "pciBusID", "pciAddress")
PCIE_ROOT = f"{STANDARD}/pcieRoot"
UUID_ATTRIBUTES = ("uuid",)
CPU_ID = "dra.cpu/cpuID"
MODEL_ATTRIBUTES = ("productName", "model", "type")


def slice_devices(slices: Iterable[Any], *, node_name: str) -> tuple[SliceDevice, ...]:
    """The devices this node's slices publish, the newest generation of each pool only; malformed slices
    and devices are skipped (the API server validated them; a bad one says nothing reliable)."""
    newest: dict[tuple[str, str], int] = {}
    usable = []
    for item in slices:
        spec = _object(_object(item).get("spec"))
        pool = _object(spec.get("pool"))
        driver, name = spec.get("driver"), pool.get("name")
        if not isinstance(driver, str) or not isinstance(name, str) or spec.get("nodeName") != node_name:
            continue
        raw_generation = pool.get("generation")
        generation = raw_generation if isinstance(raw_generation, int) else 0
        usable.append((driver, name, generation, spec))
        newest[(driver, name)] = max(newest.get((driver, name), generation), generation)
    found: dict[DraDeviceRef, SliceDevice] = {}
    for driver, pool_name, generation, spec in usable:
        if generation != newest[(driver, pool_name)]:
            continue
        for device in spec.get("devices") or []:
            parsed = _device(driver, pool_name, device)
            if parsed is not None:
                found.setdefault(parsed.ref, parsed)
    return tuple(found[ref] for ref in sorted(found, key=str))


def _device(driver: str, pool: str, value: Any) -> SliceDevice | None:
    device = _object(value)
    name = device.get("name")
    if not isinstance(name, str) or not name:
        return None
    raw = device.get("attributes")
    if raw is None:
        raw = _object(device.get("basic")).get("attributes")
    attributes = _qualified(driver, _object(raw))
    numas = next((found for key in NUMA_ATTRIBUTES if (found := _ints(attributes, key))), frozenset())
    return SliceDevice(
        ref=DraDeviceRef(driver=driver, pool=pool, device=name),
        numa_nodes=frozenset(n for n in numas if n >= 0),
        pci_address=_first_string(attributes, driver, PCI_ATTRIBUTES).lower(),
        pcie_root=_string(attributes, PCIE_ROOT),
        uuid=_first_string(attributes, driver, UUID_ATTRIBUTES),
        cpu_ids=_ints(attributes, CPU_ID),
        model=_first_string(attributes, driver, MODEL_ATTRIBUTES),
    )


def _qualified(driver: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attribute names with their domain: a bare name belongs to the driver's domain."""
    return {(key if "/" in key else f"{driver}/{key}"): value for key, value in attributes.items()}


def _value(attributes: Mapping[str, Any], key: str) -> Any:
    holder = attributes.get(key)
    if not isinstance(holder, dict) or len(holder) != 1:
        return None
    return next(iter(holder.values()))


def _ints(attributes: Mapping[str, Any], key: str) -> frozenset[int]:
    value = _value(attributes, key)
    if isinstance(value, dict) and len(value) == 1:  # a list-type attribute: {"list": {"int": [...]}}-like
        value = next(iter(value.values()))
    if isinstance(value, int) and not isinstance(value, bool):
        return frozenset({value})
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return frozenset(value)
    return frozenset()


def _string(attributes: Mapping[str, Any], key: str) -> str:
    value = _value(attributes, key)
    return value if isinstance(value, str) else ""


def _first_string(attributes: Mapping[str, Any], driver: str, names: Iterable[str]) -> str:
    for name in names:
        key = name if "/" in name else f"{driver}/{name}"
        if found := _string(attributes, key):
            return found
    return ""


def resource_claim(value: Any) -> DraClaim | None:
    """A ResourceClaim's identity and allocation; None for something that is not a claim."""
    claim = _object(value)
    metadata = _object(claim.get("metadata"))
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    status = _object(claim.get("status"))
    results = _object(_object(status.get("allocation")).get("devices")).get("results") or []
    devices = []
    for result in results if isinstance(results, list) else []:
        body = _object(result)
        driver, pool, device = body.get("driver"), body.get("pool"), body.get("device")
        if all(isinstance(part, str) and part for part in (driver, pool, device)):
            request = body.get("request")
            devices.append(
                DraAllocatedDevice(
                    ref=DraDeviceRef(driver=str(driver), pool=str(pool), device=str(device)),
                    requests=(request,) if isinstance(request, str) else (),
                )
            )
    reserved = status.get("reservedFor") or []
    return DraClaim(
        namespace=namespace,
        name=name,
        uid=str(metadata.get("uid") or ""),
        devices=tuple(devices),
        reserved_for=frozenset(
            str(_object(ref).get("uid"))
            for ref in (reserved if isinstance(reserved, list) else [])
            if _object(ref).get("uid")
        ),
    )


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}

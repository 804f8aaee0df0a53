"""Profiles: named pod shapes (`gpu-train: {nvidia.com/gpu: 1, cpu: 8, memory: 64Gi}`) for fit and stranded.

A profiles file is YAML, either `{profiles: {name: {resource: quantity}}}` or the bare mapping. Amounts are
held in base units: cpu in whole cores (a fraction rounds up: exclusive CPUs are whole), memory and
hugepages in bytes, devices as counts. With no file, product.md's defaults apply: one profile per
NUMA-accounted resource present on the host, `{r: 1 unit, cpu: 1, memory: 1Gi}`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exporter.errors import ConfigError
from exporter.units import parse_quantity

GIB = 1 << 30


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    name: str
    requests: Mapping[str, int]


def load_profiles(path: Path) -> tuple[Profile, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read profiles file {path}: {exc.strerror}") from None
    return parse_profiles(text, origin=str(path))


def parse_profiles(text: str, *, origin: str = "profiles") -> tuple[Profile, ...]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(document, dict) and set(document) == {"profiles"}:
        document = document["profiles"]
    return profiles_from_mapping(document, origin=origin)


def profiles_from_mapping(document: Any, *, origin: str = "profiles") -> tuple[Profile, ...]:
    if not isinstance(document, dict) or not document:
        raise ConfigError(f"{origin}: expected a non-empty mapping of profile name -> resources")
    profiles = []
    for name, resources in document.items():
        if not isinstance(resources, dict) or not resources:
            raise ConfigError(f"{origin}: profile {name!r} must map resource names to quantities")
        requests = {
            str(resource): _amount(str(resource), quantity, origin, str(name))
            for resource, quantity in resources.items()
        }
        profiles.append(Profile(name=str(name), requests=requests))
    return tuple(profiles)


def _amount(resource: str, quantity: Any, origin: str, name: str) -> int:
    try:
        value = (
            parse_quantity(quantity)
            if isinstance(quantity, str | int | float) and not isinstance(quantity, bool)
            else -1
        )
    except ValueError as exc:
        raise ConfigError(f"{origin}: profile {name!r}, {resource}: {exc}") from None
    if value <= 0:
        raise ConfigError(f"{origin}: profile {name!r}, {resource}: quantity must be positive, found {quantity!r}")
    return math.ceil(value)


def default_profiles(*, numa_accounted: Iterable[str], unit_of: Mapping[str, int]) -> tuple[Profile, ...]:
    """One profile per NUMA-accounted resource r: `{r: one unit, cpu: 1, memory: 1Gi}` minus parts that are
    r itself or not NUMA-accounted. `unit_of` gives r's unit (a hugepage size's page bytes; 1 otherwise)."""
    accounted = set(numa_accounted)
    companions = {"cpu": 1, "memory": GIB}
    profiles = []
    for resource in sorted(accounted):
        requests = {resource: unit_of.get(resource, GIB if resource == "memory" else 1)}
        requests.update({name: amount for name, amount in companions.items() if name in accounted and name != resource})
        profiles.append(Profile(name=resource, requests=requests))
    return tuple(profiles)

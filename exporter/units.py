"""Human and kubelet spellings of sizes: `2Mi`, `1Gi`, `64Ki`, and byte counts for tables."""

from __future__ import annotations

import re

from exporter.errors import InvalidText

_BINARY_SUFFIXES = (
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
)
_DECIMAL_SUFFIXES = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$")


def hugepage_size_name(size_bytes: int) -> str:
    """The kubelet's resource suffix for a page size: 2097152 -> `2Mi`, 1073741824 -> `1Gi`."""
    for suffix, factor in _BINARY_SUFFIXES:
        if size_bytes >= factor and size_bytes % factor == 0:
            return f"{size_bytes // factor}{suffix}"
    return str(size_bytes)


def hugepage_resource(size_bytes: int) -> str:
    return f"hugepages-{hugepage_size_name(size_bytes)}"


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (`500m`, `1Gi`, `2`, `1.5G`) as a number of base units."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise InvalidText(f"invalid quantity {text!r}")
    if isinstance(text, int | float):
        return float(text)
    value = text.strip()
    if value.endswith("m") and value[:-1].replace(".", "", 1).isdigit() and value[:-1].isascii():
        return float(value[:-1]) / 1000
    match = _QUANTITY.match(value)
    if not match:
        raise InvalidText(f"invalid quantity {text!r}")
    number, suffix = float(match.group(1)), match.group(2)
    if not suffix:
        return number
    for name, factor in _BINARY_SUFFIXES:
        if suffix == name:
            return number * factor
    if suffix in _DECIMAL_SUFFIXES:
        return number * _DECIMAL_SUFFIXES[suffix]
    raise InvalidText(f"invalid quantity suffix in {text!r}")


def human_bytes(size_bytes: int) -> str:
    for suffix, factor in _BINARY_SUFFIXES:
        if size_bytes >= factor:
            return f"{size_bytes / factor:.1f} {suffix}B"
    return f"{size_bytes} B"

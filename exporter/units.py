"""Human and kubelet spellings of sizes: `2Mi`, `1Gi`, `64Ki`, and byte counts for tables."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from exporter.errors import InvalidText

_BINARY_SUFFIXES = (
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
)
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# The Kubernetes quantity grammar (k8s.io/apimachinery resource.ParseQuantity): a signed decimal number, then a
# binary-SI suffix, a decimal-SI suffix, or a decimal exponent (`e3`, `E-2`).
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")


def hugepage_size_name(size_bytes: int) -> str:
    """The kubelet's resource suffix for a page size: 2097152 -> `2Mi`, 1073741824 -> `1Gi`."""
    for suffix, factor in _BINARY_SUFFIXES:
        if size_bytes >= factor and size_bytes % factor == 0:
            return f"{size_bytes // factor}{suffix}"
    return str(size_bytes)


def hugepage_resource(size_bytes: int) -> str:
    return f"hugepages-{hugepage_size_name(size_bytes)}"


def parse_quantity_exact(text: str | int | float) -> Fraction:
    """A Kubernetes quantity (`500m`, `1Gi`, `2`, `1.5G`, `100n`, `1e3`) as an exact number of base units."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise InvalidText(f"invalid quantity {text!r}")
    if isinstance(text, int | float):
        return Fraction(text)
    match = _QUANTITY.match(text.strip())
    if not match:
        raise InvalidText(f"invalid quantity {text!r}")
    number, suffix = Fraction(match.group(1)), match.group(2) or ""
    for name, factor in _BINARY_SUFFIXES:
        if suffix == name:
            return number * factor
    if suffix[:1] in ("e", "E") and len(suffix) > 1:  # `1e3`; a lone `E` is exa
        return number * Fraction(10) ** int(suffix[1:])
    return number * Fraction(10) ** _DECIMAL_SUFFIXES[suffix]


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes quantity as a number of base units (see parse_quantity_exact)."""
    try:
        return float(parse_quantity_exact(text))
    except OverflowError:
        raise InvalidText(f"quantity {text!r} is out of range") from None


def quantity_value(text: str | int | float) -> int:
    """`Quantity.Value()`: the quantity in whole base units, rounded up (`1.5` -> 2, `100m` -> 1)."""
    return math.ceil(parse_quantity_exact(text))


def human_bytes(size_bytes: int) -> str:
    for suffix, factor in _BINARY_SUFFIXES:
        if size_bytes >= factor:
            return f"{size_bytes / factor:.1f} {suffix}B"
    return f"{size_bytes} B"

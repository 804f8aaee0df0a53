"""CPU sets in the two spellings the exporter meets.

* the list syntax shared by the kernel (`cpulist` files) and the kubelet (`0-3,8,10-11`),
  parsed strictly as k8s.io/utils/cpuset does (no whitespace, `A-B` with A <= B, empty = empty set);
* the kernel's hexadecimal mask (`cpumap` files: `000000ff,ffffffff`, 32-bit words, most significant first).
"""

from __future__ import annotations

from collections.abc import Iterable

from exporter.errors import InvalidText

CpuSet = frozenset[int]


def parse_cpuset(text: str) -> CpuSet:
    """Parse list syntax exactly as the kubelet does; raise InvalidText (a ValueError) on anything else."""
    if text == "":
        return frozenset()
    cpus: set[int] = set()
    for item in text.split(","):
        low_text, dash, high_text = item.partition("-")
        low = _parse_id(low_text)
        high = _parse_id(high_text) if dash else low
        if high < low:
            raise InvalidText(f"invalid range {item!r}: {high} < {low}")
        if high - low > 1 << 16:
            raise InvalidText(f"invalid range {item!r}: implausibly large")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def parse_sysfs_cpulist(text: str) -> CpuSet:
    """Parse a kernel `cpulist` file (the list syntax plus a trailing newline)."""
    return parse_cpuset(text.strip())


def _parse_id(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise InvalidText(f"invalid CPU id {text!r}")
    return int(text)


def parse_cpumask(text: str) -> CpuSet:
    """Parse a kernel hex mask (`cpumap`): comma-separated 32-bit words, most significant first."""
    words = text.strip().split(",")
    value = 0
    for word in words:
        if not word or len(word) > 8 or not all(c in "0123456789abcdefABCDEF" for c in word):
            raise InvalidText(f"invalid cpumask word {word!r}")
        value = (value << 32) | int(word, 16)
    return frozenset(bit for bit in range(value.bit_length()) if value >> bit & 1)


def format_cpuset(cpus: Iterable[int]) -> str:
    """Canonical list syntax: ascending, maximal runs as `A-B` (a run of two included)."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    index = 0
    while index < len(ordered):
        start = end = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == end + 1:
            index += 1
            end = ordered[index]
        parts.append(str(start) if start == end else f"{start}-{end}")
        index += 1
    return ",".join(parts)

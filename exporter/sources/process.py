"""One process as the kernel sees it, from procfs: the CPUs and NUMA nodes it may use
(`/proc/<pid>/status` `Cpus_allowed_list`, `Mems_allowed_list`), its cgroups (`/proc/<pid>/cgroup`) and
where its memory is (`/proc/<pid>/numa_maps`: `N<node>=<pages>` per mapping, with `kernelpagesize_kB`).
What `verify` reads about itself inside a container. Pure parsers over a procfs root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from exporter.cpuset import CpuSet, parse_cpuset
from exporter.errors import SourceMissing, SourceParseError, SourceReadError

SOURCE = "process"
LIMIT_BYTES = 64 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessPlacement:
    cpus: CpuSet
    mems: frozenset[int]
    cgroups: tuple[str, ...]  # `hierarchy:controllers:path` lines
    memory: dict[int, int] = field(default_factory=dict)  # NUMA node -> resident bytes (numa_maps)


def read_process(procfs: Path, pid: str = "self") -> ProcessPlacement:
    base = procfs / pid
    status = _read(base / "status")
    cpus, mems = parse_status(status)
    try:
        maps = _read(base / "numa_maps")
    except SourceMissing:
        maps = ""  # a kernel without NUMA support has no numa_maps
    return ProcessPlacement(
        cpus=cpus, mems=mems, cgroups=tuple(_read(base / "cgroup").split()), memory=parse_numa_maps(maps)
    )


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(LIMIT_BYTES).decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise SourceMissing(SOURCE, f"{path} does not exist") from None
    except OSError as exc:
        raise SourceReadError(SOURCE, f"cannot read {path}: {exc.strerror}") from None


def parse_status(text: str) -> tuple[CpuSet, frozenset[int]]:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return parse_cpuset(fields["Cpus_allowed_list"].strip()), parse_cpuset(fields["Mems_allowed_list"].strip())
    except KeyError as exc:
        raise SourceParseError(SOURCE, f"status has no {exc.args[0]}") from None
    except ValueError as exc:
        raise SourceParseError(SOURCE, f"status: {exc}") from None


def parse_numa_maps(text: str) -> dict[int, int]:
    """NUMA node -> bytes of this process's pages on it, over every mapping."""
    found: dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split()
        page = next((f.split("=", 1)[1] for f in fields if f.startswith("kernelpagesize_kB=")), "4")
        page_bytes = int(page) * 1024 if _digits(page) else 4096
        for item in fields:
            name, _, value = item.partition("=")
            if name.startswith("N") and _digits(name[1:]) and _digits(value):
                found[int(name[1:])] = found.get(int(name[1:]), 0) + int(value) * page_bytes
    return dict(sorted(found.items()))


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()

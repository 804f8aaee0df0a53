"""Logical CPUs from sysfs: which are online, and their core, socket and SMT siblings.

Reads `<sysfs>/devices/system/cpu/{online, cpu<N>/topology/{core_id, physical_package_id,
thread_siblings_list}, cpu<N>/cache/index3/id}` (the L3, which cadvisor calls the uncore cache).
Only online CPUs are reported: an offline CPU cannot be handed to a pod.
"""

from __future__ import annotations

import os

from exporter.cpuset import CpuSet, parse_sysfs_cpulist
from exporter.model import Cpu
from exporter.paths import HostPaths
from exporter.sources.files import list_prefixed_ids, read_sysfs_int, read_sysfs_text


def read_online_cpus(paths: HostPaths) -> CpuSet:
    """The `online` list; when the file is absent, every `cpu<N>` directory whose `online` is not 0."""
    text = read_sysfs_text(paths.cpus_dir / "online")
    if text is not None:
        try:
            return parse_sysfs_cpulist(text)
        except ValueError:
            pass
    present = list_prefixed_ids(paths.cpus_dir, "cpu")
    return frozenset(cpu for cpu in present if read_sysfs_int(paths.cpus_dir / f"cpu{cpu}" / "online") != 0)


def read_cpus(paths: HostPaths, *, online: CpuSet) -> tuple[Cpu, ...]:
    base = os.fspath(paths.cpus_dir)
    cpus = []
    for cpu in sorted(online):
        topology = f"{base}/cpu{cpu}/topology"
        siblings_text = read_sysfs_text(f"{topology}/thread_siblings_list")
        try:
            siblings = parse_sysfs_cpulist(siblings_text) & online if siblings_text else frozenset({cpu})
        except ValueError:
            siblings = frozenset({cpu})
        cpus.append(
            Cpu(
                cpu=cpu,
                core_id=_int_or(read_sysfs_int(f"{topology}/core_id"), cpu),
                socket_id=_int_or(read_sysfs_int(f"{topology}/physical_package_id"), 0),
                siblings=siblings or frozenset({cpu}),
                uncore_cache=read_sysfs_int(f"{base}/cpu{cpu}/cache/index3/id"),
            )
        )
    return tuple(cpus)


def _int_or(value: int | None, default: int) -> int:
    return default if value is None or value < 0 else value

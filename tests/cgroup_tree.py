"""Building the kubelet's cgroup tree in a fixture host, as the kubelet, the runtime and the kernel lay it
out (docs/reference.md section 9): v1 or v2, the cgroupfs or systemd driver, containerd or CRI-O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from exporter.cpuset import format_cpuset
from exporter.sources.cgroups import PAGE_SIZE
from tests.hosttree import HostTree

PAUSE = "pause"


@dataclass(frozen=True)
class Layout:
    version: int = 2
    driver: str = "cgroupfs"
    runtime: str = "containerd"
    cgroup_root: str = "/"


def pod_dir(layout: Layout, uid: str, qos: str) -> Path:
    components = [part for part in layout.cgroup_root.strip("/").split("/") if part]
    components += ["kubepods", *([qos] if qos != "guaranteed" else [])]
    if layout.driver == "systemd":
        path = Path()
        for index in range(len(components)):
            path /= "-".join(components[: index + 1]) + ".slice"
        return path / ("-".join(components) + "-pod" + uid.replace("-", "_") + ".slice")
    return Path(*components, f"pod{uid}")


def container_dir_name(layout: Layout, container_id: str) -> str:
    if layout.runtime == "cri-o":
        return f"crio-{container_id}.scope" if layout.driver == "systemd" else f"crio-{container_id}"
    return f"cri-containerd-{container_id}.scope" if layout.driver == "systemd" else container_id


def add_container(
    host: HostTree,
    layout: Layout,
    *,
    uid: str,
    container_id: str,
    cpus: set[int] | frozenset[int] | range,
    mems: set[int] | frozenset[int] | range,
    memory: Mapping[tuple[int, str], int],
    qos: str = "guaranteed",
    command: str = "/app",
    pid: int | None = None,
) -> Path:
    """One container's cgroup (and its process in procfs, for the sandbox check). Returns its cpuset dir."""
    root = host.paths.cgroup
    if layout.version == 2:
        root.mkdir(parents=True, exist_ok=True)
        (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    relative = pod_dir(layout, uid, qos) / container_dir_name(layout, container_id)
    cpuset = root / relative if layout.version == 2 else root / "cpuset" / relative
    memory_dir = root / relative if layout.version == 2 else root / "memory" / relative
    cpuset.mkdir(parents=True, exist_ok=True)
    memory_dir.mkdir(parents=True, exist_ok=True)
    names = ("cpuset.cpus.effective", "cpuset.mems.effective") if layout.version == 2 else (
        "cpuset.effective_cpus", "cpuset.effective_mems")  # fmt: skip
    (cpuset / names[0]).write_text(format_cpuset(frozenset(cpus)) + "\n")
    (cpuset / names[1]).write_text(format_cpuset(frozenset(mems)) + "\n")
    (memory_dir / "memory.numa_stat").write_text(numa_stat(memory, version=layout.version))
    pid = pid if pid is not None else 1000 + len(list(host.paths.procfs.glob("[0-9]*")))
    (cpuset / ("cgroup.procs" if layout.version == 2 else "tasks")).write_text(f"{pid}\n")
    process = host.paths.procfs / str(pid)
    process.mkdir(parents=True, exist_ok=True)
    (process / "cmdline").write_bytes(command.encode() + b"\0")
    return cpuset


def numa_stat(memory: Mapping[tuple[int, str], int], *, version: int) -> str:
    """The kernel's `memory.numa_stat` text for (NUMA node, type) -> bytes (v1 counts pages)."""
    nodes = sorted({numa for numa, _ in memory})
    lines = []
    for kind in ("anon", "file", "kernel_stack", "shmem"):
        values = {numa: memory.get((numa, kind), 0) for numa in nodes}
        if version == 2:
            lines.append(f"{kind} " + " ".join(f"N{n}={values[n]}" for n in nodes))
        elif kind in ("anon", "file"):
            pages = {n: values[n] // PAGE_SIZE for n in nodes}
            lines.append(f"{kind}={sum(pages.values())} " + " ".join(f"N{n}={pages[n]}" for n in nodes))
    if version == 1:
        lines.append("hierarchical_total=0 " + " ".join(f"N{n}=0" for n in nodes))
    return "\n".join(lines) + "\n"


def container_log(host: HostTree, *, namespace: str, pod: str, container: str, container_id: str) -> None:
    """The kubelet's `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` link."""
    directory = host.paths.container_logs
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{pod}_{namespace}_{container}-{container_id}.log").symlink_to(
        f"/var/log/pods/{namespace}_{pod}_x/{container}/0.log"
    )

"""Where the kernel lets each container run, and where its memory is: the kubelet's cgroup tree. Pure reads
over a cgroup root (`--path.cgroup`, default /sys/fs/cgroup); docs/reference.md section 9.

* Version: v2 (unified) when the root has `cgroup.controllers`; else v1, with `cpuset/` and `memory/` beside
  each other under the root.
* Pods: the kubelet's cgroup names `[<cgroupRoot>,] kubepods, [burstable|besteffort,] pod<uid>` made into
  paths by its driver: `cgroupfs` joins them (`kubepods/burstable/pod<uid>`); `systemd` makes each a slice
  named after all components before it (`kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _ for ->.slice`), as the kubelet's `ConvertCgroupNameToSystemd` does.
* Containers: containerd `cri-containerd-<id>.scope` (systemd) or `<id>` (cgroupfs); CRI-O `crio-<id>.scope`
  or `crio-<id>`; `crio-conmon-*` (CRI-O's monitor) is not a container. The pod's sandbox (pause) container
  has a directory too: it is marked by the command of its process (`<procfs>/<pid>/cmdline`), and callers
  also drop ids the API or the log links do not name.
* Files: `cpuset.cpus.effective`, `cpuset.mems.effective` and `memory.numa_stat` (bytes) on v2;
  `cpuset.effective_cpus`, `cpuset.effective_mems` and `memory.numa_stat` (pages) on v1.

A container that vanishes while it is read (its pod being deleted) is skipped and counted, never an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from exporter.cpuset import parse_cpuset
from exporter.errors import SourceMissing, SourceReadError
from exporter.model import CgroupReading, ContainerCgroup

SOURCE = "cgroup"
QOS_CLASSES = ("guaranteed", "burstable", "besteffort")
MEMORY_TYPES = ("anon", "file")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
SCOPE = re.compile(r"^(?:(cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?$")
UID = re.compile(r"[0-9A-Za-z-]+")
RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker", None: "containerd"}
LIMIT_BYTES = 1 << 20
CHUNK = 65536


def read_cgroups(
    root: Path,
    *,
    procfs: Path,
    driver: str = "cgroupfs",
    cgroup_root: str = "/",
    named: frozenset[str] = frozenset(),
) -> CgroupReading:
    """Every container of every pod the kubelet created under `root`. `named`: container IDs the caller
    knows as workloads (the API, the log links), whose process need not be read for the sandbox check."""
    if not root.is_dir():
        raise SourceMissing(SOURCE, f"{root} does not exist (no cgroup tree mounted)")
    version = 2 if (root / "cgroup.controllers").exists() else 1
    tree = _Tree(str(root if version == 2 else root / "cpuset"), str(root if version == 2 else root / "memory"),
                 version, str(procfs), named)  # fmt: skip
    if not os.path.isdir(tree.cpuset):
        raise SourceMissing(SOURCE, f"{tree.cpuset} does not exist (no cpuset controller)")
    containers: list[ContainerCgroup] = []
    vanished = 0
    found_any = False
    for qos, relative in _qos_dirs(driver, cgroup_root):
        try:
            names = os.listdir(f"{tree.cpuset}/{relative}")
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SourceReadError(SOURCE, f"cannot list {tree.cpuset}/{relative}: {exc.strerror}") from None
        found_any = True
        for name in sorted(names):
            uid = _pod_uid(name, driver=driver, qos=qos, cgroup_root=cgroup_root)
            if uid is None:
                continue
            for container in _containers(tree, f"{relative}/{name}", uid, qos):
                if container is None:
                    vanished += 1
                else:
                    containers.append(container)
    if not found_any:
        raise SourceMissing(SOURCE, f"no kubepods cgroup under {root} (driver {driver}, cgroupRoot {cgroup_root})")
    return CgroupReading(version=version, driver=driver, containers=tuple(containers), vanished=vanished)


def _components(cgroup_root: str) -> list[str]:
    return [part for part in cgroup_root.strip("/").split("/") if part]


def _systemd_path(components: list[str]) -> Path:
    """The kubelet's ConvertCgroupNameToSystemd: each component a slice named after every one before it."""
    path = Path()
    for index in range(len(components)):
        path /= "-".join(components[: index + 1]) + ".slice"
    return path


def _qos_dirs(driver: str, cgroup_root: str) -> Iterator[tuple[str, Path]]:
    base = [*_components(cgroup_root), "kubepods"]
    for qos, extra in (("guaranteed", []), ("burstable", ["burstable"]), ("besteffort", ["besteffort"])):
        components = base + extra
        yield qos, _systemd_path(components) if driver == "systemd" else Path(*components)


def _pod_uid(name: str, *, driver: str, qos: str, cgroup_root: str) -> str | None:
    if driver == "systemd":
        prefix = "-".join([*_components(cgroup_root), "kubepods", *([qos] if qos != "guaranteed" else []), "pod"])
        if not (name.startswith(prefix) and name.endswith(".slice")):
            return None
        uid = name[len(prefix) : -len(".slice")].replace("_", "-")
    else:
        if not name.startswith("pod"):
            return None
        uid = name[len("pod") :]
    return uid if UID.fullmatch(uid) else None


@dataclass(frozen=True, slots=True)
class _Tree:
    cpuset: str  # where the cpuset files are (the root on v2, <root>/cpuset on v1)
    memory: str
    version: int
    procfs: str
    named: frozenset[str]


def _containers(tree: _Tree, pod: str, uid: str, qos: str) -> Iterator[ContainerCgroup | None]:
    try:
        names = os.listdir(f"{tree.cpuset}/{pod}")
    except OSError:
        return  # the pod went away between the two listings
    for name in sorted(names):
        match = SCOPE.match(name)
        if match is None:
            continue
        try:
            yield _container(tree, f"{pod}/{name}", uid=uid, qos=qos, match=match)
        except FileNotFoundError:
            yield None  # removed while read: its pod is being deleted
        except ValueError:
            yield None  # a cpuset the kernel would never write: nothing reliable to say about it
        except OSError as exc:
            raise SourceReadError(SOURCE, f"cannot read {tree.cpuset}/{pod}/{name}: {exc.strerror}") from None


def _container(tree: _Tree, relative: str, *, uid: str, qos: str, match: re.Match[str]) -> ContainerCgroup:
    names = ("cpuset.cpus.effective", "cpuset.mems.effective") if tree.version == 2 else (
        "cpuset.effective_cpus", "cpuset.effective_mems")  # fmt: skip
    cpuset_dir = f"{tree.cpuset}/{relative}"
    runtime = RUNTIMES.get(match.group(1), "containerd")
    if match.group(2) not in tree.named and _is_sandbox(cpuset_dir, tree.procfs, version=tree.version):
        # not a workload: its files are not read (a pod's sandbox is a third of a node's container cgroups)
        return ContainerCgroup(pod_uid=uid, container_id=match.group(2), runtime=runtime, qos=qos, cpus=frozenset(),
                               mems=frozenset(), memory={}, sandbox=True)  # fmt: skip
    cpus = parse_cpuset(_text(f"{cpuset_dir}/{names[0]}").strip())
    mems = parse_cpuset(_text(f"{cpuset_dir}/{names[1]}").strip())
    memory = parse_numa_stat(_text(f"{tree.memory}/{relative}/memory.numa_stat"), version=tree.version)
    return ContainerCgroup(
        pod_uid=uid,
        container_id=match.group(2),
        runtime=runtime,
        qos=qos,
        cpus=cpus,
        mems=mems,
        memory=memory,
    )


def _text(path: str) -> str:
    """A small kernel file, read with one system call where it fits (these are a few hundred bytes)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(descriptor, CHUNK)]
        total = len(chunks[0])
        while len(chunks[-1]) == CHUNK and total < LIMIT_BYTES:  # a short read of a kernel file is its end
            chunks.append(os.read(descriptor, CHUNK))
            total += len(chunks[-1])
    finally:
        os.close(descriptor)
    return b"".join(chunks).decode("ascii", errors="replace")


def parse_numa_stat(text: str, *, version: int) -> dict[tuple[int, str], int]:
    """`memory.numa_stat` -> (NUMA node, "anon" or "file") -> bytes. v2 lines are `anon N0=<bytes> N1=...`;
    v1 lines `anon=<pages> N0=<pages> ...` (and `total=`, `hierarchical_*=`, which are not kept)."""
    found: dict[tuple[int, str], int] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        kind = fields[0].split("=", 1)[0] if version == 1 else fields[0]
        if kind not in MEMORY_TYPES:
            continue
        scale = PAGE_SIZE if version == 1 else 1
        for field in fields[1:]:
            node, _, value = field.partition("=")
            if node.startswith("N") and _digits(node[1:]) and _digits(value):
                found[(int(node[1:]), kind)] = int(value) * scale
    return found


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _is_sandbox(cpuset_dir: str, procfs: str, *, version: int) -> bool:
    """The pod's pause container: its (one) process runs `pause`. Unreadable: not known to be one."""
    try:
        pids = _text(f"{cpuset_dir}/{'cgroup.procs' if version == 2 else 'tasks'}").split(maxsplit=1)
    except OSError:
        return False
    if not pids:
        return False
    try:
        argv0 = _text(f"{procfs}/{pids[0]}/cmdline").split("\0", 1)[0]
    except OSError:
        return False
    return os.path.basename(argv0) == "pause"

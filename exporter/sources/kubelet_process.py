"""The kubelet's process and its command line, from procfs (`/proc/<pid>/comm` and `/proc/<pid>/cmdline`, both
readable without privileges where procfs is mounted without `hidepid`, as kube-bench reads them).

The kubelet is found by its executable's name (`comm` `kubelet`; only such a process's `cmdline` is read):
that needs nothing but procfs. The kubelet found last is asked first (`last`): while its command line is the
same, nothing else is read. The peer of the podresources socket would name it too, but finding a socket's peer
means reading other processes' `fd/` links, which needs ptrace rights over them (an agent that drops every
capability has none). k3s runs the kubelet inside its own process (`k3s server` or `k3s agent`): there the
kubelet's flags are the values of `--kubelet-arg` (RKE2 starts a `kubelet` process with them already expanded).

Several kubelets on one host (test machines, kind): the one whose `--root-dir` is this agent's kubelet directory
(`kubelet_dir`, compared as the kubelet spells it: `host_root_dir`); one kubelet and no root directory to match:
that one. Pure reads; no guess: ambiguous is None with the reason.

The command line is parsed as the kubelet's pflag set parses it: `--flag=value`, `--flag value`, `-flag`
single-dash long flags too (Go's flag compatibility), repeated flags kept in order, and boolean flags without a
value (`--fail-swap-on`) read as "true". Parsing stops at `--`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from exporter.errors import SourceMissing, SourceReadError

SOURCE = "kubelet_process"
CMDLINE_LIMIT = 1 << 20
DEFAULT_ROOT_DIR = "/var/lib/kubelet"
# The kubelet's boolean flags (v1.36 `kubelet --help`) that the command line may give without a value: the next
# argument is then not theirs. Every other flag takes a value.
BOOLEAN_FLAGS = frozenset({
    "add-dir-header", "alsologtostderr", "cgroups-per-qos", "cpu-cfs-quota", "enable-controller-attach-detach",
    "enable-debugging-handlers", "enable-server", "exit-on-lock-contention", "fail-cgroupv1", "fail-swap-on", "h",
    "help", "kernel-memcg-notification", "local-storage-capacity-isolation", "logtostderr",
    "make-iptables-util-chains", "one-output", "protect-kernel-defaults", "register-node", "register-schedulable",
    "rotate-certificates", "rotate-server-certificates", "run-once", "seccomp-default", "serialize-image-pulls",
    "skip-headers", "skip-log-headers", "version",
})  # fmt: skip
K3S_NAMES = ("k3s", "k3s-server", "k3s-agent")


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeletCommandLine:
    """The kubelet's flags: name (without dashes) -> every value given, in order."""

    pid: int
    argv: tuple[str, ...]
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    embedded: str = ""  # "k3s": the kubelet runs inside that process, its flags from --kubelet-arg

    def last(self, name: str) -> str | None:
        values = self.flags.get(name)
        return values[-1] if values else None

    @property
    def root_dir(self) -> str:
        return self.last("root-dir") or DEFAULT_ROOT_DIR


def parse_flags(argv: tuple[str, ...] | list[str]) -> dict[str, tuple[str, ...]]:
    """pflag's reading of a command line (arguments that are not flags are skipped, as the kubelet has none)."""
    flags: dict[str, list[str]] = {}
    index = 0
    while index < len(argv):
        argument = argv[index]
        index += 1
        if argument == "--":
            break
        if not argument.startswith("-") or argument in ("-", ""):
            continue
        name, sep, value = argument.lstrip("-").partition("=")
        if not name:
            continue
        if not sep:
            if name in BOOLEAN_FLAGS:
                value = "true"
            elif index < len(argv):
                value = argv[index]
                index += 1
            else:
                value = ""
        flags.setdefault(name, []).append(value)
    return {name: tuple(values) for name, values in flags.items()}


def k3s_kubelet_flags(argv: tuple[str, ...] | list[str]) -> dict[str, tuple[str, ...]]:
    """The kubelet's flags in a k3s command line: each `--kubelet-arg KEY=VALUE` (or `--kubelet-arg=KEY=VALUE`)."""
    flags: dict[str, list[str]] = {}
    for value in parse_flags(argv).get("kubelet-arg", ()):
        name, _, item = value.lstrip("-").partition("=")
        if name:
            flags.setdefault(name, []).append(item if item or name not in BOOLEAN_FLAGS else "true")
    return {name: tuple(values) for name, values in flags.items()}


def find_kubelet(
    procfs: Path, *, host_root_dir: str | None = None, last: KubeletCommandLine | None = None
) -> KubeletCommandLine:
    """The kubelet's command line. SourceMissing where no kubelet process is visible (no host procfs, hidepid)
    or where several are and none has `host_root_dir` as its root directory. `last`: the one found before,
    taken again without a scan while its process still runs that command line."""
    if last is not None:
        again = _kubelet_at(procfs / str(last.pid), last.pid)
        if again is not None and again.argv == last.argv:
            return last
    candidates: list[KubeletCommandLine] = []
    try:
        entries = [entry for entry in os.scandir(procfs) if entry.name.isdigit()]
    except OSError as exc:
        raise SourceMissing(SOURCE, f"cannot list {procfs}: {exc.strerror}") from None
    for entry in entries:
        found = _kubelet_at(Path(entry.path), int(entry.name))
        if found is not None:
            candidates.append(found)
    if not candidates:
        raise SourceMissing(
            SOURCE,
            f"no kubelet process visible under {procfs} (the host's /proc not mounted, or mounted with hidepid)",
        )
    if host_root_dir is not None:
        matching = [c for c in candidates if os.path.normpath(c.root_dir) == os.path.normpath(host_root_dir)]
        if len(matching) == 1:
            return matching[0]
        if len(candidates) > 1 or matching:
            pids = ", ".join(str(c.pid) for c in candidates)
            raise SourceMissing(
                SOURCE,
                f"{len(candidates)} kubelet processes ({pids}), {len(matching)} of them with "
                f"--root-dir {host_root_dir}",
            )
    if len(candidates) > 1:
        pids = ", ".join(str(c.pid) for c in candidates)
        raise SourceMissing(SOURCE, f"{len(candidates)} kubelet processes ({pids}): cannot tell which is this node's")
    return candidates[0]


def _kubelet_at(directory: Path, pid: int) -> KubeletCommandLine | None:
    try:
        comm = (directory / "comm").read_text(errors="replace").strip()
    except OSError:
        return None  # gone, or not ours to read
    if comm != "kubelet" and comm not in K3S_NAMES:
        return None
    argv = _argv(directory)
    if argv is None or not argv:
        return None
    if comm == "kubelet":
        return KubeletCommandLine(pid=pid, argv=argv, flags=parse_flags(argv[1:]))
    if len(argv) > 1 and argv[1] in ("server", "agent"):
        return KubeletCommandLine(pid=pid, argv=argv, flags=k3s_kubelet_flags(argv[2:]), embedded="k3s")
    return None


def _argv(directory: Path) -> tuple[str, ...] | None:
    try:
        with (directory / "cmdline").open("rb") as handle:
            raw = handle.read(CMDLINE_LIMIT + 1)
    except OSError:
        return None
    if len(raw) > CMDLINE_LIMIT:
        raise SourceReadError(SOURCE, f"{directory / 'cmdline'} is over {CMDLINE_LIMIT} bytes")
    return tuple(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")) if raw else ()

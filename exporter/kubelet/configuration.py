"""The kubelet's configuration as the kubelet builds it (K cmd/kubelet/app/server.go): its `--config` file, its
`--config-dir` drop-ins merged over it, then its command-line flags over both (docs/reference.md section 15).

Where the kubelet's process is visible (sources/kubelet_process.py), its command line says where the files are
(host paths, seen here through `--host-path-map` or the kubelet's root directory) and which flags override them.
Where it is not (no host /proc, hidepid), the file and drop-ins this agent was told stand, and the source's
message says the flags are unchecked.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from exporter.errors import SourceMissing
from exporter.model import KubeletConfig
from exporter.paths import HostPaths
from exporter.sources import kubelet_config, kubelet_process
from exporter.sources.files import present


class EffectiveConfigReader:
    """Reads the effective configuration at every refresh; remembers the kubelet's process, so that a refresh
    reads its command line again rather than every process's (a scan only when that process is gone)."""

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths
        self._process: kubelet_process.KubeletCommandLine | None = None

    def read(self) -> KubeletConfig:
        paths = self.paths
        try:
            self._process = kubelet_process.find_kubelet(
                paths.procfs, host_root_dir=paths.host(paths.kubelet_dir), last=self._process
            )
        except SourceMissing as exc:
            self._process = None
            read = kubelet_config.read_kubelet_config(paths)
            unchecked = f"the kubelet's command-line flags are unchecked: {exc.message}"
            return dataclasses.replace(read, flags_unchecked=unchecked)
        return _with_process(paths, self._process)


def read_effective_config(paths: HostPaths) -> KubeletConfig:
    """The kubelet's configuration as the kubelet builds it: its `--config` file and `--config-dir` drop-ins
    (where its command line names them, else where this agent was told), then its flags. Where no kubelet
    process is visible, the file and drop-ins alone, and the reason the flags are unchecked."""
    return EffectiveConfigReader(paths).read()


def _with_process(paths: HostPaths, process: kubelet_process.KubeletCommandLine) -> KubeletConfig:
    if process.embedded:  # k3s: the kubelet's files are k3s's own (the configured drop-ins), its flags k3s's
        read = kubelet_config.read_kubelet_config(paths, flags=process.flags)
        return dataclasses.replace(read, kubelet_pid=process.pid)
    file, directory = process.last("config"), process.last("config-dir")
    told = (paths.kubelet_config_file, paths.kubelet_config_dir)
    unmapped: list[str] = []
    local_file = local_directory = None
    if file:
        local_file = _visible(paths, process, file, "file", told=told[0], unmapped=unmapped)
    if directory:
        local_directory = _visible(paths, process, directory, "dropinDir", told=told[1], unmapped=unmapped)
    read = kubelet_config.read_kubelet_config(
        paths, file=local_file, directory=local_directory, flags=process.flags, no_file=file is None
    )
    return dataclasses.replace(read, kubelet_pid=process.pid, flags_unchecked="; ".join(unmapped))


def _visible(
    paths: HostPaths,
    process: kubelet_process.KubeletCommandLine,
    host_path: str,
    value: str,
    *,
    told: Path | None,
    unmapped: list[str],
) -> Path:
    """Where this agent sees a path the kubelet's command line names. Not mapped here (no --host-path-map
    for it) but told a path by its operator: that one, said in the source's message. Neither: SourceMissing
    naming the mount."""
    flag = "--config" if value == "file" else "--config-dir"
    mapped = paths.local(host_path)
    if mapped is None and os.path.normpath(host_path).startswith(os.path.normpath(process.root_dir) + "/"):
        mapped = paths.kubelet_dir / os.path.relpath(host_path, process.root_dir)
    if mapped is not None and present(mapped):
        return mapped
    if mapped is None and told is not None:
        unmapped.append(f"the kubelet runs with {flag} {host_path}, not mapped here (--host-path-map): read {told}")
        return told
    where = os.path.dirname(host_path) if value == "file" else host_path
    raise SourceMissing(
        kubelet_config.SOURCE,
        f"the kubelet (pid {process.pid}) runs with {flag} {host_path}, which this agent cannot see: mount it "
        f"(the chart: exporter.kubeletConfig.distribution=custom, exporter.kubeletConfig.{value}={host_path}; "
        f"standalone: --host-path-map {where}=WHERE_MOUNTED)",
    )

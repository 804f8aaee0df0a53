"""Every host path the exporter reads, built once from the flags.

No other module spells `/sys`, `/proc` or `/var/lib/kubelet`; tests point a HostPaths at fixture trees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SYSFS = Path("/sys")
DEFAULT_PROCFS = Path("/proc")
DEFAULT_KUBELET_DIR = Path("/var/lib/kubelet")
DEFAULT_POD_LOGS = Path("/var/log/pods")
DEFAULT_CGROUP = Path("/sys/fs/cgroup")
DEFAULT_CONTAINER_LOGS = Path("/var/log/containers")


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPaths:
    sysfs: Path = DEFAULT_SYSFS
    procfs: Path = DEFAULT_PROCFS
    kubelet_dir: Path = DEFAULT_KUBELET_DIR
    pod_logs: Path = DEFAULT_POD_LOGS
    kubelet_config_file: Path | None = None
    kubelet_config_dir: Path | None = None  # the kubelet's --config-dir (drop-ins), where it has one
    podresources_socket_file: Path | None = None
    cgroup: Path = DEFAULT_CGROUP
    container_logs: Path = DEFAULT_CONTAINER_LOGS
    # Host path prefix -> where this agent sees it (the chart's mounts: /var/lib/kubelet -> /host/var/lib/kubelet).
    # Without any, a host path is the agent's own path only when it reads the host's own /proc (run on the host).
    host_path_map: tuple[tuple[str, Path], ...] = ()

    def local(self, host_path: str) -> Path | None:
        """Where this agent sees a path of the host's (the kubelet's `--config`), or None where it is not mounted."""
        normal = os.path.normpath(host_path)
        for prefix, local in sorted(self.host_path_map, key=lambda item: len(item[0]), reverse=True):
            base = os.path.normpath(prefix)
            if normal == base:
                return local
            if normal.startswith(base.rstrip("/") + "/"):
                return local / normal[len(base.rstrip("/")) + 1 :]
        if not self.host_path_map and self.procfs == DEFAULT_PROCFS:
            return Path(normal)
        return None

    def host(self, local_path: Path) -> str | None:
        """The host's path for one of this agent's (the reverse of `local`), or None where no mapping says."""
        for prefix, local in sorted(self.host_path_map, key=lambda item: len(str(item[1])), reverse=True):
            if local_path == local or local in local_path.parents:
                relative = local_path.relative_to(local)
                return os.path.normpath(os.path.join(prefix, relative)) if str(relative) != "." else prefix
        if not self.host_path_map and self.procfs == DEFAULT_PROCFS:
            return str(local_path)
        return None

    @property
    def numa_nodes_dir(self) -> Path:
        return self.sysfs / "devices" / "system" / "node"

    @property
    def cpus_dir(self) -> Path:
        return self.sysfs / "devices" / "system" / "cpu"

    @property
    def pci_devices_dir(self) -> Path:
        return self.sysfs / "bus" / "pci" / "devices"

    @property
    def cpu_manager_state(self) -> Path:
        return self.kubelet_dir / "cpu_manager_state"

    @property
    def memory_manager_state(self) -> Path:
        return self.kubelet_dir / "memory_manager_state"

    @property
    def dra_manager_state(self) -> Path:
        """The DRA manager's claim cache (K pkg/kubelet/cm/dra/manager.go `draManagerStateFileName`)."""
        return self.kubelet_dir / "dra_manager_state"

    @property
    def dra_health_state(self) -> Path:
        return self.kubelet_dir / "dra_health_state"

    @property
    def device_plugins_dir(self) -> Path:
        return self.kubelet_dir / "device-plugins"

    @property
    def device_checkpoint(self) -> Path:
        return self.device_plugins_dir / "kubelet_internal_checkpoint"

    @property
    def podresources_socket(self) -> Path:
        """The kubelet's podresources gRPC socket (K pkg/kubelet/apis/podresources/constants.go)."""
        if self.podresources_socket_file is not None:
            return self.podresources_socket_file
        return self.kubelet_dir / "pod-resources" / "kubelet.sock"

    @property
    def kubelet_config(self) -> Path:
        if self.kubelet_config_file is not None:
            return self.kubelet_config_file
        return self.kubelet_dir / "config.yaml"

    @property
    def is_real_sysfs(self) -> bool:
        """True when reading the running machine's own /sys (udev and NVML describe only that one)."""
        try:
            return os.path.samefile(self.sysfs, DEFAULT_SYSFS)
        except OSError:
            return False

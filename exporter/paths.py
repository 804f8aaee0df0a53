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

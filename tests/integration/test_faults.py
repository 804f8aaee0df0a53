"""Faults, end to end: the daemon (every capability dropped, as in the chart) publishing to the real API
server while the kubelet's files go bad. Each time: the daemon stays up, metrics keep serving, the last good
state is kept, errors are counted, and NRT converges within one resync of the recovery. The API's own faults
(down, 5xx, 429 storms, conflicts, slow answers, cut watches) are in tests/integration/test_kube.py, through the
fault-injecting proxy in front of the real server."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane import AGENT_USER, ControlPlane
from tests.daemon import Daemon, cpu_series, wait_for, without_capabilities
from tests.faultproxy import FaultProxy
from tests.hosttree import HostTree
from tests.kubelet_files import KUBELET_FIXTURES, fixture_config, install, replace_atomically

RESYNC = 1.0
EMPTY = (KUBELET_FIXTURES / "cpu_manager_state.static-empty.json").read_bytes()
TWO_PODS = (KUBELET_FIXTURES / "cpu_manager_state.static-2pods.json").read_bytes()
UP = 'numa_topology_source_up{source="cpu_manager_state"}'
RECOVERY_SECONDS: dict[str, float] = {}  # fault -> seconds from its end to NRT showing the right content
WRITES = ("PUT", "POST", "PATCH", "DELETE")


def nrt_cpu(kube: ControlPlane, node: str, numa: int = 1) -> int | None:
    obj = kube.nrt(node)
    if obj is None:
        return None
    zone = next(z for z in obj["zones"] if z["name"] == f"node-{numa}")
    return next((int(r["available"]) for r in zone["resources"] if r["name"] == "cpu"), None)


def errors(daemon: Daemon, source: str, reason: str) -> float:
    return daemon.sample(f'numa_topology_source_errors_total{{reason="{reason}",source="{source}"}}') or 0


@pytest.fixture
def running(
    machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str
) -> Iterator[tuple[Daemon, HostTree, str]]:
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    extra = ["--kubeconfig", str(kube.kubeconfig(AGENT_USER, server=proxy.url)), "--node-name", node,
             "--resync-interval", str(RESYNC), "--debounce", "0", "--no-nvml", "--log-level", "error"]  # fmt: skip
    with Daemon(machine.paths, extra=extra) as daemon:
        wait_for(lambda: nrt_cpu(kube, node) == 10, what="the first NRT write")
        yield daemon, machine, node
        assert daemon.get("/healthz")[0] == 200
        assert daemon.process.poll() is None, "the daemon stayed up"


def converges_after_recovery(daemon: Daemon, kube: ControlPlane, node: str, expected: int, *, fault: str) -> None:
    """NRT shows `expected` within one resync of the fault ending, plus a second for the write (the fixed file's
    inotify event usually brings it sooner: the times are printed at the end of the run)."""
    started = time.monotonic()
    wait_for(lambda: nrt_cpu(kube, node) == expected, timeout=RESYNC + 1.0, what="NRT convergence", interval=0.005)
    RECOVERY_SECONDS[fault] = time.monotonic() - started


def scrapes_keep_working(daemon: Daemon, expected_cpu: int) -> None:
    for _ in range(5):
        started = time.monotonic()
        assert daemon.sample(cpu_series(1)) == expected_cpu
        assert time.monotonic() - started < 1.0


# --- the kubelet's files go bad -----------------------------------------------------------------------


def damage(path: Path, how: str) -> str:
    """Break the file; return the reason the exporter should count."""
    if how == "deleted":
        path.unlink()
        return "missing"
    if how == "truncated":
        replace_atomically(path, TWO_PODS[: len(TWO_PODS) // 2])
        return "parse"
    if how == "directory":
        path.unlink()
        path.mkdir()
        return "not_a_file"
    if how == "unreadable":
        os.chmod(path, 0)
        return "permission"
    if how == "too-large":
        with path.open("ab") as handle:
            handle.truncate(80 << 20)
        return "too_large"
    if how == "newer-format":
        replace_atomically(path, b'{"checkpointVersion":5,"payload":{"cpus":"0-31"},"checksum":0}')
        return "format"
    raise AssertionError(how)


def repair(path: Path) -> None:
    if path.is_dir():
        path.rmdir()
    if path.exists():
        os.chmod(path, 0o600)
    replace_atomically(path, EMPTY)


KUBELET_FAULTS = ["deleted", "truncated", "directory", "unreadable", "too-large", "newer-format"]


@pytest.mark.parametrize("how", KUBELET_FAULTS)
def test_kubelet_file_faults(
    running: tuple[Daemon, HostTree, str], kube: ControlPlane, proxy: FaultProxy, how: str
) -> None:
    if how == "unreadable" and os.geteuid() == 0 and not without_capabilities():
        pytest.skip("root with capabilities reads a 000 file; needs setpriv to run as the chart does")
    daemon, machine, node = running
    mark = proxy.mark()
    reason = damage(machine.paths.cpu_manager_state, how)
    wait_for(lambda: daemon.sample(UP) == 0, what=f"source down after {how}")
    wait_for(lambda: errors(daemon, "cpu_manager_state", reason) >= 1, what=f"{reason} counted")
    deadline = time.monotonic() + 2 * RESYNC
    while time.monotonic() < deadline:
        scrapes_keep_working(daemon, 10)
    assert nrt_cpu(kube, node) == 10, "the last good reading stays published"
    assert [seen for seen in proxy.requests(since=mark) if seen.method in WRITES] == [], (
        "no write: nothing good changed"
    )
    repair(machine.paths.cpu_manager_state)
    wait_for(lambda: daemon.sample(UP) == 1, what="source back up")
    converges_after_recovery(daemon, kube, node, 16, fault=f"kubelet file {how}")


def test_sysfs_devices_vanishing(running: tuple[Daemon, HostTree, str]) -> None:
    daemon, machine, _ = running
    vf = 'numa_topology_device_info{device="0000:af:02.3"'

    def has_vf() -> bool:
        return any(line.startswith(vf) for line in daemon.metrics().splitlines())

    assert has_vf()
    target = (machine.pci_links / "0000:af:02.3").resolve()
    for child in sorted(target.rglob("*"), reverse=True):
        child.unlink() if child.is_file() or child.is_symlink() else child.rmdir()
    target.rmdir()  # the bus/pci/devices link now dangles: listed, then gone when read
    wait_for(lambda: not has_vf(), what="the vanished VF to leave the metrics")
    assert daemon.sample('numa_topology_source_up{source="sysfs"}') == 1
    assert errors(daemon, "sysfs", "missing") == 0

"""`serve` end to end: a real process on a fixture host, changed the way the kubelet changes it."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import os
import signal
import time
from pathlib import Path

import pytest

from exporter.agent.app import ServeOptions, parse_listen_address, serve
from exporter.errors import SourceMissing
from exporter.snapshot import SnapshotBuilder
from tests.daemon import Daemon, cpu_series, wait_for
from tests.hosttree import HostTree, fixture_nvml_config
from tests.kubelet_files import KUBELET_FIXTURES, fixture_config, install, replace_atomically

NO_RESYNC = ["--resync-interval", "3600", "--debounce", "0", "--no-nvml"]


@pytest.fixture
def static_machine(machine: HostTree) -> HostTree:
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    return machine


def test_a_renamed_state_file_shows_on_metrics_without_a_resync(static_machine: HostTree) -> None:
    with Daemon(static_machine.paths, extra=NO_RESYNC) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        assert daemon.sample(cpu_series(1)) == 10
        replace_atomically(
            static_machine.paths.cpu_manager_state,
            (KUBELET_FIXTURES / "cpu_manager_state.static-empty.json").read_bytes(),
        )
        wait_for(lambda: daemon.sample(cpu_series(1)) == 16, what="the new cpu_manager_state on /metrics")
        assert daemon.sample(cpu_series(0)) == 14
        assert daemon.stop() == 0


def test_deleted_and_corrupt_files_mark_the_source_down_and_keep_the_numbers(static_machine: HostTree) -> None:
    up = 'numa_topology_source_up{source="cpu_manager_state"}'
    with Daemon(static_machine.paths, extra=NO_RESYNC) as daemon:
        wait_for(lambda: daemon.sample(up) == 1, what="source up")
        os.unlink(static_machine.paths.cpu_manager_state)
        wait_for(lambda: daemon.sample(up) == 0, what="source down after delete")
        missing = 'numa_topology_source_errors_total{reason="missing",source="cpu_manager_state"}'
        assert (daemon.sample(missing) or 0) >= 1
        assert daemon.sample(cpu_series(1)) == 10, "the last good reading stays"
        replace_atomically(
            static_machine.paths.cpu_manager_state, b'{"policyName":"static","defaultCpuSet":"0-3","checksum":1}'
        )
        checksum = 'numa_topology_source_errors_total{reason="checksum",source="cpu_manager_state"}'
        wait_for(lambda: (daemon.sample(checksum) or 0) >= 1, what="checksum error counted")
        assert daemon.sample(up) == 0
        assert daemon.sample(cpu_series(1)) == 10
        install(static_machine, cpu="cpu_manager_state.static-empty.json")
        wait_for(lambda: daemon.sample(up) == 1 and daemon.sample(cpu_series(1)) == 16, what="recovery")


def test_scrapes_never_touch_the_host(static_machine: HostTree) -> None:
    with Daemon(static_machine.paths, extra=["--resync-interval", "0.05", "--debounce", "0", "--no-nvml"]) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        os.rename(static_machine.root, static_machine.root.with_name("gone"))
        wait_for(lambda: (daemon.sample('numa_topology_source_errors_total{reason="missing",source="sysfs"}') or 0) >= 1,
                 what="failing refreshes")  # fmt: skip
        for _ in range(20):
            assert daemon.sample(cpu_series(0, "capacity")) == 16
        assert daemon.get("/healthz")[0] == 200


def test_endpoints(static_machine: HostTree) -> None:
    with Daemon(static_machine.paths, extra=NO_RESYNC) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        status, index = daemon.get("/")
        assert status == 200
        assert 'href="metrics"' in index
        status, body = daemon.get("/snapshot.json")
        assert status == 200
        assert '"numa_node": 1' in body
        assert daemon.get("/nope")[0] == 404
        assert daemon.get("/healthz") == (200, "ok\n")


def test_one_connection_serves_requests_in_turn_and_head_has_no_body(static_machine: HostTree) -> None:
    """As Prometheus scrapes: one kept-alive connection, request after request; HEAD answers the headers of
    GET without its body; a query string does not change the route."""
    with Daemon(static_machine.paths, extra=NO_RESYNC) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        host, port = daemon.base_url.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            bodies = []
            first = None
            for _ in range(3):
                connection.request("GET", "/metrics?x=1")
                first = first or connection.sock
                response = connection.getresponse()
                assert response.status == 200
                assert response.getheader("Content-Type", "").startswith("text/plain; version=")
                bodies.append(response.read())
            assert all(b"numa_topology_resource_capacity" in body for body in bodies)
            connection.request("HEAD", "/healthz")
            response = connection.getresponse()
            assert (response.status, response.getheader("Content-Length"), response.read()) == (200, "3", b"")
            connection.request("GET", "/healthz")
            assert connection.getresponse().read() == b"ok\n", "the same connection, after a HEAD"
            assert first is not None
            assert connection.sock is first, "one connection throughout (http.client reconnects after a close)"
        finally:
            connection.close()


def test_sigterm_during_a_slow_nvml_init_stops_within_a_second(
    static_machine: HostTree, tmp_path: Path, fake_nvml_library: Path
) -> None:
    """On a GPU node without persistence mode nvmlInit takes seconds, and the first refresh (or the first after
    an NVML error: the session is kept otherwise) calls it: a SIGTERM then must not wait for the call (it used
    to take as long as the call, 1-2 s on real GPUs)."""
    config = fixture_nvml_config(tmp_path / "nvml")
    marker = tmp_path / "in-nvml-init"
    config.write_text(config.read_text() + f"delay_ms 5000 {marker}\n")
    env = {"LD_LIBRARY_PATH": str(fake_nvml_library.parent), "FAKE_NVML_CONFIG": str(config)}
    extra = ["--resync-interval", "0.2", "--debounce", "0"]
    with Daemon(static_machine.paths, extra=extra, env=env) as daemon:
        wait_for(marker.exists, what="the first refresh inside nvmlInit")
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 1.0, daemon.text


def test_sigterm_stops_within_a_second(static_machine: HostTree) -> None:
    with Daemon(static_machine.paths, extra=NO_RESYNC) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        daemon.metrics()
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 1.0


class ExplodingBuilder(SnapshotBuilder):
    """A builder whose second build raises an unexpected error: the refresher task dies."""

    builds = 0

    def build(self):  # type: ignore[no-untyped-def]
        self.builds += 1
        if self.builds > 1:
            raise RuntimeError("boom")
        return super().build()


def test_a_dying_task_stops_the_process_non_zero(static_machine: HostTree) -> None:
    builder = ExplodingBuilder(static_machine.paths, use_nvml=False, use_udev=False)
    options = ServeOptions(host="127.0.0.1", port=0, resync_interval_seconds=0.05, debounce_seconds=0)
    lines: list[str] = []
    code = asyncio.run(asyncio.wait_for(serve(builder, options, on_listening=lines.append), timeout=10))
    assert code == 1
    assert lines
    assert lines[0].startswith("numa-topology-exporter: serving metrics on http://127.0.0.1:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [(":9709", (None, 9709)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:80", ("::1", 80))],
)
def test_listen_address(text: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen_address(text) == expected


def test_bad_listen_address() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen_address("9709x")


def test_the_exposition_cache_follows_every_refresh(static_machine: HostTree) -> None:
    """Cached bytes must never outlive the snapshot they were rendered from, however many refreshes."""
    states = [
        (KUBELET_FIXTURES / n).read_bytes()
        for n in ("cpu_manager_state.static-empty.json", "cpu_manager_state.static-2pods.json")
    ]
    with Daemon(static_machine.paths, extra=NO_RESYNC) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        for change in range(30):
            replace_atomically(static_machine.paths.cpu_manager_state, states[change % 2])
            expected = 16 if change % 2 == 0 else 10
            wait_for(lambda e=expected: daemon.sample(cpu_series(1)) == e, what=f"change {change} on /metrics")


def test_a_device_plugins_directory_created_after_start_is_watched(static_machine: HostTree) -> None:
    assert not static_machine.paths.device_plugins_dir.exists()
    gpus = 'numa_topology_resource_capacity{numa_node="1",resource="intel.com/sriov_netdevice",unit="integer"}'
    with Daemon(static_machine.paths, extra=NO_RESYNC) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        # The directory arrives already holding its file: no event inside it can announce the file.
        staged = static_machine.root / "staged-device-plugins"
        staged.mkdir()
        (staged / "kubelet_internal_checkpoint").write_bytes(
            (KUBELET_FIXTURES / "kubelet_internal_checkpoint.empty.json").read_bytes()
        )
        os.rename(staged, static_machine.paths.device_plugins_dir)
        wait_for(lambda: daemon.sample(gpus) == 4, what="the checkpoint in a directory created after start")
        replace_atomically(
            static_machine.paths.device_checkpoint,
            (KUBELET_FIXTURES / "kubelet_internal_checkpoint.gpu-sriov.json").read_bytes(),
        )
        available = gpus.replace("capacity", "available")
        wait_for(lambda: daemon.sample(available) == 2, what="a later change in that directory")


def test_process_metrics_are_served_fresh_beside_the_cached_exposition(static_machine: HostTree) -> None:
    """`process_*` as every exporter has them, read after a scrape is answered, at most every 5 s (no timer wakes an
    idle agent for them, and no scrape waits for /proc): they move while the snapshot does not."""
    with Daemon(static_machine.paths, extra=["--no-nvml", "--no-nrt", "--resync-interval", "3600"]) as daemon:
        wait_for(lambda: daemon.get("/readyz")[0] == 200, what="readiness")
        first = daemon.sample("process_cpu_seconds_total")
        assert first is not None
        assert (daemon.sample("process_resident_memory_bytes") or 0) > 10 << 20
        assert (daemon.sample("process_open_fds") or 0) > 0
        refreshes = daemon.sample("numa_topology_refresh_duration_seconds_count")
        busy_until = time.monotonic() + 30
        while daemon.sample("process_cpu_seconds_total") == first and time.monotonic() < busy_until:
            daemon.metrics()  # serving scrapes costs CPU: the counter moves, the cache does not hold it back
        assert (daemon.sample("process_cpu_seconds_total") or 0) > first
        assert daemon.sample("numa_topology_refresh_duration_seconds_count") == refreshes
        build = [line for line in daemon.metrics().splitlines() if line.startswith("numa_topology_exporter_build_info")]
        assert len(build) == 1
        assert 'python_version="' in build[0]


def test_sysfs_never_readable_still_says_so(machine: HostTree, tmp_path: Path) -> None:
    """No snapshot can be built: the source is down, its errors count, and the last refresh is 0, so that
    NumaSourceDown and NumaExporterStale fire; once sysfs appears, the first snapshot replaces all that."""
    paths = dataclasses.replace(machine.paths, sysfs=tmp_path / "sys-later")
    with Daemon(paths, extra=["--no-nvml", "--no-nrt", "--resync-interval", "0.2", "--debounce", "0"]) as daemon:
        wait_for(lambda: daemon.sample('numa_topology_source_up{source="sysfs"}') == 0, what="sysfs down")
        assert daemon.sample("numa_topology_last_refresh_timestamp_seconds") == 0
        assert (daemon.sample('numa_topology_source_errors_total{reason="missing",source="sysfs"}') or 0) >= 1
        assert daemon.get("/readyz")[0] != 200
        machine.sys.rename(paths.sysfs)
        wait_for(lambda: daemon.sample('numa_topology_source_up{source="sysfs"}') == 1, timeout=10, what="recovery")
        assert (daemon.sample("numa_topology_last_refresh_timestamp_seconds") or 0) > 0


def test_a_sysfs_without_online_cpus_is_an_error_not_zeros(tmp_path: Path) -> None:
    empty = HostTree(tmp_path / "empty")
    (empty.sys / "devices" / "system" / "cpu").mkdir(parents=True, exist_ok=True)
    with pytest.raises(SourceMissing, match="no online CPUs"):
        SnapshotBuilder(empty.paths, use_nvml=False, use_udev=False).build()

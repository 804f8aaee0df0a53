"""Observed placement: the kubelet's cgroup tree (v1 and v2, both drivers, both runtimes) read as the kernel
writes it, set beside what the kubelet's state files meant, on the fixture machine's gpu-static scenario:
`app` of pod A is pinned to CPUs 2-3,18-19 and given Static memory on NUMA 0; `db` of pod B is pinned to
8-10,24-26 with Static memory on NUMA 1 (NUMA 0 = CPUs 0-7,16-23; NUMA 1 = 8-15,24-31)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.cli import main
from exporter.errors import SourceMissing
from exporter.kubelet.placement import PlacementView
from exporter.model import PodRef
from exporter.observed import PlacementSampler
from exporter.snapshot import Snapshot, SnapshotBuilder
from exporter.sources.cgroups import PAGE_SIZE, parse_numa_stat, read_cgroups
from exporter.sources.container_logs import parse_container_log_name
from exporter.views.doctor import diagnose
from exporter.views.exposition import render_exposition
from exporter.views.render import render_snapshot
from tests.cgroup_tree import PAUSE, Layout, add_container, container_log, numa_stat
from tests.daemon import Daemon, wait_for
from tests.hosttree import HostTree
from tests.kubelet_files import POD_A, POD_B, replace_atomically
from tests.scenarios import KUBELET_SCENARIOS

GIB = 1 << 30
APP = "a" * 64
APP_SANDBOX = "b" * 64
DB = "c" * 64
LAYOUTS = [
    Layout(version=version, driver=driver, runtime=runtime)
    for version in (1, 2)
    for driver in ("cgroupfs", "systemd")
    for runtime in ("containerd", "cri-o")
]


@pytest.fixture
def host(tmp_path: Path) -> HostTree:
    return KUBELET_SCENARIOS["machine-gpu-static"](tmp_path / "machine")


def kubelet_config(host: HostTree, layout: Layout) -> None:
    config = host.paths.kubelet_dir / "config.yaml"
    text = config.read_text()
    text += f"cgroupDriver: {layout.driver}\n"
    if layout.cgroup_root != "/":
        text += f"cgroupRoot: {layout.cgroup_root}\n"
    replace_atomically(config, text.encode())


def populate(
    host: HostTree,
    layout: Layout,
    *,
    db_cpus: set[int] | None = None,
    db_mems: set[int] | None = None,
    links: bool = True,
) -> None:
    """app as the kubelet pinned it, with 3 GiB anon on NUMA 0 and 1 GiB file on NUMA 1; its pod's sandbox;
    db, unless told otherwise, as the kubelet pinned it, all its memory on NUMA 1. With `links`, the
    kubelet's /var/log/containers links name the two (none is made for a sandbox)."""
    if links:
        container_log(host, namespace="team-a", pod="trainer-0", container="app", container_id=APP)
        container_log(host, namespace="team-b", pod="db-0", container="db", container_id=DB)
    kubelet_config(host, layout)
    add_container(host, layout, uid=POD_A, container_id=APP, cpus={2, 3, 18, 19}, mems={0},
                  memory={(0, "anon"): 3 * GIB, (1, "file"): GIB})  # fmt: skip
    add_container(host, layout, uid=POD_A, container_id=APP_SANDBOX, cpus=set(range(32)), mems={0, 1},
                  memory={(0, "anon"): PAGE_SIZE}, command=f"/{PAUSE}")  # fmt: skip
    add_container(host, layout, uid=POD_B, container_id=DB, cpus=db_cpus or {8, 9, 10, 24, 25, 26},
                  mems=db_mems or {1}, memory={(1, "anon"): 2 * GIB, (1, "file"): GIB // 2})  # fmt: skip


def sample(
    host: HostTree, *, pods: tuple[PodRef, ...] | None = None, all_containers: bool = False
) -> tuple[Snapshot, PlacementView]:
    builder = SnapshotBuilder(host.paths, use_nvml=False, use_udev=False, use_podresources=False,
                              pods_reader=(lambda: pods) if pods is not None else None)  # fmt: skip
    snapshot = builder.build()
    return snapshot, PlacementSampler(host.paths, all_containers=all_containers).sample(snapshot)


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample of the exposition, by name and exact labels."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def test_numa_stat_in_both_versions() -> None:
    v2 = "anon N0=4096 N1=8192\nfile N0=0 N1=12288\nkernel_stack N0=16384 N1=0\nshmem N0=0 N1=0\n"
    assert parse_numa_stat(v2, version=2) == {(0, "anon"): 4096, (1, "anon"): 8192, (0, "file"): 0,
                                              (1, "file"): 12288}  # fmt: skip
    v1 = "total=5 N0=2 N1=3\nfile=3 N0=0 N1=3\nanon=2 N0=2 N1=0\nhierarchical_total=5 N0=2 N1=3\n"
    assert parse_numa_stat(v1, version=1) == {(0, "file"): 0, (1, "file"): 3 * PAGE_SIZE,
                                              (0, "anon"): 2 * PAGE_SIZE, (1, "anon"): 0}  # fmt: skip
    assert parse_numa_stat("anon N0=¹ N1=x\ngarbage\n", version=2) == {}


def test_container_log_links_name_containers() -> None:
    found = parse_container_log_name(f"trainer-0_team-a_my-app-{APP}.log")
    assert found is not None
    assert (found.namespace, found.pod, found.container, found.container_id) == ("team-a", "trainer-0", "my-app", APP)
    assert parse_container_log_name("not-a-link.log") is None


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: f"v{x.version}-{x.driver}-{x.runtime}")
def test_every_layout_is_read(host: HostTree, layout: Layout) -> None:
    populate(host, layout)
    other = host.paths.cgroup / ("" if layout.version == 2 else "cpuset")
    (other / "system.slice" / "containerd.service").mkdir(parents=True)  # not the kubelet's: ignored
    reading = read_cgroups(host.paths.cgroup, procfs=host.paths.procfs, driver=layout.driver)
    assert reading.version == layout.version
    by_id = {c.container_id: c for c in reading.containers}
    assert set(by_id) == {APP, APP_SANDBOX, DB}
    app = by_id[APP]
    assert (app.pod_uid, app.qos, app.runtime) == (POD_A, "guaranteed", layout.runtime)
    assert (app.cpus, app.mems) == ({2, 3, 18, 19}, {0})
    assert app.memory == {(0, "anon"): 3 * GIB, (1, "anon"): 0, (0, "file"): 0, (1, "file"): GIB}
    assert by_id[APP_SANDBOX].sandbox
    assert not app.sandbox


@pytest.mark.parametrize("driver", ["cgroupfs", "systemd"])
def test_a_cgroup_root_prefix(host: HostTree, driver: str) -> None:
    layout = Layout(driver=driver, cgroup_root="/kubelet")
    populate(host, layout)
    _, view = sample(host)
    assert {c.container for c in view.containers} == {"app", "db"}


def test_intended_enforced_and_observed(host: HostTree) -> None:
    """app runs where it was pinned, but a quarter of its memory is on NUMA 1; db was moved (a CPU of NUMA 0
    in its cpuset) and its cpuset.mems is 0-1 where the Memory Manager gave NUMA 1."""
    populate(host, Layout(), db_cpus={7, 8, 9, 10, 24, 25, 26}, db_mems={0, 1})
    snapshot, view = sample(host)
    assert view.status.up
    assert [(c.namespace, c.pod, c.container) for c in view.containers] == [
        ("team-a", "trainer-0", "app"), ("team-b", "db-0", "db"),
    ], "named from the pod log directory's pods and the cgroup's pod UID; the sandbox left out"  # fmt: skip
    app, db = view.containers
    assert app.intended_cpus == {2, 3, 18, 19}
    assert not app.cpu_drift
    assert not app.memory_drift
    assert app.remote_ratio == pytest.approx(0.25)
    assert db.cpu_drift
    assert db.memory_drift
    assert db.cpu_numa_nodes == {0, 1}
    assert db.remote_ratio == 0.0, "its CPUs include NUMA 0 and 1 now: no memory is remote to them"
    assert view.remote_bytes_by_numa == {1: GIB}
    text = render_exposition(snapshot, placement=view).decode()
    app_labels = {"namespace": "team-a", "pod": "trainer-0", "pod_uid": POD_A, "container": "app"}
    db_labels = {"namespace": "team-b", "pod": "db-0", "pod_uid": POD_B, "container": "db"}
    assert value(text, "numa_topology_container_remote_memory_ratio", **app_labels) == 0.25
    assert value(text, "numa_topology_container_memory_bytes", **app_labels, numa_node="0", type="anon") == 3 * GIB
    assert value(text, "numa_topology_container_placement_drift", **db_labels, resource="cpu") == 1
    assert value(text, "numa_topology_container_placement_drift", **db_labels, resource="memory") == 1
    assert value(text, "numa_topology_container_placement_drift", **app_labels, resource="memory") == 0
    assert value(text, "numa_topology_container_enforced_numa_nodes", **db_labels, resource="memory") == 2
    assert value(text, "numa_topology_numa_node_remote_memory_bytes", numa_node="1") == GIB
    assert value(text, "numa_topology_source_up", source="cgroup") == 1
    table = render_snapshot(snapshot, placement=view)
    assert "Observed placement (containers holding exclusive resources): 2, drifting: 1" in table
    assert re.search(r"team-b/db-0\s+db\s+8-10,24-26 -> 7-10,24-26 \(NUMA 0-1\)\s+1 -> 0-1", table), table


def test_names_from_the_api_then_the_log_links_then_the_id(host: HostTree) -> None:
    populate(host, Layout(), links=False)
    api = (
        PodRef(uid=POD_A, namespace="team-a", name="trainer-0", spec_known=True, container_ids=((APP, "app"),)),
        PodRef(uid=POD_B, namespace="team-b", name="db-0", spec_known=True),
    )
    _, view = sample(host, pods=api, all_containers=True)
    names = {c.container_id: c.container for c in view.containers}
    assert names == {APP: "app", DB: DB[:12]}, "the API names app and knows app's sandbox is none of its own"
    container_log(host, namespace="team-b", pod="db-0", container="db", container_id=DB)
    _, view = sample(host, pods=api, all_containers=True)
    assert {c.container_id: c.container for c in view.containers} == {APP: "app", DB: "db"}


def test_only_exclusive_containers_by_default(host: HostTree) -> None:
    populate(host, Layout())
    add_container(host, Layout(), uid="0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f", container_id="d" * 64, qos="besteffort",
                  cpus={0, 1}, mems={0, 1}, memory={(0, "anon"): GIB})  # fmt: skip
    _, default = sample(host)
    _, everything = sample(host, all_containers=True)
    assert len(default.containers) == 2
    assert len(everything.containers) == 3
    besteffort = next(c for c in everything.containers if c.qos == "besteffort")
    assert (besteffort.intended_cpus, besteffort.cpu_drift, besteffort.exclusive) == (None, False, False)


def test_a_container_removed_while_read_is_skipped_and_counted(host: HostTree) -> None:
    populate(host, Layout(version=1))
    memory = host.paths.cgroup / "memory" / "kubepods" / f"pod{POD_B}" / DB / "memory.numa_stat"
    memory.unlink()  # the kernel removes a deleted pod's cgroups one controller after the other
    _, view = sample(host)
    assert view.status.up
    assert view.vanished == 1
    assert [c.container for c in view.containers] == ["app"]


def test_no_cgroup_tree_is_unavailable_not_broken(host: HostTree) -> None:
    snapshot, view = sample(host)
    assert not view.status.available
    assert view.containers == ()
    text = render_exposition(snapshot, placement=view).decode()
    assert 'source="cgroup"' not in text
    with pytest.raises(SourceMissing):
        read_cgroups(host.paths.cgroup, procfs=host.paths.procfs)


def test_an_unreadable_tree_keeps_the_last_good_sample(host: HostTree) -> None:
    populate(host, Layout())
    builder = SnapshotBuilder(host.paths, use_nvml=False, use_udev=False, use_podresources=False)
    snapshot = builder.build()
    sampler = PlacementSampler(host.paths)
    good = sampler.sample(snapshot)
    broken = host.paths.cgroup / "kubepods" / f"pod{POD_A}" / APP / "cpuset.cpus.effective"
    broken.unlink()
    broken.mkdir()  # unreadable as a file (EISDIR), whoever reads it: root or not
    bad = sampler.sample(snapshot)
    assert bad.status.reason == "io"
    assert bad.containers == good.containers
    assert sampler.errors_total[("cgroup", "io")] == 1
    exposition = render_exposition(snapshot, placement=bad).decode()
    assert value(exposition, "numa_topology_source_errors_total", source="cgroup", reason="io") == 1


def test_snapshot_command_shows_the_sample(host: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    populate(host, Layout(), db_mems={0, 1})
    paths = host.paths
    argv = ["snapshot", "--no-nvml", "--no-podresources", "--path.sysfs", str(paths.sysfs), "--path.procfs",
            str(paths.procfs), "--path.kubelet", str(paths.kubelet_dir), "--path.pod-logs", str(paths.pod_logs),
            "--path.cgroup", str(paths.cgroup), "--path.container-logs", str(paths.container_logs)]  # fmt: skip
    assert main(argv) == 0
    assert "drifting: 1" in capsys.readouterr().out
    assert main([*argv, "--format", "metrics"]) == 0
    assert "numa_topology_container_placement_drift{" in capsys.readouterr().out
    assert main([*argv, "--no-placement"]) == 0
    assert "Observed placement" not in capsys.readouterr().out


def test_serve_samples_apart_from_the_refresh(host: HostTree) -> None:
    """Memory moves without any file the refresh watches changing: the sampler sees it on its own interval."""
    populate(host, Layout())
    series = f'numa_topology_container_memory_bytes{{container="app",namespace="team-a",numa_node="1",pod="trainer-0",pod_uid="{POD_A}",type="file"}}'
    with Daemon(host.paths, extra=["--no-nvml", "--no-nrt", "--no-podresources", "--placement-interval", "0.2",
                                   "--resync-interval", "3600"]) as daemon:  # fmt: skip
        wait_for(lambda: daemon.sample(series) == GIB, timeout=10, what="the first sample")
        stat = host.paths.cgroup / "kubepods" / f"pod{POD_A}" / APP / "memory.numa_stat"
        stat.write_text(numa_stat({(0, "anon"): 3 * GIB, (1, "file"): 2 * GIB}, version=2))
        wait_for(lambda: daemon.sample(series) == 2 * GIB, timeout=10, what="a later sample")
        refreshes = daemon.sample("numa_topology_refresh_duration_seconds_count")
        assert refreshes is not None
        assert refreshes <= 2, "no refresh was needed for the sample to change"


def test_the_placement_interval_is_bounded() -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--placement-interval", "0"])


def test_doctor_explains_drift_and_remote_memory(host: HostTree) -> None:
    populate(host, Layout(), db_mems={0, 1})
    stat = host.paths.cgroup / "kubepods" / f"pod{POD_A}" / APP / "memory.numa_stat"
    stat.write_text(numa_stat({(0, "anon"): GIB, (1, "anon"): 3 * GIB}, version=2))  # 75 % remote
    snapshot, view = sample(host)
    lines = [f.line() for f in diagnose(snapshot, view) if f.check in ("placement-drift", "remote-memory")]
    assert lines == [
        "WARNING remote-memory: team-a/trainer-0 container app: 75% of its memory is on NUMA nodes without its "
        "CPUs. A large NumaForeign means a cross-NUMA memory placement problem: Memory Manager isn't configured, "
        "or the pod isn't Guaranteed QoS",
        "WARNING placement-drift: team-b/db-0 container db: the Memory Manager gave NUMA 1 but cpuset.mems is 0-1: "
        "its memory is not held to that NUMA node (the runtime did not apply the Memory Manager's cpuset.mems)",
    ]

"""The builder keeps the last good reading of every source, marks it down and counts the error."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from exporter.errors import SourceMissing
from exporter.paths import HostPaths
from exporter.snapshot import SnapshotBuilder
from tests.hosttree import HostTree
from tests.kubelet_files import fixture_config, install, replace_atomically


def cpu_numbers(builder: SnapshotBuilder) -> tuple[int | None, ...]:
    snapshot = builder.build()
    return tuple(a.available for a in snapshot.accounting.accounts if a.resource == "cpu")


@pytest.fixture
def builder(machine: HostTree) -> SnapshotBuilder:
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    return SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: replace_atomically(path, path.read_bytes()[:40]), "parse"),
        (lambda path: replace_atomically(path, path.read_bytes().replace(b"2672244920", b"2672244921")), "checksum"),
        (os.unlink, "missing"),
        (lambda path: (os.unlink(path), path.mkdir()), "not_a_file"),
        (
            lambda path: replace_atomically(
                path, b'{"policyName":"static","defaultCpuSet":"0-31","checksum":0,"data":1}'
            ),
            "parse",
        ),
        (lambda path: replace_atomically(path, b" " * (65 << 20)), "too_large"),
    ],
)
def test_bad_input_keeps_the_last_good_reading(
    machine: HostTree, builder: SnapshotBuilder, damage, reason: str
) -> None:  # type: ignore[no-untyped-def]
    assert cpu_numbers(builder) == (10, 10)
    damage(machine.paths.cpu_manager_state)
    snapshot = builder.build()
    status = snapshot.source("cpu_manager_state")
    assert status is not None
    assert (status.up, status.reason) == (False, reason)
    assert snapshot.errors_total[("cpu_manager_state", reason)] == 1
    assert tuple(a.available for a in snapshot.accounting.accounts if a.resource == "cpu") == (10, 10)
    builder.build()
    assert builder.errors_total[("cpu_manager_state", reason)] == 2


def test_recovery_after_a_good_file_returns(machine: HostTree, builder: SnapshotBuilder) -> None:
    cpu_numbers(builder)
    replace_atomically(machine.paths.cpu_manager_state, b"garbage")
    builder.build()
    install(machine, cpu="cpu_manager_state.static-empty.json")
    snapshot = builder.build()
    assert snapshot.source("cpu_manager_state").up  # type: ignore[union-attr]
    assert tuple(a.available for a in snapshot.accounting.accounts if a.resource == "cpu") == (14, 16)


def test_absent_files_under_none_policies_are_not_errors(machine: HostTree) -> None:
    install(machine, config=fixture_config(cpu="none", memory="None"))
    snapshot = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False).build()
    for name in ("cpu_manager_state", "memory_manager_state", "device_checkpoint", "pods"):
        status = snapshot.source(name)
        assert status is not None
        assert (status.up, status.available) == (False, False)
    assert snapshot.errors_total == {}


def test_sysfs_gone_after_a_good_read_keeps_the_topology(machine: HostTree, builder: SnapshotBuilder) -> None:
    first = builder.build()
    os.rename(machine.sys, machine.root / "sys.gone")
    second = builder.build()
    assert second.topology.numa_nodes == first.topology.numa_nodes
    assert not second.source("sysfs").up  # type: ignore[union-attr]
    assert second.errors_total[("sysfs", "missing")] == 1


def test_sysfs_never_readable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceMissing):
        SnapshotBuilder(HostPaths(sysfs=tmp_path), use_nvml=False, use_udev=False).build()


def test_a_source_status_is_logged_when_it_changes_not_on_every_refresh(
    machine: HostTree, caplog: pytest.LogCaptureFixture
) -> None:
    builder = SnapshotBuilder(machine.paths, use_nvml=True, use_udev=False)
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            builder.build()
    assert len([r for r in caplog.records if r.getMessage().startswith("nvml: ")]) == 1
    assert len([r for r in caplog.records if r.getMessage().startswith("sysfs: ")]) == 1
    caplog.clear()
    os.rename(machine.sys, machine.root / "sys.gone")
    with caplog.at_level(logging.INFO):
        builder.build()
        builder.build()
    assert len([r for r in caplog.records if r.getMessage().startswith("sysfs: ")]) == 1, "the change is logged once"


def test_a_kubelet_node_without_its_config_publishes_no_policy(machine: HostTree) -> None:
    """State files say a kubelet runs here; its configuration is not where we look: the source is down (an
    error, counted) and the NRT carries no topologyManagerPolicy, never the default `none`."""
    from exporter.views.nrt import build_nrt

    install(machine, cpu="cpu_manager_state.static-empty.json", memory="memory_manager_state.static-empty.json")
    snapshot = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False).build()
    status = snapshot.source("kubelet_config")
    assert status is not None
    assert (status.up, status.reason) == (False, "missing")
    assert "--kubelet-config" in (status.message or "")
    assert snapshot.errors_total[("kubelet_config", "missing")] == 1
    nrt = build_nrt(snapshot, node_name="n", node_uid=None, method="all")
    names = {a["name"] for a in nrt["attributes"]}
    assert not names & {"topologyManagerPolicy", "topologyManagerScope", "topologyManagerMaxNUMANodes"}
    # Nor a CPU number: the reserved CPUs are in that configuration (the state file's empty static policy would
    # otherwise give every CPU as available). Memory comes from the Static memory manager's own table, which
    # holds what it reserves: known.
    cpus = [a for a in snapshot.accounting.accounts if a.resource == "cpu"]
    assert [(a.available, a.allocatable) for a in cpus] == [(None, None)] * 2, cpus
    published = {r["name"] for zone in nrt["zones"] for r in zone["resources"]}
    assert "cpu" not in published
    assert "memory" in published
    install(machine, config=fixture_config())
    known = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False).build()
    assert all(a.allocatable is not None and a.available is not None for a in known.accounting.accounts), "read: known"
    snapshot = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False).build()
    attributes = {
        a["name"]: a["value"] for a in build_nrt(snapshot, node_name="n", node_uid=None, method="all")["attributes"]
    }
    assert attributes["topologyManagerPolicy"] == snapshot.kubelet.config.topology_manager_policy != ""


def test_a_config_its_state_files_contradict_is_not_the_kubelets(machine: HostTree) -> None:
    """A static CPU manager state under a config that says none: that config is not what the kubelet runs with
    (it refuses to start on another policy's state file)."""
    from exporter.views.nrt import build_nrt

    install(machine, cpu="cpu_manager_state.static-empty.json", memory="memory_manager_state.static-empty.json",
            config=fixture_config(cpu="none"))  # fmt: skip
    snapshot = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False).build()
    status = snapshot.source("kubelet_config")
    assert status is not None
    assert (status.up, status.reason) == (False, "contradicted")
    assert "cpu_manager_state is written by the static policy" in (status.message or "")
    assert not snapshot.kubelet.config.known
    names = {a["name"] for a in build_nrt(snapshot, node_name="n", node_uid=None, method="all")["attributes"]}
    assert "topologyManagerPolicy" not in names
    install(machine, config=fixture_config(cpu="static", memory="None"))
    status = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False).build().source("kubelet_config")
    assert status is not None
    assert status.reason == "contradicted"
    assert "memory_manager_state" in (status.message or "")

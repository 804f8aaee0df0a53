from __future__ import annotations

import json

import pytest

from exporter.cli import main
from tests.hosttree import HostTree


def test_snapshot_json_is_machine_readable(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["snapshot", "--format", "json", "--no-nvml", "--path.sysfs", str(machine.sys)]) == 0
    data = json.loads(capsys.readouterr().out)["topology"]
    assert [numa["numa_node"] for numa in data["numa_nodes"]] == [0, 1]
    assert data["numa_nodes"][1]["cpus"] == [*range(8, 16), *range(24, 32)]
    assert data["numa_nodes"][0]["hugepages"] == [
        {"size_bytes": 2 << 20, "total_pages": 512, "free_pages": 512},
        {"size_bytes": 1 << 30, "total_pages": 4, "free_pages": 4},
    ]
    assert data["numa_nodes"][0]["distances"] == {"0": 10, "1": 21}
    kinds = [device["kind"] for device in data["pci_devices"]]
    assert kinds.count("gpu") == 4
    assert kinds.count("vf") == 8


def test_snapshot_table_reads_at_a_glance(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["snapshot", "--no-nvml", "--path.sysfs", str(machine.sys)]) == 0
    out = capsys.readouterr().out
    assert "2 NUMA nodes, 32 online CPUs, 2 sockets" in out
    rows = [line.split() for line in out.splitlines()]
    assert [
        "0",
        "0-7,16-23",
        "8",
        "0",
        "64.0",
        "GiB",
        "32.0",
        "GiB",
        "2Mi:512/512",
        "1Gi:4/4",
        "gpu",
        "2,",
        "nic",
        "1,",
        "vf",
        "4",
    ] in rows
    assert ["FROM\\TO", "0", "1"] in rows
    assert ["1", "21", "10"] in rows


def test_missing_sysfs_is_a_clear_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["snapshot", "--no-nvml", "--path.sysfs", str(tmp_path)]) == 1
    assert "has no devices/system/cpu" in capsys.readouterr().err

from __future__ import annotations

import json
import socket

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
    assert [numa["memory_kind"] for numa in data["numa_nodes"]] == ["dram", "dram"]
    gpu = next(device for device in data["pci_devices"] if device["address"] == "0000:1a:00.0")
    assert (gpu["pcie_root"], gpu["pcie_bridges"]) == ("pci0000:17", ["0000:17:00.0", "0000:18:00.0", "0000:19:00.0"])
    paths = {(p["a"], p["b"]): p["path"] for p in data["pcie_paths"]}
    assert paths[("0000:1a:00.0", "0000:1b:00.0")] == "PIX"  # two ports of one switch
    assert paths[("0000:1a:00.0", "0000:3b:02.1")] == "PIX"  # a VF sits where its PF is
    assert paths[("0000:8a:00.0", "0000:8b:00.0")] == "PHB"  # two root ports of one root complex
    assert paths[("0000:8a:00.0", "0000:af:00.0")] == "NODE"  # root complexes of one NUMA node
    assert paths[("0000:1a:00.0", "0000:8a:00.0")] == "SYS"
    assert ("0000:3b:02.0", "0000:3b:02.1") not in paths  # VF to VF: its PF's path, left out


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
        "dram",
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
    # GPUs and NICs against each other, as nvidia-smi topo -m: one switch on NUMA 0, root ports on NUMA 1.
    assert ["GPU0", "X", "PIX", "SYS", "SYS", "PIX", "SYS", "0"] in rows
    assert ["GPU2", "SYS", "SYS", "X", "PHB", "SYS", "NODE", "1"] in rows
    assert ["NIC1:", "0000:af:00.0", "(ens1f0)"] in rows


def test_missing_sysfs_is_a_clear_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["snapshot", "--no-nvml", "--path.sysfs", str(tmp_path)]) == 1
    assert "has no devices/system/cpu" in capsys.readouterr().err


def test_a_port_in_use_is_one_line_and_exit_1(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--no-nvml", "--no-nrt", "--no-placement", "--path.sysfs", str(machine.sys),
                     "--web.listen-address", f"127.0.0.1:{port}"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "address already in use" in err.lower()
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "flag", [("--resync-interval", "0"), ("--resync-interval", "-5"), ("--debounce", "-1"), ("--debounce", "61"),
             ("--nrt-min-interval", "-1"), ("--placement-interval", "0"), ("--resync-interval", "soon")],
)  # fmt: skip
def test_flags_out_of_range_are_refused(flag: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", *flag])
    assert caught.value.code == 2
    assert flag[0] in capsys.readouterr().err

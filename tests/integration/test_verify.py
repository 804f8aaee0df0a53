"""`verify`, run for real in this test's own container (its /proc/self and cgroup exist here) and on fixture
trees that play a container's view: its procfs `self` files and the host's sysfs with its own interfaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.cpuset import format_cpuset
from tests.hosttree import HostTree

MAPS = """\
7f0000000000 default anon=1536 dirty=1536 N0=512 N1=1024 kernelpagesize_kB=4
7f0000400000 default file=/usr/lib/libc.so.6 mapped=256 N0=256 kernelpagesize_kB=4
7f0000800000 bind:0 anon=2 dirty=2 N0=2 kernelpagesize_kB=2048
"""


def container_view(host: HostTree, *, cpus: str, mems: str, maps: str = MAPS, interfaces: tuple[str, ...] = ()) -> None:
    me = host.paths.procfs / "self"
    me.mkdir(parents=True, exist_ok=True)
    (me / "status").write_text(f"Name:\tapp\nCpus_allowed_list:\t{cpus}\nMems_allowed_list:\t{mems}\n")
    (me / "numa_maps").write_text(maps)
    (me / "cgroup").write_text("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-" + "a" * 64 + ".scope\n")
    for name in interfaces:
        (host.sys / "class" / "net" / name).mkdir(parents=True, exist_ok=True)


def run(host: HostTree, *extra: str) -> tuple[int, dict[str, object]]:
    argv = ["verify", "--format", "json", "--no-nvml", "--path.sysfs", str(host.sys), "--path.procfs",
            str(host.paths.procfs), *extra]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "exporter", *argv], capture_output=True, text=True, check=False)
    return result.returncode, json.loads(result.stdout) if result.stdout else {}


def test_in_this_very_container() -> None:
    """The real /proc/self of the verify process: its CPUs are the affinity it inherited from this test."""
    result = subprocess.run([sys.executable, "-m", "exporter", "verify", "--format", "json", "--no-nvml"],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["cpus"] == format_cpuset(frozenset(os.sched_getaffinity(0)))
    assert verdict["aligned"] == (result.returncode == 0)
    assert verdict["cgroups"], "its own /proc/self/cgroup"
    assert sum(verdict["memory_bytes"].values()) > 1 << 20, "a Python process has megabytes resident"


def test_a_pinned_container_with_local_memory_and_nic_is_aligned(machine: HostTree) -> None:
    container_view(machine, cpus="2-3,18-19", mems="0", maps="7f00 default anon=10 N0=10 kernelpagesize_kB=4\n",
                   interfaces=("lo", "ens0f0"))  # fmt: skip
    code, verdict = run(machine)
    assert code == 0
    assert verdict["aligned"] is True
    assert verdict["cpu_numa_nodes"] == [0]
    assert verdict["interfaces"] == [{"name": "ens0f0", "pci_address": "0000:3b:00.0", "numa_node": 0}]


def test_what_spans_which_numa_nodes_and_why(machine: HostTree) -> None:
    """CPUs on NUMA 0, memory allowed on both, most resident pages on NUMA 1, its NIC on NUMA 1."""
    container_view(machine, cpus="2-3", mems="0-1", interfaces=("ens1f0",))
    code, verdict = run(machine)
    assert code == 1
    assert verdict["aligned"] is False
    # 512 + 256 pages of 4 KiB and one 2 MiB page on NUMA 0, 1024 pages on NUMA 1
    assert verdict["memory_bytes"] == {"0": 768 * 4096 + 2 * 2048 * 1024, "1": 1024 * 4096}
    problems = "\n".join(verdict["problems"])  # type: ignore[arg-type]
    assert "Memory Manager isn't configured" in problems
    assert "network interface ens1f0 is on NUMA node 1" in problems
    assert "of resident memory is on NUMA nodes without this container's CPUs" in problems
    assert "CPUs span" not in problems


def test_text_output_and_exit_status_for_scripts(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    container_view(machine, cpus="0-31", mems="0-1")
    assert (
        main(["verify", "--no-nvml", "--path.sysfs", str(machine.sys), "--path.procfs", str(machine.paths.procfs)]) == 1
    )
    out = capsys.readouterr().out
    assert out.startswith("NOT aligned: CPUs 0-31 (NUMA 0-1)")
    assert "the CPU Manager did not pin this container" in out


def test_cannot_verify_is_exit_2(tmp_path: Path, machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", "--no-nvml", "--path.sysfs", str(machine.sys), "--path.procfs", str(tmp_path / "none")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot verify" in err


@pytest.mark.parametrize("path", ["PIX", "NODE"])
def test_the_gpu_nic_path_a_container_sees(
    machine: HostTree, tmp_path: Path, fake_nvml_library: Path, path: str
) -> None:
    """Inside a pod that sees one GPU (NVML lists only it) and one NIC: the path between them, and a problem
    when NCCL's default would use no GPUDirect RDMA over it, though everything sits on one NUMA node."""
    gpu, interface, cpus, numa = {"PIX": ("00000000:1A:00.0", "ens0f0", "2-3", "0"),
                                  "NODE": ("00000000:8A:00.0", "ens1f0", "10-11", "1")}[path]  # fmt: skip
    container_view(machine, cpus=cpus, mems=numa, maps=f"7f00 default anon=10 N{numa}=10 kernelpagesize_kB=4\n",
                   interfaces=(interface,))  # fmt: skip
    config = tmp_path / "nvml.conf"
    config.write_text(f"gpu GPU-visible NVIDIA_H100_80GB_HBM3 85899345920 {gpu} 0\n")
    env = {**os.environ, "LD_LIBRARY_PATH": str(fake_nvml_library.parent), "FAKE_NVML_CONFIG": str(config)}
    argv = ["verify", "--format", "json", "--path.sysfs", str(machine.sys), "--path.procfs", str(machine.paths.procfs)]
    result = subprocess.run([sys.executable, "-m", "exporter", *argv], capture_output=True, text=True, check=False,
                            env=env)  # fmt: skip
    verdict = json.loads(result.stdout)
    assert verdict["gpu_nic_path"]["path"] == path
    assert verdict["gpu_nic_path"]["gpudirect_rdma"] is (path == "PIX")
    problems = "\n".join(verdict["problems"])
    assert ("NCCL uses no GPUDirect RDMA" in problems) is (path != "PIX")
    assert result.returncode == (0 if path == "PIX" else 1), problems

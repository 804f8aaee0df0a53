from __future__ import annotations

import pytest

from exporter.cli import main
from tests.hosttree import HostTree
from tests.kubelet_files import fixture_config, install


def run_doctor(host: HostTree, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["doctor", "--no-nvml", "--path.sysfs", str(host.sys), "--path.kubelet", str(host.kubelet),
                 "--path.pod-logs", str(host.root / "pods")])  # fmt: skip
    return code, capsys.readouterr().out


def test_a_good_configuration(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    install(machine, cpu="cpu_manager_state.static-2pods.json", memory="memory_manager_state.static-hugepages.json",
            config=fixture_config() + 'cpuManagerPolicyOptions: {full-pcpus-only: "true"}\n')  # fmt: skip
    code, out = run_doctor(machine, capsys)
    assert code == 0
    assert "WARNING" not in out
    assert "ERROR" not in out


def test_findings_say_what_to_change(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    install(machine, config="kind: KubeletConfiguration\ncpuManagerPolicy: static\nmemoryManagerPolicy: Static\n"
            "topologyManagerPolicy: single-numa-node\ntopologyManagerScope: pod\n")  # fmt: skip
    code, out = run_doctor(machine, capsys)
    assert code == 1
    assert (
        "ERROR   cpu-reservation: the static CPU manager needs a non-zero CPU reservation: set reservedSystemCPUs"
        in out
    )
    assert "ERROR   memory-manager: memoryManagerPolicy Static needs reservedMemory" in out
    assert "INFO    topology-manager: pod scope with single-numa-node" in out
    assert "INFO    cpu-manager: SMT is on and full-pcpus-only is not set" in out


def test_none_policies_warn(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    install(machine, config="kind: KubeletConfiguration\n")
    code, out = run_doctor(machine, capsys)
    assert code == 0
    assert "WARNING cpu-manager: cpuManagerPolicy is none" in out
    assert "WARNING topology-manager: topologyManagerPolicy is none" in out


def test_many_numa_nodes_need_max_allowable(host: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    host.cpus(present=range(10))
    for numa in range(10):
        host.numa_node(numa, cpus=[numa], memory_kb=1 << 20)
    install(host, config='kind: KubeletConfiguration\ntopologyManagerPolicy: restricted\ncpuManagerPolicy: static\n'
            'reservedSystemCPUs: "0"\n')  # fmt: skip
    code, out = run_doctor(host, capsys)
    assert code == 1
    assert 'max-allowable-numa-nodes: "10"' in out

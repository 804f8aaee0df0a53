from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import main
from tests.hosttree import HostTree
from tests.kubelet_files import fixture_config, install


def run_doctor(host: HostTree, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["doctor", "--no-nvml", "--path.sysfs", str(host.sys), "--path.kubelet", str(host.kubelet),
                 "--path.pod-logs", str(host.root / "pods"), "--path.procfs", str(host.paths.procfs)])  # fmt: skip
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


def test_a_laptop_lint_of_a_config_without_kubelet_state(
    machine: HostTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`doctor --kubelet-config FILE` where no kubelet runs: absent state files are not errors."""
    config = tmp_path / "kubelet-config.yaml"
    config.write_text(fixture_config() + 'cpuManagerPolicyOptions: {full-pcpus-only: "true"}\n')
    argv = ["doctor", "--no-nvml", "--no-placement", "--no-podresources", "--path.sysfs", str(machine.sys),
            "--path.kubelet", str(tmp_path / "no-kubelet"), "--kubelet-config", str(config)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ERROR" not in out
    assert "INFO    sources: no cpu_manager_state, memory_manager_state" in out
    broken = tmp_path / "broken.yaml"
    broken.write_text(fixture_config(memory="Static").replace("reservedMemory:", "reservedMemoryX:"))
    assert main([*argv[:-1], str(broken)]) == 1, "Static memory without reservedMemory: the kubelet will not start"
    assert "ERROR" in capsys.readouterr().out


def test_a_missing_kubelet_config_is_a_usage_error(machine: HostTree, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code = main(["doctor", "--no-nvml", "--path.sysfs", str(machine.sys), "--kubelet-config", str(tmp_path / "nope")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "is not a file" in err


def test_a_config_the_kubelet_cannot_load(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    """The managers compare policy names exactly: `static` memory is refused, said once, as the refusal."""
    install(machine, config=fixture_config(memory="static"))
    code, out = run_doctor(machine, capsys)
    assert code == 1
    refusals = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert refusals == [
        "ERROR   kubelet-start: memoryManagerPolicy 'static' is not one of None, Static: the kubelet will not start "
        "(the checks below use the kubelet's defaults)"
    ]


def test_a_typo_and_a_removed_gate_are_warnings(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    install(machine, config=fixture_config() + "topologyManagerPolicyOption: {prefer-closest-numa-nodes: 'true'}\n"
            "featureGates: {MemoryManager: true}\n")  # fmt: skip
    code, out = run_doctor(machine, capsys)
    assert code == 0
    assert ("WARNING kubelet-config: unknown field 'topologyManagerPolicyOption': the kubelet ignores it "
            "(did you mean 'topologyManagerPolicyOptions'?)") in out  # fmt: skip
    assert "WARNING feature-gates: feature gate MemoryManager no longer exists in v1.36" in out


def test_the_configuration_against_the_host(machine: HostTree, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Reserved CPUs per NUMA node and socket, half-reserved cores under full-pcpus-only, and profiles
    too big for any NUMA node under single-numa-node."""
    install(machine, config=fixture_config().replace('"0,16"', '"0-15"')
            + 'cpuManagerPolicyOptions: {full-pcpus-only: "true"}\n')  # fmt: skip
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  big: {cpu: 17, memory: 1Gi}\n  small: {cpu: 2, memory: 1Gi}\n")
    code = main(["doctor", "--no-nvml", "--path.sysfs", str(machine.sys), "--path.kubelet", str(machine.kubelet),
                 "--path.pod-logs", str(machine.root / "pods"), "--profiles", str(profiles)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "INFO    cpu-reservation: reserved CPUs 0-15 leave for pods: NUMA 0 " in out
    assert "socket 0 " in out
    assert "hold only part of their cores: with full-pcpus-only their siblings 16-31 can never be" in out
    assert "profile big asks 17 cpu, more than any NUMA node has for pods" in out
    assert "profile small" not in out
    assert "INFO    pod-size: the largest pod single-numa-node admits on an empty node: " in out


def test_gpu_memory_nodes_count_toward_the_numa_node_limit(host: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    """Two CPU NUMA nodes and eight GPUs whose memory the driver onlined as NUMA nodes 2-9 (Grace Hopper,
    POWER9 + V100): ten NUMA nodes for the kubelet, which then refuses to start a Topology Manager policy
    without max-allowable-numa-nodes; doctor says which of them are GPU memory."""
    host.cpus(present=range(4))
    host.numa_node(0, cpus=[0, 1], memory_kb=1 << 20)
    host.numa_node(1, cpus=[2, 3], memory_kb=1 << 20)
    for index, numa in enumerate(range(2, 10)):
        host.numa_node(numa, cpus=[], memory_kb=1 << 20)
        host.write(f"proc/driver/nvidia/gpus/0000:0{index}:00.0/numa_status", f"Node:      {numa}\nStatus:    online\n")
    install(host, config='kind: KubeletConfiguration\ntopologyManagerPolicy: restricted\ncpuManagerPolicy: static\n'
            'reservedSystemCPUs: "0"\n')  # fmt: skip
    code, out = run_doctor(host, capsys)
    assert code == 1
    assert 'max-allowable-numa-nodes: "10"} (8 of them are not host DRAM (gpu-memory on NUMA 2-9)' in out
    assert (
        "INFO    memory-kinds: NUMA nodes that are not host DRAM: gpu-memory on NUMA 2-9 (the memory of GPUs 0000:00:00.0,"
        in out
    )


def test_gpus_without_a_nic_under_their_switch(machine: HostTree, capsys: pytest.CaptureFixture[str]) -> None:
    """The fixture machine: NUMA 0's GPUs share a switch with its NIC, NUMA 1's reach theirs through the host
    bridges (NODE)."""
    install(machine, config=fixture_config())
    _, out = run_doctor(machine, capsys)
    lines = [line for line in out.splitlines() if "gpu-nic:" in line]
    assert [line.split()[3] for line in lines] == ["0000:8a:00.0", "0000:8b:00.0"], lines
    assert "the nearest, 0000:af:00.0, is NODE away" in lines[0]

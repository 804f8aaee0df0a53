"""First contact with what a user has: a kubelet directory this process may not read, a kubeconfig that is not
YAML. One line, the cause, what to do; exit codes that keep "cannot tell" apart from "no"; never a traceback
and never a number that was not read (unreadable is not absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import without_capabilities
from tests.hosttree import HostTree
from tests.kubelet_files import fixture_config, install
from tests.oracle import REQUIRE_REAL


def run(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=60, check=False, cwd=Path(__file__).resolve().parents[2])  # fmt: skip


@pytest.fixture
def capless() -> list[str]:
    prefix = without_capabilities()
    if not prefix:
        reason = "needs root and setpriv (util-linux) to drop capabilities"
        if os.environ.get(REQUIRE_REAL) == "1":
            pytest.fail(f"{REQUIRE_REAL}=1 but {reason}")
        pytest.skip(reason)
    return prefix


def test_a_kubelet_directory_this_process_cannot_read(machine: HostTree, capless: list[str]) -> None:
    """The kubelet's directory is 0700 and another user's (as the kubelet's own is to anyone but root): the
    state files are there but unreadable. snapshot shows nothing it could not read as a number (every CPU
    of NUMA 0 would have been 'available' had the files been taken as absent), doctor names the cause first
    and advises nothing from a configuration it did not read."""
    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    # The host's procfs shows the kubelet, whose command line names its file in that directory.
    kubelet = machine.paths.procfs / "4242"
    kubelet.mkdir(parents=True)
    (kubelet / "comm").write_text("kubelet\n")
    (kubelet / "cmdline").write_bytes(f"/usr/bin/kubelet\0--root-dir={machine.kubelet}\0"
                                      f"--config={machine.kubelet / 'config.yaml'}\0".encode())  # fmt: skip
    os.chown(machine.kubelet, 65534, 65534)
    machine.kubelet.chmod(0o700)
    paths = ["--no-nvml", "--no-podresources", "--path.sysfs", str(machine.sys), "--path.procfs", str(machine.paths.procfs),
             "--path.kubelet", str(machine.kubelet), "--path.pod-logs", str(machine.root / "pods")]  # fmt: skip
    table = run(capless, "snapshot", *paths)
    assert table.returncode == 0, table.stderr
    assert "Traceback" not in table.stderr + table.stdout
    assert "cpuManagerPolicy=unknown" in table.stdout
    assert "topologyManagerPolicy=unknown" in table.stdout
    document = json.loads(run(capless, "snapshot", "--format", "json", *paths).stdout)
    cpu = [a for a in document["accounting"]["accounts"] if a["resource"] == "cpu"]
    assert cpu, "the CPUs are listed"
    assert [(account["available"], account["allocatable"]) for account in cpu] == [(None, None)] * 2, cpu
    memory = [a for a in document["accounting"]["accounts"] if a["resource"] == "memory"]
    assert [(account["available"], account["allocatable"]) for account in memory] == [(None, None)] * 2, memory
    assert table.stdout.count("unknown") >= 8, "allocatable and available of CPUs and memory on both NUMA nodes"
    doctor = run(capless, "doctor", *paths)
    assert doctor.returncode == 1
    assert "Traceback" not in doctor.stderr
    first = doctor.stdout.splitlines()[0]
    assert first.startswith("ERROR   sources: cannot read kubelet_config, cpu_manager_state"), first
    assert "cpuManagerPolicy is none" not in doctor.stdout, "no advice from defaults it did not read"


def test_a_kubeconfig_that_is_not_yaml(machine: HostTree, tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nclusters: [\n  - bad: {\n")
    served = run([], "serve", "--web.listen-address", "127.0.0.1:0", "--kubeconfig", str(broken), "--no-nvml",
                 "--path.sysfs", str(machine.sys), "--path.kubelet", str(machine.kubelet))  # fmt: skip
    assert served.returncode == 1
    assert "Traceback" not in served.stderr
    assert served.stderr.strip().splitlines()[-1] == (
        f"numa-topology-exporter: cannot use kubeconfig {broken}: not valid YAML: expected the node content, but "
        "found '-' (line 3, column 3)"
    )

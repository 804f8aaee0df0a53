"""The kubelet's command line, held to the real kubelet v1.36.2: flags override the file and the drop-ins.

Real kubelets (../shared/k8s/start-node with KUBELET_FLAGS) whose config file says one thing and whose command
line says another, as on EKS (`--kubelet-extra-args`), kubeadm (`KUBELET_EXTRA_ARGS`) and OpenShift. What the
agent reads from the kubelet's process (its procfs entry) and applies equals what the kubelet serves at
/configz, and the agent publishes the policy the kubelet runs: flags alone, flags over drop-ins, a kubelet
restarted with other flags, and a config file the agent was never told of.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.kubelet.configuration import read_effective_config
from tests.controlplane import AGENT_USER, ControlPlane, wait_until
from tests.integration.test_real_kubelet_config import configz
from tests.realnodes import DEFAULT_CONFIG, RealNode, agent, real_machine, require_real_nodes, running, start_real_node

# The file: no CPU, memory or topology policy, no reservations. The flags: all of it, as a distribution's extra
# kubelet arguments give it.
PLAIN_FILE = {"cpuManagerPolicy": "none", "memoryManagerPolicy": "None", "topologyManagerPolicy": "none",
              "topologyManagerScope": "container", "reservedSystemCPUs": "", "kubeReserved": {},
              "reservedMemory": [], "evictionHard": {"memory.available": "100Mi"}}  # fmt: skip
FLAGS = ("--cpu-manager-policy=static --reserved-cpus=0,16 --memory-manager-policy=Static "
         "--kube-reserved=memory=1948Mi --eviction-hard='memory.available<100Mi' "  # quoted: start-node's shell reads the line
         "--reserved-memory 0:memory=1Gi --reserved-memory=1:memory=1Gi "
         "--topology-manager-policy=single-numa-node --topology-manager-scope=pod "
         "--topology-manager-policy-options=prefer-closest-numa-nodes=true")  # fmt: skip


def real_node(kube: ControlPlane, root: Path, name: str, **options: Any) -> contextlib.AbstractContextManager[RealNode]:
    return running(kube, RealNode(name, root / name, real_machine(root / f"{name}-machine"), kube.kubeconfig("admin"),
                                  **options))  # fmt: skip


def assert_equal_to_configz(node: RealNode) -> dict[str, Any]:
    """Our effective configuration (the kubelet's process from the machine's procfs) equals the kubelet's own."""
    ours = read_effective_config(dataclasses.replace(node.paths, host_path_map=(("/", Path("/")),)))
    theirs = configz(node)
    assert ours.kubelet_pid in node.pids()["kubelet"]
    assert (ours.cpu_manager_policy, ours.memory_manager_policy) == (theirs["cpuManagerPolicy"], theirs["memoryManagerPolicy"])
    assert (ours.topology_manager_policy, ours.topology_manager_scope) == (
        theirs["topologyManagerPolicy"], theirs["topologyManagerScope"])  # fmt: skip
    assert dict(ours.topology_manager_policy_options) == theirs.get("topologyManagerPolicyOptions", {})
    assert ",".join(str(cpu) for cpu in sorted(ours.reserved_system_cpus)) == theirs.get("reservedSystemCPUs", "")
    assert dict(ours.kube_reserved) == theirs.get("kubeReserved", {})
    assert dict(ours.eviction_hard or {}) == theirs.get("evictionHard", {})
    reserved = {item["numaNode"]: item["limits"] for item in theirs.get("reservedMemory") or []}
    assert {numa: {r: str(v) for r, v in limits.items()} for numa, limits in ours.reserved_memory.items()} == {
        numa: {r: str(_bytes(v)) for r, v in limits.items()} for numa, limits in reserved.items()
    }
    return theirs


def _bytes(quantity: str) -> int:
    from exporter.units import quantity_value

    return quantity_value(quantity)


def published(kube: ControlPlane, name: str, policy: str) -> dict[str, str] | None:
    obj = kube.nrt(name) or {}
    attributes = {a["name"]: a["value"] for a in obj.get("attributes", [])}
    return attributes if attributes.get("topologyManagerPolicy") == policy else None


def test_flags_alone_override_the_file(kube: ControlPlane, short_tmp: Path) -> None:
    with real_node(kube, short_tmp, "flags-0", config=PLAIN_FILE, flags=FLAGS) as node:
        theirs = assert_equal_to_configz(node)
        assert theirs["topologyManagerPolicy"] == "single-numa-node", "the flag won over the file's none"
        with agent(kube, node, user=AGENT_USER) as daemon:
            attributes = wait_until(lambda: published(kube, node.name, "single-numa-node"), timeout=30,
                                    what="the flag's policy published")  # fmt: skip
            assert attributes["topologyManagerScope"] == "pod"
            status, body = daemon.get("/snapshot.json")
            assert status == 200
            config = json.loads(body)["kubelet"]["config"]
            assert config["field_origins"]["topologyManagerPolicy"] == "flag --topology-manager-policy"
            assert config["field_origins"]["cpuManagerPolicy"] == "flag --cpu-manager-policy"
            assert config["kubelet_pid"] in node.pids()["kubelet"]
            assert config["flags_unchecked"] == ""
            assert daemon.sample('numa_topology_source_up{source="kubelet_config"}') == 1
            # The flags' reservation (CPUs 0 and 16) is subtracted as the kubelet does.
            zones = {z["name"]: {r["name"]: r for r in z["resources"]} for z in kube.nrt(node.name)["zones"]}
            assert int(zones["node-0"]["cpu"]["allocatable"]) == 14

        # An agent that cannot see the kubelet's process reads the file alone and says the flags are unchecked:
        # with the file's none, it would be wrong, and doctor says why it cannot be sure.
        blind = short_tmp / "blind-proc"
        blind.mkdir()
        for name in ("cpuinfo", "meminfo"):
            (blind / name).write_bytes((node.machine.root / "proc" / name).read_bytes())
        with agent(kube, node, user=AGENT_USER, extra=["--path.procfs", str(blind)]) as daemon:
            body = wait_until(lambda: (answer := daemon.get("/snapshot.json"))[0] == 200 and answer[1], timeout=30,
                              what="the blind agent's snapshot")  # fmt: skip
            config = json.loads(body)["kubelet"]["config"]
            assert "flags are unchecked" in config["flags_unchecked"]


def test_flags_over_drop_ins(kube: ControlPlane, short_tmp: Path) -> None:
    dropins = short_tmp / "dropins"
    dropins.mkdir()
    (dropins / "50-numa.conf").write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration", "enforceNodeAllocatable": [],
        "topologyManagerPolicy": "best-effort", "topologyManagerScope": "pod",
    }))  # fmt: skip
    with real_node(kube, short_tmp, "flags-1", dropin_dir=dropins,
                   flags="--topology-manager-policy=restricted") as node:  # fmt: skip
        theirs = assert_equal_to_configz(node)
        assert (theirs["topologyManagerPolicy"], theirs["topologyManagerScope"]) == ("restricted", "pod")
        with agent(kube, node, user=AGENT_USER):
            attributes = wait_until(lambda: published(kube, node.name, "restricted"), timeout=30,
                                    what="the flag's policy over the drop-in's")  # fmt: skip
            assert attributes["topologyManagerScope"] == "pod", "the drop-in's scope, no flag for it"


def test_a_kubelet_restarted_with_other_flags(kube: ControlPlane, short_tmp: Path) -> None:
    """The documented procedure for a policy change: stop the kubelet, remove the CPU and memory manager state
    files, start it with the new settings. The agent follows the new process."""
    bin_dir = require_real_nodes()
    with (
        real_node(kube, short_tmp, "flags-2", config=DEFAULT_CONFIG, flags="--topology-manager-policy=restricted") as node,
        agent(kube, node, user=AGENT_USER) as daemon,
    ):
        wait_until(lambda: published(kube, node.name, "restricted"), timeout=30, what="restricted")
        first = node.pids()["kubelet"]
        node.stop()
        for state in ("cpu_manager_state", "memory_manager_state"):
            (node.kubelet_dir / state).unlink(missing_ok=True)
        node.flags = "--topology-manager-policy=best-effort --cpu-manager-policy=none --reserved-cpus="
        start_real_node(kube, node, bin_dir)
        assert node.pids()["kubelet"] != first
        theirs = assert_equal_to_configz(node)
        assert (theirs["topologyManagerPolicy"], theirs["cpuManagerPolicy"]) == ("best-effort", "none")
        wait_until(lambda: published(kube, node.name, "best-effort"), timeout=30, what="the restarted kubelet's")
        config = json.loads(daemon.get("/snapshot.json")[1])["kubelet"]["config"]
        assert config["kubelet_pid"] in node.pids()["kubelet"]
        assert config["cpu_manager_policy"] == "none"


def test_a_config_file_named_only_on_the_command_line(kube: ControlPlane, short_tmp: Path) -> None:
    """The kubelet's --config is outside its root directory (OpenShift's /etc/kubernetes/kubelet.conf) and the
    agent was told nothing: where the path is visible to it, it reads it; where it is not, it publishes no policy
    and names the path and the chart value that mounts it."""
    elsewhere = short_tmp / "etc" / "kubernetes" / "kubelet.conf"
    with real_node(kube, short_tmp, "flags-3", config={**DEFAULT_CONFIG, "topologyManagerPolicy": "restricted"},
                   config_file=elsewhere) as node:  # fmt: skip
        untold = RealNode(node.name, node.directory, node.machine, node.kubeconfig, port=node.port)
        with agent(kube, untold, user=AGENT_USER):
            wait_until(lambda: published(kube, node.name, "restricted"), timeout=30, what="the file it was not told of")
        kube.delete_nrt(node.name)
        with agent(kube, untold, user=AGENT_USER, host_paths=False) as daemon:
            obj = wait_until(lambda: kube.nrt(node.name), timeout=30, what="the NRT")
            assert "topologyManagerPolicy" not in {a["name"] for a in obj["attributes"]}
            assert daemon.sample('numa_topology_source_up{source="kubelet_config"}') == 0
            text = "".join(daemon.output)
            assert f"--config {elsewhere}" in text
            assert "exporter.kubeletConfig.file" in text


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths under it (device plugins, podresources) stay within 108 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="kf-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leftover_nrts(kube: ControlPlane) -> Iterator[None]:
    yield
    for index in range(4):
        kube.delete_nrt(f"flags-{index}")

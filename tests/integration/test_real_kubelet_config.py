"""The kubelet's configuration where distributions keep it, drop-ins merged, held to the real kubelet v1.36.2.

The real kubelet (../shared/k8s/start-node) runs with its config file at Amazon EKS AL2023's path and a
`--config-dir` of drop-ins: what we merge equals what the kubelet itself serves at /configz. An agent pointed at
kubeadm's default path (where the file is not) publishes no topologyManagerPolicy, never `none`, and says so;
pointed at the right place, it publishes the policy the kubelet runs.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.sources.kubelet_config import read_kubelet_config
from tests.controlplane import AGENT_USER, ControlPlane, wait_until
from tests.realnodes import (
    DEFAULT_CONFIG,
    RealNode,
    agent,
    reachable_at_node_ip,
    real_machine,
    require_real_nodes,
    running,
    start_real_node,
)

DROPINS = {
    # nodeadm's own drop-in carries what it manages; ours turns the Topology Manager to best-effort, pod scope.
    "00-nodeadm.conf": {"maxPods": 58, "kubeReserved": {"memory": "1948Mi", "ephemeral-storage": "1Gi"}},
    "50-numa.conf": {
        "topologyManagerPolicy": "best-effort",
        "topologyManagerScope": "pod",
        "featureGates": {"CPUManagerPolicyBetaOptions": True},
    },
    "nested/60-options.conf": {"cpuManagerPolicyOptions": {"full-pcpus-only": "true"}},
    "70-not-a-dropin.yaml": {"topologyManagerPolicy": "restricted"},  # not *.conf: the kubelet skips it
}


def configz(node: RealNode) -> dict[str, Any]:
    """The kubelet's effective configuration, from the kubelet itself (anonymous, AlwaysAllow in start-node)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{node.port}/configz", context=context, timeout=10) as answer:
        document: dict[str, Any] = json.load(answer)["kubeletconfig"]
    return document


@pytest.fixture(scope="module")
def eks_node(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    root = tmp_path_factory.mktemp("eks")
    host_etc = root / "host" / "etc" / "kubernetes" / "kubelet"
    dropins = host_etc / "config.json.d"
    for name, body in DROPINS.items():
        path = dropins / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Every drop-in sets enforceNodeAllocatable: [] as start-node's file does (a drop-in without it is
        # defaulted to [pods], which this node without pod cgroups refuses; tested below on our side).
        document = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                    "enforceNodeAllocatable": [], **body}  # fmt: skip
        path.write_text(json.dumps(document))
    node = RealNode("real-eks", root / "node", real_machine(root / "machine"), kube.kubeconfig("admin"),
                    config={**DEFAULT_CONFIG, "topologyManagerPolicy": "single-numa-node"},
                    config_file=host_etc / "config.json", dropin_dir=dropins)  # fmt: skip
    with running(kube, node):
        yield node


def test_drop_ins_merge_as_the_real_kubelet_merges_them(eks_node: RealNode) -> None:
    ours = read_kubelet_config(eks_node.paths)
    theirs = configz(eks_node)
    assert theirs["topologyManagerPolicy"] == "best-effort"  # the drop-in won over the file's single-numa-node
    assert (ours.topology_manager_policy, ours.topology_manager_scope) == (
        theirs["topologyManagerPolicy"],
        theirs["topologyManagerScope"],
    )
    assert ours.cpu_manager_policy == theirs["cpuManagerPolicy"] == "static"
    assert ours.memory_manager_policy == theirs["memoryManagerPolicy"] == "Static"
    assert dict(ours.cpu_manager_policy_options) == theirs["cpuManagerPolicyOptions"]  # from the nested drop-in
    assert dict(ours.feature_gates) == theirs["featureGates"]
    assert ours.kube_reserved["ephemeral-storage"] == theirs["kubeReserved"]["ephemeral-storage"]
    assert ours.kube_reserved["memory"] == theirs["kubeReserved"]["memory"]
    assert ",".join(str(cpu) for cpu in sorted(ours.reserved_system_cpus)) == theirs["reservedSystemCPUs"]
    assert [Path(p).name for p in ours.origin] == ["config.json", "00-nodeadm.conf", "50-numa.conf", "60-options.conf"]


def test_the_agent_publishes_the_policy_the_kubelet_runs_and_never_a_guess(
    kube: ControlPlane, eks_node: RealNode
) -> None:
    # Pointed at kubeadm's path (the default), where this node keeps nothing: no policy published, the source
    # down, and the reason names what to set.
    blind = RealNode(eks_node.name, eks_node.directory, eks_node.machine, eks_node.kubeconfig, port=eks_node.port)
    with agent(kube, blind, user=AGENT_USER, host_paths=False) as daemon:
        obj = wait_until(lambda: kube.nrt(eks_node.name), timeout=30, what="the NRT")
        names = {a["name"] for a in obj["attributes"]}
        assert not names & {"topologyManagerPolicy", "topologyManagerScope"}, obj["attributes"]
        assert "nodeTopologyPodsFingerprint" in names
        assert daemon.sample('numa_topology_source_up{source="kubelet_config"}') == 0
        text = daemon.metrics()
        assert 'numa_topology_kubelet_config_info{cpu_manager_policy="static"' in text
        assert 'topology_manager_policy="unknown"' in text
    kube.delete_nrt(eks_node.name)
    # Pointed at the file and its drop-ins: the kubelet's own policy.
    with agent(kube, eks_node, user=AGENT_USER) as daemon:

        def published() -> dict[str, str] | None:
            obj = kube.nrt(eks_node.name) or {}
            attributes = {a["name"]: a["value"] for a in obj.get("attributes", [])}
            return attributes if "topologyManagerPolicy" in attributes else None

        attributes = wait_until(published, timeout=30, what="the NRT with a policy")
        assert (attributes["topologyManagerPolicy"], attributes["topologyManagerScope"]) == ("best-effort", "pod")
        assert daemon.sample('numa_topology_source_up{source="kubelet_config"}') == 1


def test_configz_through_the_api_server_needs_nodes_proxy(
    kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """--kubelet-configz reads the kubelet's effective configuration through the real API server's node proxy
    from the real kubelet (reached on its Node's InternalIP: tests/realnodes.py `reachable_at_node_ip`). With
    the chart's default RBAC the API server refuses: the source is down, no policy published. With
    exporter.kubeletConfig.configz the chart grants nodes/proxy, and the kubelet's own policy is published,
    though no file is where the agent could read it."""
    bin_dir = require_real_nodes()
    root = tmp_path_factory.mktemp("configz")
    node = RealNode("real-configz", root / "node", real_machine(root / "machine"), kube.kubeconfig("admin"),
                    config={**DEFAULT_CONFIG, "topologyManagerPolicy": "restricted"},
                    config_file=root / "somewhere" / "kubelet.yaml")  # fmt: skip
    unmounted = RealNode(node.name, node.directory, node.machine, node.kubeconfig, port=node.port)
    with contextlib.ExitStack() as stack:
        stack.callback(kube.delete_nrt, node.name)
        stack.callback(kube.request, "DELETE", f"/api/v1/nodes/{node.name}")
        stack.callback(node.stop)
        stack.callback(kube.apply_chart_rbac)
        start_real_node(kube, node, bin_dir)
        stack.enter_context(reachable_at_node_ip(kube, node))
        configz = kube.ok("GET", f"/api/v1/nodes/{node.name}/proxy/configz")["kubeletconfig"]
        assert configz["topologyManagerPolicy"] == "restricted"
        with agent(kube, unmounted, user=AGENT_USER, extra=["--kubelet-configz"]) as daemon:
            obj = wait_until(lambda: kube.nrt(node.name), timeout=30, what="the NRT")
            assert "topologyManagerPolicy" not in {a["name"] for a in obj["attributes"]}
            refused = 'numa_topology_source_errors_total{reason="permission",source="kubelet_config"}'
            wait_until(lambda: daemon.sample(refused), timeout=30, what="the refusal counted")
            assert daemon.sample('numa_topology_source_up{source="kubelet_config"}') == 0
        kube.delete_nrt(node.name)
        kube.apply_chart_rbac({"exporter": {"kubeletConfig": {"configz": True}}})
        with agent(kube, unmounted, user=AGENT_USER, extra=["--kubelet-configz"]) as daemon:

            def published() -> dict[str, str] | None:
                obj = kube.nrt(node.name) or {}
                attributes = {a["name"]: a["value"] for a in obj.get("attributes", [])}
                return attributes if "topologyManagerPolicy" in attributes else None

            assert wait_until(published, timeout=30, what="the policy")["topologyManagerPolicy"] == "restricted"
            assert daemon.sample('numa_topology_source_up{source="kubelet_config"}') == 1

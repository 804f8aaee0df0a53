"""The cluster view (`fit`, `fit --summary`, `explain`): the NodeResourceTopologyMatch filter as ported in
exporter/cluster/nrtmatch.py, held to the real scheduler (kube-scheduler-nrt, scheduler-plugins 903da7df) on the real
API server over random NRT states and pod shapes, and the commands run as an operator runs them.

The differential test runs the scheduler with its cache off (`cacheResyncPeriodSeconds: 0`: the plugin then
reads each NRT object from the API server at every Filter, so what it filters on is exactly what `fit`
read), and reads its log at --v=4: per pod and node, `"begin"` when the filter ran and `"cannot align ..."`
when it refused the node, with the resource it stopped at.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cluster import explain, fit, load
from exporter.cluster.nrtmatch import (
    TopologyManager,
    filter_node,
    node_resources,
    numa_zones,
    pod_shape,
    topology_manager,
)
from tests.controlplane import LIMITED_USER, NRT_PATH, ControlPlane, wait_until
from tests.workload import log_size, scheduler_log_since

ROOT = Path(__file__).resolve().parents[2]
DIFF_SEED = int(os.environ.get("FIT_DIFF_SEED", "20261204"))
DIFF_ROUNDS = int(os.environ.get("FIT_DIFF_ROUNDS", "8"))
DIFF_PODS = int(os.environ.get("FIT_DIFF_PODS", "20"))
GPU = "nvidia.com/gpu"
NIC = "example.com/nic"
COUNTS: dict[str, int] = {}


def nrt(zones: list[dict[str, Any]], **attributes: str) -> dict[str, Any]:
    return {
        "apiVersion": "topology.node.k8s.io/v1alpha2",
        "kind": "NodeResourceTopology",
        "metadata": {"name": "n"},
        "attributes": [{"name": name, "value": value} for name, value in attributes.items()],
        "zones": zones,
    }


def zone(numa: int, devices: dict[str, str] | None = None, **available: str) -> dict[str, Any]:
    return {
        "name": f"node-{numa}",
        "type": "Node",
        "resources": [
            {"name": name, "capacity": value, "allocatable": value, "available": value}
            for name, value in {**available, **(devices or {})}.items()
        ],
    }


def pod(*containers: dict[str, str], init: tuple[dict[str, str], ...] = (), guaranteed: bool = True) -> dict[str, Any]:
    def body(name: str, resources: dict[str, str]) -> dict[str, Any]:
        limits = resources if guaranteed else {k: v for k, v in resources.items() if "/" in k}
        return {"name": name, "image": "pause", "resources": {"requests": resources, "limits": limits}}

    spec: dict[str, Any] = {"containers": [body(f"c{i}", c) for i, c in enumerate(containers)]}
    if init:
        spec["initContainers"] = [body(f"i{i}", c) for i, c in enumerate(init)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


SINGLE = {"topologyManagerPolicy": "single-numa-node"}
ALLOCATABLE = {"cpu", "memory", "pods", "ephemeral-storage", GPU}


# --- the filter, by hand ------------------------------------------------------------------------------


def test_container_scope_takes_each_container_out_of_the_numa_node_it_lands_on() -> None:
    object_ = nrt([zone(0, cpu="6", memory="8Gi"), zone(1, cpu="4", memory="8Gi")], **SINGLE)
    two = pod({"cpu": "4", "memory": "1Gi"}, {"cpu": "4", "memory": "1Gi"})
    verdict = filter_node(pod_shape(two), object_, ALLOCATABLE)
    assert verdict.fits
    assert verdict.placements == (("c0", 0), ("c1", 1)), "the first on node-0 (lowest), the second no longer fits there"
    three = pod({"cpu": "4", "memory": "1Gi"}, {"cpu": "4", "memory": "1Gi"}, {"cpu": "1", "memory": "1Gi"})
    verdict = filter_node(pod_shape(three), object_, ALLOCATABLE)
    assert verdict.fits
    assert verdict.placements[2] == ("c2", 0)
    too_many = pod({"cpu": "4", "memory": "1Gi"}, {"cpu": "4", "memory": "1Gi"}, {"cpu": "3", "memory": "1Gi"})
    verdict = filter_node(pod_shape(too_many), object_, ALLOCATABLE)
    assert not verdict.fits
    assert verdict.blocked_by == "container c2"
    assert {(s.numa_node, s.resource, s.available) for s in verdict.shortfalls} == {
        (0, "cpu", Fraction(2)), (1, "cpu", Fraction(0))
    }  # fmt: skip


def test_pod_scope_takes_the_pod_as_one_request_and_init_containers_by_their_largest() -> None:
    object_ = nrt([zone(0, cpu="6", memory="8Gi"), zone(1, cpu="4", memory="8Gi")],
                  topologyManagerPolicy="single-numa-node", topologyManagerScope="pod")  # fmt: skip
    two = pod({"cpu": "4", "memory": "1Gi"}, {"cpu": "4", "memory": "1Gi"})
    verdict = filter_node(pod_shape(two), object_, ALLOCATABLE)
    assert (verdict.fits, verdict.blocked_by) == (False, "pod"), "8 CPUs as one pod: no NUMA node has them"
    init = pod({"cpu": "2", "memory": "1Gi"}, init=({"cpu": "5", "memory": "1Gi"},))
    assert filter_node(pod_shape(init), object_, ALLOCATABLE).numa_nodes == (0,), "max(2, 5) = 5 fits node-0 only"
    assert pod_shape(init).effective_request()["cpu"] == 5


def test_not_guaranteed_pods_pass_on_cpu_and_memory_but_not_on_devices() -> None:
    object_ = nrt([zone(0, {GPU: "0"}, cpu="0", memory="0"), zone(1, {GPU: "1"}, cpu="0", memory="0")],
                  **SINGLE)  # fmt: skip
    burstable = pod({"cpu": "4", "memory": "1Gi"}, guaranteed=False)
    assert pod_shape(burstable).qos == "Burstable"
    verdict = filter_node(pod_shape(burstable), object_, ALLOCATABLE)
    assert (verdict.fits, verdict.applied) == (True, True), "cpu and memory of a Burstable pod fit any NUMA node"
    with_gpu = pod({"cpu": "4", "memory": "1Gi", GPU: "1"}, guaranteed=False)
    assert filter_node(pod_shape(with_gpu), object_, ALLOCATABLE).numa_nodes == (1,)
    two_gpus = pod({"cpu": "4", GPU: "2"}, guaranteed=False)
    assert not filter_node(pod_shape(two_gpus), object_, ALLOCATABLE).fits
    best_effort = pod({}, guaranteed=False)
    assert not filter_node(pod_shape(best_effort), object_, ALLOCATABLE).applied
    best_effort_gpu = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [
        {"name": "c", "resources": {"limits": {GPU: "2"}}}]}}  # fmt: skip
    shape = pod_shape(best_effort_gpu)
    assert (shape.qos, shape.non_native) == ("BestEffort", True), "requests are defaulted from limits"
    assert filter_node(shape, object_, ALLOCATABLE).applied
    assert not filter_node(shape, object_, ALLOCATABLE).fits


def test_host_level_and_node_level_resources() -> None:
    object_ = nrt([zone(0, cpu="8", memory="8Gi"), zone(1, cpu="8", memory="8Gi")], **SINGLE)
    nic = pod({"cpu": "2", "memory": "1Gi", NIC: "1"})
    assert not filter_node(pod_shape(nic), object_, ALLOCATABLE).fits, "the node does not list example.com/nic"
    assert filter_node(pod_shape(nic), object_, {*ALLOCATABLE, NIC}).fits, "listed there, host-level: no NUMA asked"
    hugepages = pod({"cpu": "2", "memory": "1Gi", "hugepages-2Mi": "2Mi"})
    verdict = filter_node(pod_shape(hugepages), object_, {*ALLOCATABLE, "hugepages-2Mi"})
    assert not verdict.fits, "hugepages are NUMA-affine: a resource no zone lists rules every NUMA node out"
    assert [s.numa_node for s in verdict.shortfalls] == [None]
    node = {"status": {"allocatable": {"cpu": "4", "hugepages-1Gi": "0", "example.com/x": "0", "storage": "1"}}}
    assert node_resources(node) == {"cpu", "memory", "pods", "ephemeral-storage", "hugepages-1Gi", "example.com/x"}


def test_policy_comes_from_attributes_over_the_deprecated_field_and_invalid_values_are_ignored() -> None:
    legacy = {"topologyPolicies": ["SingleNUMANodePodLevel"], "attributes": []}
    assert topology_manager(legacy) == TopologyManager("single-numa-node", "pod", 8)
    both = {**legacy, "attributes": [{"name": "topologyManagerPolicy", "value": "restricted"},
                                     {"name": "topologyManagerScope", "value": "bogus"},
                                     {"name": "topologyManagerMaxNUMANodes", "value": "1"}]}  # fmt: skip
    assert topology_manager(both) == TopologyManager("restricted", "pod", 8)
    assert topology_manager({}) == TopologyManager("none", "container", 8)
    restricted = filter_node(pod_shape(pod({"cpu": "99", "memory": "1Gi"})), both, ALLOCATABLE)
    assert restricted.fits
    assert not restricted.applied
    assert "restricted" in (restricted.note or "")
    socket_zone = {"name": "socket-0", "type": "Socket", "resources": []}
    assert [z.numa_node for z in numa_zones({"zones": [socket_zone, zone(1, cpu="1"), zone(0, cpu="1")]})] == [1, 0]


# --- against the real scheduler -----------------------------------------------------------------------


def random_nrt(rng: random.Random, name: str, *, strict: bool) -> dict[str, Any]:
    """A random object; `strict`: every node single-numa-node (so some pods fit nowhere)."""
    numa_count = rng.choice([1, 2, 2, 2, 3, 4])
    gpus = rng.random() < 0.6
    hugepages = rng.random() < 0.4
    zones = []
    for numa in range(numa_count):
        resources = [
            {"name": "cpu", "capacity": "16", "allocatable": "14", "available": str(rng.randint(0, 12))},
            {"name": "memory", "capacity": "16Gi", "allocatable": "15Gi",
             "available": rng.choice([f"{rng.randint(0, 24) * 512}Mi", "1500M", "0"])},
        ]  # fmt: skip
        if hugepages:
            resources.append({"name": "hugepages-2Mi", "capacity": "2Gi", "allocatable": "2Gi",
                              "available": f"{rng.randint(0, 16) * 128}Mi"})  # fmt: skip
        if gpus and rng.random() < 0.75:
            resources.append({"name": GPU, "capacity": "2", "allocatable": "2", "available": str(rng.randint(0, 2))})
        if rng.random() < 0.3:
            resources.append({"name": NIC, "capacity": "4", "allocatable": "4", "available": str(rng.randint(0, 2))})
        zones.append({"name": f"node-{numa}", "type": "Node", "resources": resources,
                      "costs": [{"name": f"node-{o}", "value": 10 if o == numa else 20} for o in range(numa_count)]})  # fmt: skip
    if rng.random() < 0.15:
        zones.append({"name": "socket-0", "type": "Socket", "resources": [
            {"name": "cpu", "capacity": "64", "allocatable": "64", "available": "64"}]})  # fmt: skip
    attributes = []
    policy = rng.choice(["single-numa-node"] * 6 + ["restricted", "best-effort", "none", "bogus", None])
    policy = "single-numa-node" if strict else policy
    if policy is not None:
        attributes.append({"name": "topologyManagerPolicy", "value": policy})
    scope = rng.choice(["container", "container", "pod", "pod", None, "bogus"])
    if scope is not None:
        attributes.append({"name": "topologyManagerScope", "value": scope})
    if rng.random() < 0.5:
        attributes.append({"name": "topologyManagerMaxNUMANodes", "value": rng.choice(["8", "1", "abc", "2000"])})
    body: dict[str, Any] = {
        "apiVersion": "topology.node.k8s.io/v1alpha2",
        "kind": "NodeResourceTopology",
        "metadata": {"name": name},
        "attributes": attributes,
        "zones": zones,
    }
    if policy is None and rng.random() < 0.5:
        body["topologyPolicies"] = [rng.choice(["SingleNUMANodePodLevel", "SingleNUMANodeContainerLevel", "None"])]
    return body


def random_container(rng: random.Random, name: str, qos: str) -> dict[str, Any]:
    resources: dict[str, str] = {}
    if qos != "BestEffort":
        resources["cpu"] = rng.choice(["1", "2", "3", "4", "6", "8", "12", "500m", "1500m"])
        resources["memory"] = rng.choice(["256Mi", "1Gi", "2Gi", "4Gi", "6Gi", "1500M", "10Gi"])
        if rng.random() < 0.2:
            resources["hugepages-2Mi"] = rng.choice(["64Mi", "256Mi", "1Gi"])
    devices = {}
    if rng.random() < 0.35:
        devices[GPU] = rng.choice(["1", "1", "2"])
    if rng.random() < 0.15:
        devices[NIC] = "1"
    if rng.random() < 0.1:
        devices["ephemeral-storage"] = "1Gi"
    if qos == "Guaranteed":
        requests = limits = {**resources, **devices}
    else:
        requests = {**resources, **devices}
        limits = {**{k: v for k, v in devices.items() if k != "ephemeral-storage"},
                  **({"memory": "32Gi"} if "memory" in resources and "hugepages-2Mi" not in resources else {})}  # fmt: skip
        if "hugepages-2Mi" in resources:
            limits["hugepages-2Mi"] = resources["hugepages-2Mi"]
    body: dict[str, Any] = {"name": name, "image": "pause", "resources": {}}
    if requests and qos != "BestEffort":
        body["resources"]["requests"] = requests
    if limits:
        body["resources"]["limits"] = limits
    return body


def random_pod(rng: random.Random, name: str, label: str) -> dict[str, Any]:
    qos = rng.choice(["Guaranteed"] * 6 + ["Burstable"] * 3 + ["BestEffort"])
    spec: dict[str, Any] = {
        "schedulerName": "topo-aware-scheduler",
        "nodeSelector": {"nte-fit-diff": label},
        "tolerations": [{"key": "nte-fit-diff", "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 0,
        "containers": [random_container(rng, f"c{i}", qos) for i in range(rng.choice([1, 1, 2, 3]))],
    }
    if rng.random() < 0.25:
        init = random_container(rng, "init", qos)
        if rng.random() < 0.4:
            init["restartPolicy"] = "Always"  # a sidecar
        spec["initContainers"] = [init]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


FILTER_LINE = re.compile(r'filter\.go:\d+\] "([^"]+)" pod="([^"]+)" podUID="[^"]*" node="([^"]+)"(.*)$')


def filter_verdicts(lines: list[str]) -> dict[tuple[str, str], tuple[bool, str | None]]:
    """(namespace/pod, node) -> (refused, the resource it stopped at) for every Filter call logged."""
    seen: dict[tuple[str, str], tuple[bool, str | None]] = {}
    for line in lines:
        match = FILTER_LINE.search(line)
        if not match:
            continue
        message, pod_name, node = match.group(1), match.group(2), match.group(3)
        key = (pod_name, node)
        if message == "begin":
            seen.setdefault(key, (False, None))
        elif message.startswith("cannot align"):
            reason = re.search(r'reason="([^"]*)"', match.group(4))
            seen[key] = (True, reason.group(1) if reason else None)
    return seen


@pytest.fixture
def diff_nodes(kube: ControlPlane) -> Iterator[tuple[str, list[str]]]:
    """Six Nodes of this test's own (tainted: no other test's pod lands there), plenty of allocatable so that
    NodeResourcesFit never refuses first, and the scheduler with its NRT cache off, at --v=4."""
    label = f"d{time.monotonic_ns() % 10**8}"
    names = [f"fit-diff-{label}-{i}" for i in range(6)]
    capacity = {"cpu": "1000", "memory": "4Ti", "pods": "1000", "ephemeral-storage": "1Ti", "hugepages-2Mi": "64Gi",
                GPU: "100", NIC: "100"}  # fmt: skip
    for name in names:
        kube.add_node(name, labels={"nte-fit-diff": label}, capacity=capacity)
        taint = {"spec": {"taints": [{"key": "nte-fit-diff", "value": label, "effect": "NoSchedule"}]}}
        kube.ok("PATCH", f"/api/v1/nodes/{name}", taint, content_type="application/merge-patch+json")
    kube.stop_scheduler()
    kube.start_scheduler(verbosity=4, resync_seconds=0, reserve=False)
    try:
        yield label, names
    finally:
        kube.stop_scheduler()
        for name in names:
            kube.request("DELETE", f"/api/v1/nodes/{name}")
            kube.delete_nrt(name)


def test_fit_agrees_with_the_real_scheduler_on_random_states_and_shapes(
    kube: ControlPlane, diff_nodes: tuple[str, list[str]]
) -> None:
    label, names = diff_nodes
    namespace = f"fit-diff-{label}"
    kube.ensure_namespace(namespace)
    api = load.connect(kube.kubeconfig("admin"), None)
    rng = random.Random(DIFF_SEED)
    compared = refused = admitted_by_filter = unfiltered = unschedulable = 0
    for round_ in range(DIFF_ROUNDS):
        with_nrt = names if round_ % 2 else names[:-1]  # a node without one is not NUMA-filtered at all
        if not round_ % 2:
            kube.delete_nrt(names[-1])
        for name in with_nrt:
            body = random_nrt(rng, name, strict=bool(round_ % 2))
            current = kube.nrt(name)
            if current is None:
                kube.ok("POST", NRT_PATH, body)
            else:
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                kube.ok("PUT", f"{NRT_PATH}/{name}", body)
        views = load.load(api, selector=f"nte-fit-diff={label}")
        assert [v.name for v in views] == names
        assert sum(v.nrt is not None for v in views) == len(with_nrt)
        offset = log_size(kube)
        manifests = {f"r{round_}-p{i}": random_pod(rng, f"r{round_}-p{i}", label) for i in range(DIFF_PODS)}
        created = {}
        for pod_name, manifest in manifests.items():
            response = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", manifest)
            assert response.status == 201, f"{pod_name}: {response.status} {response.body}"
            created[pod_name] = response.body
        settled = wait_until(
            functools.partial(_settled, kube, namespace, len(created)),
            timeout=60,
            what="every pod scheduled or refused",
        )
        verdicts = filter_verdicts(scheduler_log_since(kube, offset)[0])
        for pod_name, manifest in manifests.items():
            shape = pod_shape(created[pod_name])
            assert pod_shape(manifest) == shape, f"{pod_name}: the manifest reads as the API server's defaulted pod"
            ours = {f.node: f for f in fit.fit(views, shape)}
            key = f"{namespace}/{pod_name}"
            for node in names:
                mine = ours[node]
                filtered = (key, node) in verdicts
                refused_there, reason = verdicts.get((key, node), (False, None))
                context = f"seed {DIFF_SEED} round {round_} {pod_name} on {node}: ours {mine.as_json()}, scheduler refused={refused_there} reason={reason}\n{yaml.safe_dump(manifest)}\n{yaml.safe_dump(kube.nrt(node))}"
                assert not mine.node_shortfalls, context
                if shape.qos == "BestEffort" and not shape.non_native:
                    assert not filtered, f"a BestEffort pod is not filtered: {context}"
                    unfiltered += 1
                    continue
                assert filtered, f"the scheduler ran the filter on every node: {context}"
                expected_refusal = mine.verdict is not None and not mine.verdict.fits
                assert refused_there == expected_refusal, context
                if refused_there:
                    assert mine.verdict is not None
                    assert reason in {s.resource for s in mine.verdict.shortfalls}, context
                    refused += 1
                elif mine.verdict is not None and mine.verdict.applied:
                    admitted_by_filter += 1
                compared += 1
            pod_now = settled[pod_name]
            bound = pod_now["spec"].get("nodeName")
            if bound:
                assert ours[bound].fits is not False, f"{pod_name} bound to {bound}, where fit says no"
            else:
                unschedulable += 1
                assert not [f.node for f in ours.values() if f.fits is not False], f"{pod_name} unschedulable"
        kube.ok("DELETE", f"/api/v1/namespaces/{namespace}/pods?gracePeriodSeconds=0")
        wait_until(lambda: not kube.ok("GET", f"/api/v1/namespaces/{namespace}/pods")["items"], timeout=60,
                   what="the round's pods deleted")  # fmt: skip
    COUNTS.update({"fit vs scheduler: node verdicts compared": compared, "refused by both": refused,
                   "admitted by both (filter applied)": admitted_by_filter, "BestEffort, unfiltered": unfiltered,
                   "pods unschedulable everywhere": unschedulable})  # fmt: skip
    print("FIT DIFFERENTIAL", COUNTS)
    assert min(refused, admitted_by_filter) >= 50, COUNTS  # both answers well exercised
    assert unschedulable >= 5, COUNTS


def _settled(kube: ControlPlane, namespace: str, count: int) -> dict[str, dict[str, Any]] | None:
    pods = kube.ok("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
    done = {}
    for item in pods:
        conditions = {c["type"]: c for c in item["status"].get("conditions") or []}
        scheduled = conditions.get("PodScheduled")
        if item["spec"].get("nodeName") or (scheduled and scheduled["status"] == "False"):
            done[item["metadata"]["name"]] = item
    return done if len(done) == count else None


# --- the commands, as an operator runs them -----------------------------------------------------------


def _zone(
    numa: int, cpu: tuple[str, str], memory: tuple[str, str], gpu: tuple[str, str] | None = None
) -> dict[str, Any]:
    resources = [{"name": "cpu", "capacity": cpu[0], "allocatable": cpu[0], "available": cpu[1]},
                 {"name": "memory", "capacity": memory[0], "allocatable": memory[0], "available": memory[1]}]  # fmt: skip
    if gpu:
        resources.append({"name": GPU, "capacity": gpu[0], "allocatable": gpu[0], "available": gpu[1]})
    return {"name": f"node-{numa}", "type": "Node", "resources": resources}


def _pod(name: str, cpu: str, *, node: str | None = None, scheduler: str = "default-scheduler",
         guaranteed: bool = True) -> dict[str, Any]:  # fmt: skip
    amounts = {"cpu": cpu, "memory": "1Gi"}
    resources = {"requests": amounts, "limits": amounts} if guaranteed else {"requests": amounts}
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "containers": [{"name": "c", "image": "pause", "resources": resources}],
    }
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def published(kube: ControlPlane) -> Iterator[dict[str, str]]:
    """Three nodes as agents publish them: `a` (container scope, room on node-0), `b` (pod scope, 3 + 3 CPUs
    free: a 4-CPU pod is stranded there; one 2-CPU pod running), `c` (no NRT); pods in every state explain
    meets (the kubelet's verdicts written into pod status as the kubelet writes them)."""
    label = f"v{time.monotonic_ns() % 10**8}"
    names = {key: f"view-{label}-{key}" for key in ("a", "b", "c")}
    namespace = f"view-{label}"
    kube.ensure_namespace(namespace)
    for name in names.values():
        kube.add_node(
            name, labels={"nte-view": label}, capacity={"cpu": "64", "memory": "256Gi", "pods": "110", GPU: "4"}
        )
    kube.ok("POST", NRT_PATH, {**nrt([_zone(0, ("8", "6"), ("16Gi", "12Gi"), ("2", "1")),
                                      _zone(1, ("8", "2"), ("16Gi", "14Gi"), ("2", "1"))], **SINGLE),
                               "metadata": {"name": names["a"]}})  # fmt: skip
    held = f"{namespace}/held"
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    from exporter.fingerprint import fingerprint

    kube.ok("POST", NRT_PATH, {**nrt([_zone(0, ("5", "3"), ("8Gi", "6Gi")), _zone(1, ("5", "3"), ("8Gi", "6Gi"))],
                                     topologyManagerPolicy="single-numa-node", topologyManagerScope="pod",
                                     nodeTopologyPodsFingerprint=fingerprint([tuple(held.split("/"))]),
                                     nodeTopologyPodsFingerprintMethod="with-exclusive-resources"),
                               "metadata": {"name": names["b"]}})  # fmt: skip

    def status(name: str, **fields: Any) -> None:
        current = kube.ok("GET", f"{pods_path}/{name}")
        current["status"].update(fields)
        kube.ok("PUT", f"{pods_path}/{name}/status", current)

    kube.ok("POST", pods_path, _pod("held", "2", node=names["b"]))
    status("held", phase="Running")
    kube.ok("POST", pods_path, _pod("rejected", "4", node=names["b"]))
    status("rejected", phase="Failed", reason="TopologyAffinityError",
           message="Pod was rejected: Resources cannot be allocated with Topology locality")  # fmt: skip
    kube.ok("POST", pods_path, _pod("blind", "2", node=names["c"]))
    status("blind", phase="Running")
    kube.ok("POST", pods_path, _pod("burstable", "3", scheduler="topo-aware-scheduler", guaranteed=False))
    kube.ok("POST", pods_path, _pod("pending", "7", scheduler="topo-aware-scheduler"))
    status("pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                   "message": "0/3 nodes are available: 2 cannot align pod."}])  # fmt: skip
    try:
        yield {**names, "label": label, "namespace": namespace}
    finally:
        kube.request("DELETE", f"{pods_path}?gracePeriodSeconds=0")
        for name in names.values():
            kube.request("DELETE", f"/api/v1/nodes/{name}")
            kube.delete_nrt(name)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from exporter.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fit_tells_where_a_shape_fits_and_why_not(
    kube: ControlPlane, published: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    access = ("--kubeconfig", str(kube.kubeconfig("admin")), "-l", f"nte-view={published['label']}")
    code, out, err = run_cli(capsys, "fit", "cpu=4,memory=1Gi", "--format", "json", *access)
    assert code == 0, err
    found = {row["node"]: row for row in json.loads(out)}
    a, b, c = found[published["a"]], found[published["b"]], found[published["c"]]
    assert (a["fits"], a["numa_nodes"], a["reason"]) == (True, [0], None)
    assert b["fits"] is False
    assert b["nrt_filter"] == "reject"
    assert "cannot align pod" in b["reason"]
    assert "node-0: cpu 4 wanted, 3 free" in b["reason"]
    assert c["fits"] is None
    assert c["policy"] is None
    assert "no NodeResourceTopology" in c["notes"][0]

    code, out, _ = run_cli(capsys, "fit", "cpu=7,memory=1Gi", *access)
    assert code == 1, "fits nowhere: exit 1"
    assert "fits on 0 of 3 nodes (1 without an NRT: unknown)" in out
    assert re.search(rf"{published['a']}\s+no\s+-\s+single-numa-node/container\s+cannot align container c0", out), out

    two = ("cpu=4,memory=1Gi", "cpu=2,memory=1Gi,nvidia.com/gpu=1")
    code, out, _ = run_cli(capsys, "fit", *two, "--format", "json", *access)
    placements = {row["node"]: row["placements"] for row in json.loads(out)}
    assert placements[published["a"]] == [["c0", 0], ["c1", 0]], "2 CPUs left on node-0 after c0, and its GPU"


def test_fit_reads_a_workload_manifest(
    kube: ControlPlane, published: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                  "spec": {"template": {"metadata": {"labels": {"app": "d"}},
                                        "spec": {"containers": [{"name": "main", "image": "x", "resources": {
                                            "limits": {"cpu": "6", "memory": "2Gi", GPU: "1"}}}]}}}}  # fmt: skip
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    access = ("--kubeconfig", str(kube.kubeconfig("admin")), "-l", f"nte-view={published['label']}")
    code, out, _ = run_cli(capsys, "fit", "--pod", str(manifest), "--format", "json", *access)
    found = {row["node"]: row for row in json.loads(out)}
    assert code == 0
    assert found[published["a"]]["placements"] == [["main", 0]], "limits only: a Guaranteed pod"
    manifest.write_text("kind: Pod\nspec: {}\n")
    code, _, err = run_cli(capsys, "fit", "--pod", str(manifest), *access)
    assert code == 2
    assert err.count("\n") == 1
    assert "no pod spec with containers" in err
    code, _, err = run_cli(capsys, "fit", "cpu=lots", *access)
    assert code == 2
    assert err.strip() == "numa-topology-exporter fit: shape 'cpu=lots': 'lots' is not a quantity"


def test_the_summary_counts_aligned_pods_fragmentation_stranded_and_what_to_free(
    kube: ControlPlane, published: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    access = ("--kubeconfig", str(kube.kubeconfig("admin")), "-l", f"nte-view={published['label']}")
    code, out, _ = run_cli(capsys, "fit", "--summary", "cpu=2,memory=1Gi", "--format", "json", *access)
    assert code == 0
    (plan,) = json.loads(out)
    # a: 6/2 + 2/2 = 4 aligned; b (pod scope): 3/2 + 3/2 = 2; together 6. NUMA aside: a 8/2 = 4, b 6/2 = 3.
    assert plan["per_node"] == {published["a"]: 4, published["b"]: 2}
    assert (plan["more_pods_aligned"], plan["more_pods_if_numa_did_not_matter"], plan["lost_to_fragmentation"]) == (
        6,
        7,
        1,
    )
    assert (plan["available"]["cpu"], plan["stranded"]["cpu"]) == (14, 2), "one CPU left on each NUMA node of b"
    (freeing,) = plan["freeing_one_pod"]
    assert freeing == {"node": published["b"], "pod": f"{published['namespace']}/held", "more_pods_at_least": 1,
                       "more_pods_at_most": 1, "numa_node_known": False}  # fmt: skip
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  gpu-small: {cpu: 1, memory: 1Gi, nvidia.com/gpu: 1}\n")
    code, out, _ = run_cli(capsys, "fit", "--summary", "--profiles", str(profiles), "--format", "json", *access)
    # a: one GPU on each NUMA node; b lists no GPU in its zones: host-level for the filter, so its 4 GPUs
    # (node allocatable) are taken without alignment, as the scheduler takes them.
    (gpu,) = json.loads(out)
    assert code == 0
    assert gpu["per_node"] == {published["a"]: 2, published["b"]: 4}, gpu
    assert gpu["available"]["nvidia.com/gpu"] == 2
    assert gpu["stranded"]["nvidia.com/gpu"] == 0
    # --profiles alone is the fleet plan too; a resource no node has is said, with the name it likely meant.
    profiles.write_text("profiles:\n  typo: {cpus: 1, memory: 1Gi, nvidia.com/gpus: 1}\n")
    code, out, err = run_cli(capsys, "fit", "--profiles", str(profiles), "--format", "json", *access)
    assert code == 0, err
    (typo,) = json.loads(out)
    assert typo["more_pods_aligned"] == 0
    assert "typo: no node has cpus (did you mean cpu?)" in err, err
    assert "typo: no node has nvidia.com/gpus (did you mean nvidia.com/gpu?)" in err, err


def test_explain_names_the_causes(
    kube: ControlPlane, published: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    access = ("--kubeconfig", str(kube.kubeconfig("admin")))
    namespace = published["namespace"]
    code, out, _ = run_cli(capsys, "explain", f"{namespace}/rejected", "--format", "json", *access)
    assert code == 0
    rejected = json.loads(out)
    assert rejected["kubelet_rejection"].startswith("TopologyAffinityError: Pod was rejected")
    assert rejected["node"] == published["b"]
    assert rejected["nrt"].startswith("current"), rejected["nrt"]
    causes = rejected["likely_causes"]
    assert any(
        c.startswith(
            f"stranded: {published['b']} has enough in all but not on one NUMA node (cpu 6 free in all, at most 3"
        )
        for c in causes
    ), causes
    assert any(c.startswith("scheduler not NUMA-aware: default-scheduler") for c in causes), causes
    assert not any(c.startswith("larger than any NUMA node") for c in causes)
    assert published["a"] in rejected["fits_now_on"]

    code, out, _ = run_cli(capsys, "explain", "blind", "-n", namespace, *access)
    assert f"no NodeResourceTopology for {published['c']}" in out
    assert f"NodeResourceTopology of {published['c']}: missing" in out
    code, out, _ = run_cli(capsys, "explain", f"{namespace}/burstable", "--format", "json", *access)
    burstable = json.loads(out)
    assert burstable["node"] is None
    assert burstable["likely_causes"][0].startswith("not Guaranteed (QoS Burstable)")
    code, out, _ = run_cli(capsys, "explain", f"{namespace}/pending", "--format", "json", *access)
    pending = json.loads(out)
    assert pending["scheduling"] == "0/3 nodes are available: 2 cannot align pod."
    assert pending["numa_aware_scheduler"]
    assert not any("NUMA-aware" in c for c in pending["likely_causes"])
    code, _, err = run_cli(capsys, "explain", f"{namespace}/nope", *access)
    assert code == 3, "nothing to explain: cannot tell"
    assert err == f"numa-topology-exporter: pod {namespace}/nope not found\n"


def test_kubeconfig_and_context_as_kubectl_finds_them(
    kube: ControlPlane, published: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    good = yaml.safe_load(kube.kubeconfig("admin").read_text())
    closed = {"name": "gone", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}
    good["clusters"].append(closed)
    good["contexts"].append({"name": "gone", "context": {"cluster": "gone", "user": "u"}})
    good["current-context"] = "gone"
    config = tmp_path / "config"
    config.write_text(yaml.safe_dump(good))
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent'}:{config}")
    selector = ("-l", f"nte-view={published['label']}")
    code, _, err = run_cli(capsys, "fit", "cpu=1,memory=1Gi", *selector)
    assert code == 3, "cannot tell, not fits nowhere"
    assert err.startswith("numa-topology-exporter: cannot list nodes: cannot reach the API server"), err
    assert err.count("\n") == 1
    code, out, err = run_cli(capsys, "fit", "cpu=1,memory=1Gi", "--context", "c", *selector)
    assert code == 0, err
    assert "fits on 2 of 3 nodes" in out
    code, _, err = run_cli(capsys, "fit", "cpu=1,memory=1Gi", "--context", "nonesuch", *selector)
    assert code == 3
    assert "nonesuch" in err
    assert err.count("\n") == 1


def test_the_viewer_role_is_exactly_what_fit_and_explain_read(
    kube: ControlPlane, published: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.chart import by_kind, render

    (viewer,) = [
        r
        for r in by_kind(render({"rbac": {"viewer": {"create": True}}}), "ClusterRole")
        if r["metadata"]["name"].endswith("-viewer")
    ]
    roles = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
    bindings = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "nte-viewer-test"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": viewer["metadata"]["name"]},
               "subjects": [{"kind": "User", "name": LIMITED_USER}]}  # fmt: skip
    limited = ("--kubeconfig", str(kube.kubeconfig(LIMITED_USER)))
    fit_args = ("fit", "cpu=1,memory=1Gi", "-l", f"nte-view={published['label']}", *limited)
    explain_args = ("explain", f"{published['namespace']}/rejected", *limited)

    def both_work() -> bool:
        return run_cli(capsys, *fit_args)[0] == 0 and run_cli(capsys, *explain_args)[0] == 0

    try:
        code, _, err = run_cli(capsys, *fit_args)
        assert (code, err.count("\n")) == (3, 1), "forbidden: cannot tell"
        assert "forbidden" in err, err
        kube.put(bindings, binding)
        for index, rule in enumerate(viewer["rules"]):  # each rule taken away breaks a command
            fewer = {**viewer, "rules": [r for i, r in enumerate(viewer["rules"]) if i != index]}
            kube.put(roles, fewer)
            wait_until(lambda: not both_work(), timeout=30, what=f"a command to fail without {rule}")
        kube.put(roles, viewer)
        wait_until(both_work, timeout=30, what="fit and explain to work with the viewer role")
    finally:
        kube.request("DELETE", f"{bindings}/nte-viewer-test")
        kube.request("DELETE", f"{roles}/{viewer['metadata']['name']}")


def test_python_m_exporter_fit_runs_as_a_command(kube: ControlPlane, published: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "fit", "cpu=4,memory=1Gi", "-l", f"nte-view={published['label']}"],
        cwd=ROOT, env={**os.environ, "KUBECONFIG": str(kube.kubeconfig("admin"))}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "fits on 1 of 3 nodes (1 without an NRT: unknown)" in result.stdout


def test_api_failures_are_one_line_errors(
    kube: ControlPlane, published: dict[str, str], proxy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = str(kube.kubeconfig("admin", server=proxy.url))
    proxy.fail(503, when=lambda method, path: "noderesourcetopologies" in path)
    code, out, err = run_cli(capsys, "fit", "cpu=1,memory=1Gi", "--kubeconfig", kubeconfig)
    assert (code, out, err.count("\n")) == (3, "", 1), err
    assert err == "numa-topology-exporter: cannot list noderesourcetopologies: injected 503\n"
    proxy.heal()
    proxy.fail(404, when=lambda method, path: "noderesourcetopologies" in path)
    code, _, err = run_cli(capsys, "explain", f"{published['namespace']}/held", "--kubeconfig", kubeconfig)
    assert code == 3
    assert "install the NodeResourceTopology CRD" in err, err
    proxy.heal()
    code, out, _ = run_cli(capsys, "explain", f"{published['namespace']}/held", "--kubeconfig", kubeconfig)
    assert code == 0
    assert "current (its fingerprint names the 1 pods running there)" in out, out


def test_a_zero_limit_is_no_limit_for_the_qos_class() -> None:
    zero = {"spec": {"containers": [{"name": "c", "resources": {
        "requests": {"cpu": "0", "memory": "1Gi"}, "limits": {"cpu": "0", "memory": "1Gi"}}}]}}  # fmt: skip
    assert pod_shape(zero).qos == "Burstable", "ComputePodQOS counts a limit only above zero"
    assert pod_shape(pod({"cpu": "1", "memory": "1Gi"})).qos == "Guaranteed"


def test_the_chart_notes_name_the_viewer_role_when_it_is_made() -> None:
    from tests.chart import notes

    made = notes({"rbac": {"viewer": {"create": True}}})
    assert "--clusterrole=nte-numa-topology-exporter-viewer" in made
    assert "numa-topology-exporter explain NAMESPACE/POD" in made
    assert "rbac.viewer.create=true makes a ClusterRole" in notes({})


def test_staleness_reads_the_fingerprint_as_either_informer_mode_counts() -> None:
    """An agent told Dedicated names the finished and rejected pods too: current either way, and stale only
    when neither view matches."""
    from exporter.fingerprint import fingerprint

    def pod(name: str, phase: str) -> dict[str, Any]:
        resources = {"cpu": "2", "memory": "1Gi"}
        return {"metadata": {"namespace": "t", "name": name, "uid": name}, "status": {"phase": phase},
                "spec": {"containers": [{"name": "c", "resources": {"requests": resources, "limits": resources}}]}}  # fmt: skip

    def view(published: str) -> load.NodeView:
        attributes = [{"name": "nodeTopologyPodsFingerprint", "value": published},
                      {"name": "nodeTopologyPodsFingerprintMethod", "value": "with-exclusive-resources"}]  # fmt: skip
        return load.NodeView(name="n", node={}, nrt={"attributes": attributes, "zones": []},
                                pods=(pod("run", "Running"),), finished=(pod("gone", "Failed"),))  # fmt: skip

    shared = explain.staleness(view(fingerprint([("t", "run")])))
    dedicated = explain.staleness(view(fingerprint([("t", "run"), ("t", "gone")])))
    assert shared == "current (its fingerprint names the 1 pods running there)"
    assert dedicated.startswith("current (its fingerprint names the 1 pods running there and the 1 finished")
    assert explain.staleness(view(fingerprint([]))).startswith("stale: its fingerprint does not name the 1 pods")

"""The cluster view (`fit`, `fit --summary`, `explain`): the NodeResourceTopologyMatch filter as ported in
exporter/nrtmatch.py, held to the real scheduler (kube-scheduler-nrt, scheduler-plugins 903da7df) on the real
API server over random NRT states and pod shapes, and the commands run as an operator runs them.

The differential test runs the scheduler with its cache off (`cacheResyncPeriodSeconds: 0`: the plugin then
reads each NRT object from the API server at every Filter, so what it filters on is exactly what `fit`
read), and reads its log at --v=4: per pod and node, `"begin"` when the filter ran and `"cannot align ..."`
when it refused the node, with the resource it stopped at.
"""

from __future__ import annotations

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

from exporter import cluster
from exporter.errors import ApiForbidden, ConfigError
from exporter.nrtmatch import (
    TopologyManager,
    filter_node,
    node_resources,
    numa_zones,
    pod_shape,
    topology_manager,
)
from tests.controlplane import LIMITED_USER, NRT_PATH, ControlPlane, wait_until
from tests.workload import log_size, scheduler_log_since

ROOT = Path(__file__).resolve().parent.parent
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
    assert verdict.fits and verdict.placements[2] == ("c2", 0)
    too_many = pod({"cpu": "4", "memory": "1Gi"}, {"cpu": "4", "memory": "1Gi"}, {"cpu": "3", "memory": "1Gi"})
    verdict = filter_node(pod_shape(too_many), object_, ALLOCATABLE)
    assert not verdict.fits and verdict.blocked_by == "container c2"
    assert {(s.numa_node, s.resource, s.available) for s in verdict.shortfalls} == {
        (0, "cpu", Fraction(2)), (1, "cpu", Fraction(0))
    }  # fmt: skip


def test_pod_scope_takes_the_pod_as_one_request_and_init_containers_by_their_largest() -> None:
    object_ = nrt([zone(0, cpu="6", memory="8Gi"), zone(1, cpu="4", memory="8Gi")],
                  topologyManagerPolicy="single-numa-node", topologyManagerScope="pod")  # fmt: skip
    two = pod({"cpu": "4", "memory": "1Gi"}, {"cpu": "4", "memory": "1Gi"})
    verdict = filter_node(pod_shape(two), object_, ALLOCATABLE)
    assert not verdict.fits and verdict.blocked_by == "pod", "8 CPUs as one pod: no NUMA node has them"
    init = pod({"cpu": "2", "memory": "1Gi"}, init=({"cpu": "5", "memory": "1Gi"},))
    assert filter_node(pod_shape(init), object_, ALLOCATABLE).numa_nodes == (0,), "max(2, 5) = 5 fits node-0 only"
    assert pod_shape(init).effective_request()["cpu"] == 5


def test_not_guaranteed_pods_pass_on_cpu_and_memory_but_not_on_devices() -> None:
    object_ = nrt([zone(0, {GPU: "0"}, cpu="0", memory="0"), zone(1, {GPU: "1"}, cpu="0", memory="0")],
                  **SINGLE)  # fmt: skip
    burstable = pod({"cpu": "4", "memory": "1Gi"}, guaranteed=False)
    assert pod_shape(burstable).qos == "Burstable"
    verdict = filter_node(pod_shape(burstable), object_, ALLOCATABLE)
    assert verdict.fits and verdict.applied, "cpu and memory of a Burstable pod fit any NUMA node listing them"
    with_gpu = pod({"cpu": "4", "memory": "1Gi", GPU: "1"}, guaranteed=False)
    assert filter_node(pod_shape(with_gpu), object_, ALLOCATABLE).numa_nodes == (1,)
    two_gpus = pod({"cpu": "4", GPU: "2"}, guaranteed=False)
    assert not filter_node(pod_shape(two_gpus), object_, ALLOCATABLE).fits
    best_effort = pod({}, guaranteed=False)
    assert not filter_node(pod_shape(best_effort), object_, ALLOCATABLE).applied
    best_effort_gpu = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [
        {"name": "c", "resources": {"limits": {GPU: "2"}}}]}}  # fmt: skip
    shape = pod_shape(best_effort_gpu)
    assert shape.qos == "BestEffort" and shape.non_native, "requests are defaulted from limits"
    assert filter_node(shape, object_, ALLOCATABLE).applied and not filter_node(shape, object_, ALLOCATABLE).fits


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
    assert restricted.fits and not restricted.applied and "restricted" in (restricted.note or "")
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
    api = cluster.connect(kube.kubeconfig("admin"), None)
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
        views = cluster.load(api, selector=f"nte-fit-diff={label}")
        assert [v.name for v in views] == names and sum(v.nrt is not None for v in views) == len(with_nrt)
        offset = log_size(kube)
        manifests = {f"r{round_}-p{i}": random_pod(rng, f"r{round_}-p{i}", label) for i in range(DIFF_PODS)}
        created = {}
        for pod_name, manifest in manifests.items():
            response = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", manifest)
            assert response.status == 201, f"{pod_name}: {response.status} {response.body}"
            created[pod_name] = response.body
        settled = wait_until(lambda: _settled(kube, namespace, len(created)), timeout=60, what="every pod scheduled or refused")
        verdicts = filter_verdicts(scheduler_log_since(kube, offset)[0])
        for pod_name, manifest in manifests.items():
            shape = pod_shape(created[pod_name])
            assert pod_shape(manifest) == shape, f"{pod_name}: the manifest reads as the API server's defaulted pod"
            ours = {f.node: f for f in cluster.fit(views, shape)}
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
    assert refused >= 50 and admitted_by_filter >= 50 and unschedulable >= 5, COUNTS  # both answers well exercised


def _settled(kube: ControlPlane, namespace: str, count: int) -> dict[str, dict[str, Any]] | None:
    pods = kube.ok("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
    done = {}
    for item in pods:
        conditions = {c["type"]: c for c in item["status"].get("conditions") or []}
        scheduled = conditions.get("PodScheduled")
        if item["spec"].get("nodeName") or (scheduled and scheduled["status"] == "False"):
            done[item["metadata"]["name"]] = item
    return done if len(done) == count else None

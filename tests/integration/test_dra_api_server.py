"""DRA against the real control plane (kube-apiserver v1.36.2 serving resource.k8s.io/v1, and the real
kube-scheduler, whose default profile allocates ResourceClaims).

A DeviceClass, one ResourceSlice of four simulated GPUs on the test's node (two with `numaNode`, one with
only a PCI address, one with nothing), two claims the real scheduler allocates (each selects one GPU by a
CEL expression) and two pods using them, scheduled to the node by the real scheduler. The test then plays
the kubelet: the CPU manager pins `train` to NUMA 0 and `infer` to NUMA 1, and the DRA manager writes the
`dra_manager_state` it would after preparing the claims. The agent runs as the chart runs it, with the
chart's RBAC enforced by the real authorizer, behind a recording proxy.

On the fixture machine, NUMA 0 has CPUs 0-7,16-23 and GPUs 0000:1a/1b; NUMA 1 has 8-15,24-31, 0000:8a/8b.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.controlplane import AGENT_USER, ControlPlane, wait_until
from tests.daemon import Daemon
from tests.faultproxy import FaultProxy
from tests.hosttree import HostTree
from tests.kubelet_files import cpu_state, dra_entry, dra_state, fixture_config, install, replace_atomically

DRIVER = "gpu.example.com"
RESOURCE = f"dra:{DRIVER}"
NAMESPACE = "dra"
DRA = "/apis/resource.k8s.io/v1"
GPUS = {
    "gpu-0": {"resource.kubernetes.io/numaNode": {"int": 0}},
    "gpu-1": {"resource.kubernetes.io/pciBusID": {"string": "0000:8a:00.0"}},  # NUMA 1, by sysfs
    "gpu-2": {"resource.kubernetes.io/numaNode": {"int": 1}},
    "gpu-3": {},  # a driver that says nothing about where its device is
}


def _slice(node: str) -> dict[str, Any]:
    devices = [
        {"name": name, "attributes": {**attributes, "index": {"int": int(name[-1])}}}
        for name, attributes in GPUS.items()
    ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-gpus"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def _claim(name: str, index: int) -> dict[str, Any]:
    selector = {"cel": {"expression": f'device.attributes["{DRIVER}"].index == {index}'}}
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER,
                                                                      "selectors": [selector]}}]}},
    }  # fmt: skip


def _pod(name: str, container: str, claim: str, node: str) -> dict[str, Any]:
    amounts = {"cpu": "2", "memory": "64Mi"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"dra-test": node},
            "resourceClaims": [{"name": "gpu", "resourceClaimName": claim}],
            "containers": [
                {
                    "name": container,
                    "image": "pause",
                    "resources": {"requests": amounts, "limits": amounts, "claims": [{"name": "gpu"}]},
                }
            ],
        },
    }


@pytest.fixture
def dra_node(request: pytest.FixtureRequest, kube: ControlPlane) -> Iterator[str]:
    name = (
        "dra-"
        + re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:30]
        + f"-{time.monotonic_ns() % 10**6}"
    )
    kube.add_node(name, labels={"dra-test": name}, capacity={"cpu": "32", "memory": "128Gi", "pods": "110"})
    kube.ensure_namespace(NAMESPACE)
    device_class = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": DRIVER},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    kube.put(f"{DRA}/deviceclasses", device_class)
    kube.ok("POST", f"{DRA}/resourceslices", _slice(name))
    yield name
    kube.stop_scheduler()  # started here before other tests' NRT objects exist (see stop_scheduler)
    # The session's server is shared: a Ready node with capacity left behind would take other tests' pods.
    kube.request("DELETE", f"/api/v1/nodes/{name}")
    for container in ("train", "infer"):
        kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}-{container}?gracePeriodSeconds=0")
        kube.request("DELETE", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims/{name}-{container}")
    kube.request("DELETE", f"{DRA}/resourceslices/{name}-gpus")


def _scheduled(kube: ControlPlane, node: str) -> dict[str, dict[str, Any]]:
    """Two pods and their claims, allocated and bound by the real scheduler: container -> (pod, claim)."""
    kube.start_scheduler(verbosity=2)
    wanted = {"train": 2, "infer": 1}  # train gets gpu-2 (NUMA 1), infer gets gpu-1 (NUMA 1 by sysfs)
    for container, index in wanted.items():
        kube.ok("POST", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims", _claim(f"{node}-{container}", index))
        kube.ok("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", _pod(f"{node}-{container}", container,
                                                                     f"{node}-{container}", node))  # fmt: skip

    def bound() -> dict[str, dict[str, Any]] | None:
        found = {}
        for container in wanted:
            pod = kube.ok("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{node}-{container}")
            claim = kube.ok("GET", f"{DRA}/namespaces/{NAMESPACE}/resourceclaims/{node}-{container}")
            if pod["spec"].get("nodeName") != node or not (claim.get("status") or {}).get("allocation"):
                return None
            found[container] = {"pod": pod, "claim": claim}
        return found

    return wait_until(bound, timeout=60, what="the scheduler to allocate both claims and bind both pods")


def _play_the_kubelet(machine: HostTree, scheduled: dict[str, dict[str, Any]]) -> None:
    """The CPU manager pins train to NUMA 0 and infer to NUMA 1; the DRA manager records the prepared claims."""
    pinned = {"train": [1, 17], "infer": [9, 25]}
    entries = {scheduled[c]["pod"]["metadata"]["uid"]: {c: cpus} for c, cpus in pinned.items()}
    taken = {cpu for cpus in pinned.values() for cpu in cpus}
    install(machine, config=fixture_config(memory="None"))
    replace_atomically(
        machine.paths.cpu_manager_state, cpu_state(default=[c for c in range(32) if c not in taken], entries=entries)
    )
    prepared = []
    for objects in scheduled.values():
        claim = objects["claim"]
        results = claim["status"]["allocation"]["devices"]["results"]
        prepared.append(
            dra_entry(
                claim_uid=claim["metadata"]["uid"],
                claim=claim["metadata"]["name"],
                namespace=NAMESPACE,
                pods=[objects["pod"]["metadata"]["uid"]],
                devices={DRIVER: [(r["pool"], r["device"], [r["request"]]) for r in results]},
            )
        )
    replace_atomically(machine.paths.dra_manager_state, dra_state(prepared))


def _agent(machine: HostTree, kube: ControlPlane, proxy: FaultProxy, node: str) -> Daemon:
    kubeconfig = kube.kubeconfig(AGENT_USER, server=proxy.url)
    return Daemon(machine.paths, extra=["--kubeconfig", str(kubeconfig), "--node-name", node, "--resync-interval",
                                        "1", "--debounce", "0", "--no-nvml", "--no-podresources"])  # fmt: skip


def _series(text: str, name: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
    }


def _per_numa(text: str, name: str) -> dict[int, float]:
    """The DRA resource's series of one family, by NUMA node."""
    found = {}
    for series, value in _series(text, name).items():
        match = re.search(r'numa_node="(-?\d+)"', series)
        if match and f'resource="{RESOURCE}"' in series:
            found[int(match.group(1))] = value
    return found


def _device_info(text: str) -> dict[str, str]:
    """DRA device name -> its numa_topology_device_info series."""
    found = {}
    for series in _series(text, "numa_topology_device_info{"):
        match = re.search(r'device="([\w-]+)"', series)
        if match and f'resource="{RESOURCE}"' in series:
            found[match.group(1)] = series
    return found


def _misaligned(daemon: Daemon, node: str) -> dict[str, float] | None:
    found = {}
    for series, value in _series(daemon.metrics(), "numa_topology_container_dra_misaligned{").items():
        match = re.search(r'container="(\w+)"', series)
        if match and f'pod="{node}-' in series:
            found[match.group(1)] = value
    return found if len(found) == 2 else None


def test_a_dra_gpu_away_from_the_pinned_cpus_is_reported_misaligned(
    machine: HostTree, kube: ControlPlane, proxy: FaultProxy, dra_node: str
) -> None:
    scheduled = _scheduled(kube, dra_node)
    assert {c: [r["device"] for r in o["claim"]["status"]["allocation"]["devices"]["results"]]
            for c, o in scheduled.items()} == {"train": ["gpu-2"], "infer": ["gpu-1"]}  # fmt: skip
    _play_the_kubelet(machine, scheduled)
    with _agent(machine, kube, proxy, dra_node) as daemon:
        assert wait_until(lambda: _misaligned(daemon, dra_node), timeout=20, what="the DRA audit") == {
            "train": 1.0,
            "infer": 0.0,
        }
        text = daemon.metrics()
        assert _per_numa(text, "numa_topology_resource_capacity{") == {-1: 1.0, 0: 1.0, 1: 2.0}
        assert _per_numa(text, "numa_topology_resource_available{") == {-1: 1.0, 0: 1.0, 1: 0.0}
        info = _device_info(text)
        assert 'numa_node="1"' in info["gpu-1"], "no numaNode attribute: its PCI address places it"
        assert 'pci_address="0000:8a:00.0"' in info["gpu-1"]
        assert 'numa_node="-1"' in info["gpu-3"], "no attribute, no PCI address: unknown, never guessed"
        assert all(f'pool="{dra_node}"' in series for series in info.values())
        nrt = wait_until(lambda: kube.nrt(dra_node), timeout=20, what="the NRT object")
        names = {r["name"] for zone in nrt["zones"] for r in zone["resources"]}
        assert "cpu" in names
        assert not any(name.startswith("dra:") for name in names), "the scheduler reads the slices itself"

        # The driver restarts and withdraws its slice: the held devices stay where they were.
        kube.ok("DELETE", f"{DRA}/resourceslices/{dra_node}-gpus")
        unpublished = f'numa_topology_dra_device_unpublished{{device="gpu-2",pool="{dra_node}",resource="{RESOURCE}"}}'
        wait_until(lambda: daemon.sample(unpublished) == 1, timeout=20, what="the withdrawn device to be reported")
        assert _misaligned(daemon, dra_node) == {"train": 1.0, "infer": 0.0}
        assert not [k for k in _series(daemon.metrics(), "numa_topology_resource_capacity{") if RESOURCE in k]

    dra_requests = set()
    for seen in proxy.requests():
        if "/resource.k8s.io/" in seen.path:
            resource = seen.path.strip("/").split("/")[5 if "/namespaces/" in seen.path else 3]
            dra_requests.add((seen.method, seen.watch, resource))
    assert dra_requests == {("GET", False, "resourceslices"), ("GET", True, "resourceslices"),
                            ("GET", False, "resourceclaims")}, dra_requests  # fmt: skip
    slice_queries = [s.query for s in proxy.requests() if s.path.endswith("/resourceslices")]
    assert slice_queries
    assert all("spec.nodeName" in query for query in slice_queries), slice_queries

"""The pod fingerprint's pod set is the consumer's: scheduler-plugins' `AreExclusiveForPod` rule."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.fingerprint import METHOD_ALL, METHOD_WITH_EXCLUSIVE_RESOURCES
from exporter.kubelet.podspec import container_ids, exclusivity, is_native, pinned_containers, qos_class
from exporter.model import PinnedContainer


def pod(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (), qos: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"spec": {"containers": list(containers), "initContainers": list(init)}}
    if qos:
        body["status"] = {"qosClass": qos}
    return body


def container(requests: dict[str, str], limits: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "c", "resources": {"requests": requests, "limits": requests if limits is None else limits}, **extra}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (pod(container({"cpu": "500m", "memory": "1Gi"})), (True, frozenset())),  # Guaranteed: memory > 0
        (pod(container({"cpu": "2", "memory": "1Gi"})), (True, frozenset())),
        (pod(container({"cpu": "2"}, {"cpu": "4"})), (False, frozenset())),  # Burstable
        (
            pod(container({"cpu": "1", "memory": "1Gi", "example.com/nic": "1"}, {"cpu": "2", "memory": "1Gi"})),
            (False, frozenset({"example.com/nic"})),
        ),
        (pod(container({}, {})), (False, frozenset())),  # BestEffort
    ],
)
def test_exclusivity(spec: dict[str, Any], expected: tuple[bool, frozenset[str]]) -> None:
    assert exclusivity(spec) == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # The static CPU manager pins a Guaranteed pod's integral CPUs only.
        (pod(container({"cpu": "2", "memory": "1Gi"})), (PinnedContainer(name="c", exclusive_cpu=True),)),
        (pod(container({"cpu": "1500m", "memory": "1Gi"})), (PinnedContainer(name="c"),)),
        (pod(container({"cpu": "2"}, {"cpu": "4"})), (PinnedContainer(name="c"),)),  # Burstable
        # Extended resources with a count above zero, whatever the QoS; init containers first, as admitted.
        (
            pod(
                container({"cpu": "1", "example.com/nic": "1", "example.com/none": "0"}, {"cpu": "2"}),
                init=({**container({"example.com/fpga": "1"}), "name": "init"},),
            ),
            (
                PinnedContainer(name="init", extended=frozenset({"example.com/fpga"})),
                PinnedContainer(name="c", extended=frozenset({"example.com/nic"})),
            ),
        ),
    ],
)
def test_pinned_containers(spec: dict[str, Any], expected: tuple[PinnedContainer, ...]) -> None:
    assert pinned_containers(spec) == expected


def test_regular_init_containers_do_not_count_and_sidecars_do() -> None:
    app = container({"cpu": "100m", "memory": "0"}, {"cpu": "100m", "memory": "0"})
    init = container({"cpu": "100m", "memory": "64Mi", "nvidia.com/gpu": "1"})
    assert exclusivity(pod(app, init=(init,), qos="Guaranteed")) == (False, frozenset())
    sidecar = {**init, "restartPolicy": "Always"}
    assert exclusivity(pod(app, init=(sidecar,), qos="Guaranteed")) == (True, frozenset({"nvidia.com/gpu"}))


def test_the_api_servers_qos_class_wins() -> None:
    assert qos_class(pod(container({"cpu": "1", "memory": "1Gi"}), qos="Burstable")) == "Burstable"
    assert exclusivity(pod(container({"cpu": "1", "memory": "1Gi"}), qos="Burstable")) == (False, frozenset())


def test_qos_class_computed_as_the_kubelet_does() -> None:
    assert qos_class(pod(container({"cpu": "1", "memory": "1Gi"}))) == "Guaranteed"
    assert qos_class(pod(container({"cpu": "1", "memory": "1Gi"}, {"cpu": "1", "memory": "2Gi"}))) == "Burstable"
    assert qos_class(pod(container({"cpu": "1"}, {"cpu": "1"}))) == "Burstable", "no memory limit"
    assert qos_class(pod(container({}, {}))) == "BestEffort"


def test_native_resources() -> None:
    assert all(is_native(name) for name in ("cpu", "hugepages-1Gi", "kubernetes.io/batteries"))
    assert not is_native("nvidia.com/gpu")


def test_methods_are_the_consumers_names() -> None:
    assert (METHOD_ALL, METHOD_WITH_EXCLUSIVE_RESOURCES) == ("all", "with-exclusive-resources")


def test_container_ids_from_the_statuses() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                {"name": "app", "containerID": "containerd://" + "a" * 64},
                {"name": "waiting"},  # not started yet: no ID
            ],
            "initContainerStatuses": [{"name": "sidecar", "containerID": "cri-o://" + "b" * 64}],
        }
    }
    assert container_ids(pod) == (("a" * 64, "app"), ("b" * 64, "sidecar"))
    assert container_ids({}) == ()

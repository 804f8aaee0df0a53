"""`snapshot --format nrt` for every fixture host: accepted by the real API server under the chart's CRD
(a strict dry-run create as the agent's user: schema, unknown fields, RBAC), equal to its golden file."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from exporter.cli import main
from exporter.fingerprint import METHOD_ALL, fingerprint
from exporter.snapshot import SnapshotBuilder
from exporter.views.nrt import build_nrt, content
from tests.conftest import HWLOC_NAMES
from tests.controlplane import AGENT_USER, NRT_PATH, ControlPlane
from tests.scenarios import KUBELET_SCENARIOS, nvml_config_for, scenario_paths

GOLDEN = Path(__file__).parents[1] / "golden" / "nrt"
SCENARIOS = [*HWLOC_NAMES, *KUBELET_SCENARIOS]


@pytest.mark.parametrize("name", SCENARIOS)
def test_nrt_matches_golden_and_the_crd(
    name: str, *, tmp_path: Path, hwloc_trees: dict[str, Path], nvml_config: Path,
    update_golden: bool, capsys: pytest.CaptureFixture[str], kube: ControlPlane,
) -> None:  # fmt: skip
    config = nvml_config_for(name, nvml_config)
    paths = scenario_paths(name, tmp_path / name, hwloc_trees)
    argv = ["snapshot", "--format", "nrt", "--node-name", "worker-1", "--path.sysfs", str(paths.sysfs),
            "--path.kubelet", str(paths.kubelet_dir), "--path.pod-logs", str(paths.pod_logs)]  # fmt: skip
    assert main(argv if config else [*argv, "--no-nvml"]) == 0
    text = capsys.readouterr().out
    obj = yaml.safe_load(text)
    obj["metadata"]["name"] = re.sub(r"[^a-z0-9-]+", "-", f"golden-{name}".lower())
    answer = kube.request("POST", f"{NRT_PATH}?dryRun=All&fieldValidation=Strict", obj, user=AGENT_USER)
    assert answer.status == 201, answer.body.get("message")
    golden = GOLDEN / f"{name}.yaml"
    if update_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def test_nrt_content(machine, nvml_config: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.hosttree import fixture_nvml_config
    from tests.kubelet_files import POD_A, POD_B, fixture_config, install, pod_logs

    fixture_nvml_config(nvml_config)
    install(machine, cpu="cpu_manager_state.static-2pods.json", memory="memory_manager_state.static-hugepages.json",
            devices="kubelet_internal_checkpoint.gpu-sriov.json", config=fixture_config())  # fmt: skip
    pod_logs(machine, [("team-a", "trainer-0", POD_A), ("team-b", "db-0", POD_B), ("kube-system", "dns", "u-3")])
    snapshot = SnapshotBuilder(machine.paths, use_udev=False).build()
    obj = build_nrt(snapshot, node_name="worker-1", node_uid="uid-1", method="with-exclusive-resources")
    assert [zone["name"] for zone in obj["zones"]] == ["node-0", "node-1"]
    zone0 = obj["zones"][0]
    assert zone0["type"] == "Node"
    assert zone0["costs"] == [{"name": "node-0", "value": 10}, {"name": "node-1", "value": 21}]
    resources = {r["name"]: (r["capacity"], r["allocatable"], r["available"]) for r in zone0["resources"]}
    assert resources["cpu"] == (16, 14, 10)
    assert resources["nvidia.com/gpu"] == (2, 2, 1)
    assert resources["memory"] == (68719476736, 62277025792, 57982058496)
    attributes = {a["name"]: a["value"] for a in obj["attributes"]}
    exclusive = fingerprint([("team-a", "trainer-0"), ("team-b", "db-0")])
    assert attributes == {
        "topologyManagerPolicy": "single-numa-node",
        "topologyManagerScope": "container",
        "topologyManagerMaxNUMANodes": "8",
        "nodeTopologyPodsFingerprint": exclusive,
        "nodeTopologyPodsFingerprintMethod": "with-exclusive-resources",
    }
    assert obj["metadata"]["annotations"] == {"topology.node.k8s.io/fingerprint": exclusive}
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "worker-1", "uid": "uid-1", "blockOwnerDeletion": False}
    ]
    everything = build_nrt(snapshot, node_name="worker-1", node_uid=None, method=METHOD_ALL)
    assert everything["metadata"]["annotations"]["topology.node.k8s.io/fingerprint"] == fingerprint(
        [("team-a", "trainer-0"), ("team-b", "db-0"), ("kube-system", "dns")]
    )
    assert content(everything) != content(obj)
    bare = build_nrt(snapshot, node_name="worker-1", node_uid=None, method="none")  # exporters without one
    assert "annotations" not in bare["metadata"]
    assert not {a["name"] for a in bare["attributes"]} & {
        "nodeTopologyPodsFingerprint",
        "nodeTopologyPodsFingerprintMethod",
    }
    assert bare["zones"] == everything["zones"]


def test_unknown_availability_and_unknown_numa_are_left_out(machine) -> None:  # type: ignore[no-untyped-def]
    from tests.kubelet_files import fixture_config, install

    install(machine, devices="kubelet_internal_checkpoint.gpu-sriov.json", config=fixture_config(memory="None"))
    snapshot = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False).build()
    obj = build_nrt(snapshot, node_name="n", node_uid=None, method=METHOD_ALL)
    names = {r["name"] for zone in obj["zones"] for r in zone["resources"]}
    assert "cpu" not in names, "static CPU manager without a readable state file: availability unknown"
    gpus = sum(r["capacity"] for zone in obj["zones"] for r in zone["resources"] if r["name"] == "nvidia.com/gpu")
    assert gpus == 3, "the free GPU NVML could not place (NUMA -1) is not in any zone"


def test_a_bound_pod_the_kubelet_has_not_admitted_keeps_the_fingerprint_from_matching(machine) -> None:  # type: ignore[no-untyped-def]
    """The consumer compares our fingerprint with the Running pods it sees: a pod bound here that the
    kubelet has not admitted yet must keep the two apart (named `<name>#pending`), and count by its own
    name once admitted (pinned in the state files) or Running."""
    from exporter.model import PinnedContainer, PodRef
    from exporter.views.nrt import PENDING
    from tests.kubelet_files import POD_A, POD_B, fixture_config, install

    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))

    def published(*pods: PodRef) -> str:
        snapshot = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, pods_reader=lambda: pods).build()
        obj = build_nrt(snapshot, node_name="worker-1", node_uid=None, method="with-exclusive-resources")
        return next(a["value"] for a in obj["attributes"] if a["name"] == "nodeTopologyPodsFingerprint")

    def api_pod(uid: str, name: str, *, running: bool) -> PodRef:
        return PodRef(uid=uid, namespace="team", name=name, spec_known=True, exclusive_native=True, running=running,
                      guaranteed=True, containers=(PinnedContainer(name="app", exclusive_cpu=True),))  # fmt: skip

    pinned_pending = api_pod(POD_A, "a", running=False)  # admitted: its CPUs are in cpu_manager_state
    running = api_pod(POD_B, "b", running=True)
    bound = api_pod("c0ffee00-0000-4000-8000-000000000000", "c", running=False)  # not admitted yet
    assert published(pinned_pending, running) == fingerprint([("team", "a"), ("team", "b")])
    with_bound = published(pinned_pending, running, bound)
    assert with_bound == fingerprint([("team", "a"), ("team", "b"), ("team", "c" + PENDING)])
    scheduler_views = [fingerprint(view) for view in ([("team", "b")], [("team", "a"), ("team", "b")],
                                                      [("team", "a"), ("team", "b"), ("team", "c")])]  # fmt: skip
    assert with_bound not in scheduler_views, "no set of Running pods matches while one waits for the kubelet"


def test_a_pod_counts_as_admitted_only_once_every_manager_recorded_it(machine) -> None:  # type: ignore[no-untyped-def]
    """The kubelet's managers write their state files one after another as they admit a pod (devices, CPUs,
    then memory, tens of ms apart on a real kubelet). A pod named as admitted once the first had it made an
    object the scheduler's cache could resync from whose memory did not subtract it yet. It stays
    `#pending` until each file that pins something for it has it, whatever the order they arrive in."""
    from exporter.kubeapi import pod_ref
    from exporter.model import PinnedContainer
    from exporter.views.nrt import PENDING
    from tests.kubelet_files import POD_A, fixture_config, install

    wants = {"cpu": "4", "memory": "4Gi", "hugepages-1Gi": "2Gi", "nvidia.com/gpu": "1",
             "intel.com/sriov_netdevice": "1"}  # fmt: skip
    body = {"metadata": {"uid": POD_A, "namespace": "team", "name": "a"},
            "spec": {"containers": [{"name": "app", "resources": {"requests": wants, "limits": wants}}]},
            "status": {"phase": "Pending"}}  # fmt: skip
    pod = pod_ref(body)
    assert pod is not None
    assert pod.guaranteed
    extended = frozenset({"nvidia.com/gpu", "intel.com/sriov_netdevice"})
    assert pod.containers == (PinnedContainer(name="app", exclusive_cpu=True, extended=extended),)
    files = {"devices": ("kubelet_internal_checkpoint.empty.json", "kubelet_internal_checkpoint.gpu-sriov.json"),
             "cpu": ("cpu_manager_state.static-empty.json", "cpu_manager_state.static-2pods.json"),
             "memory": ("memory_manager_state.static-empty.json", "memory_manager_state.static-hugepages.json")}  # fmt: skip

    def named(recorded: set[str], *, config: str = fixture_config(), running: bool = False, **fixed: str) -> str:
        install(machine, config=config, **{kind: files[kind][kind in recorded] for kind in files} | fixed)
        reader = (lambda: (replace(pod, running=True),)) if running else (lambda: (pod,))
        snapshot = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, pods_reader=reader).build()
        obj = build_nrt(snapshot, node_name="worker-1", node_uid=None, method="with-exclusive-resources")
        return next(a["value"] for a in obj["attributes"] if a["name"] == "nodeTopologyPodsFingerprint")

    admitted, waiting = fingerprint([("team", "a")]), fingerprint([("team", "a" + PENDING)])
    for recorded in ({"cpu"}, {"memory"}, {"devices"}, {"devices", "cpu"}, {"cpu", "memory"}, {"devices", "memory"}):
        assert named(recorded) == waiting, f"named with only {sorted(recorded)} in the state files"
    assert named({"devices", "cpu", "memory"}) == admitted
    assert named(set(), running=True) == admitted, "a pod that runs is admitted whatever the files say"
    # What no manager pins is not waited for: without the Static memory manager, CPUs and devices are all.
    no_memory = {"config": fixture_config(memory="None"), "memory": "memory_manager_state.none.json"}
    assert named({"devices", "cpu"}, **no_memory) == admitted
    assert named({"devices"}, **no_memory) == waiting
    neither = {"config": fixture_config(cpu="none", memory="None"), "cpu": "cpu_manager_state.none.json",
               "memory": "memory_manager_state.none.json"}  # fmt: skip
    assert named({"devices"}, **neither) == admitted
    assert named(set(), **neither) == waiting


def test_every_container_is_waited_for_by_name_and_pod_level_memory_until_the_pod_runs(machine) -> None:  # type: ignore[no-untyped-def]
    """Each container the kubelet admits is recorded by name, init containers first: a pod counts once every
    container's records are in, not once any of the pod's are. A pod-level memory allocation records the pod
    before the NUMA nodes' free memory subtracts it, so it counts once the pod runs; a Burstable pod is not
    waited for in the memory manager's file (it records none)."""
    import json

    from exporter.kubeapi import pod_ref
    from exporter.views.nrt import PENDING
    from tests.kubelet_files import (
        KUBELET_FIXTURES,
        POD_A,
        cpu_state,
        device_entry,
        device_state,
        fixture_config,
        install,
        memory_state,
    )

    def spec(name: str, cpu: str, memory: str, **extra: str) -> dict:  # type: ignore[type-arg]
        wants = {"cpu": cpu, "memory": memory, **extra}
        return {"name": name, "resources": {"requests": wants, "limits": wants}}

    guaranteed = {"metadata": {"uid": POD_A, "namespace": "team", "name": "a"}, "status": {"phase": "Pending"},
                  "spec": {"initContainers": [spec("init", "2", "1Gi")],
                           "containers": [spec("app", "4", "4Gi", **{"nvidia.com/gpu": "1"}),
                                          spec("side", "500m", "1Gi")]}}  # fmt: skip
    gpu = "GPU-1b7c9a2e-0000-0000-0000-000000000000"
    registered = {"nvidia.com/gpu": [gpu]}
    memory_fixture = json.loads((KUBELET_FIXTURES / "memory_manager_state.static-hugepages.json").read_text())
    block = [{"numaAffinity": [0], "type": "memory", "size": 1 << 30}]

    def named(body: dict, *, cpu: tuple[str, ...] = ("init", "app"), memory: tuple[str, ...] = ("init", "app", "side"),  # type: ignore[type-arg]
              devices: tuple[str, ...] = ("app",), pod_memory: bool = False) -> str:  # fmt: skip
        pod = pod_ref(body)
        assert pod is not None
        memory_body = {**memory_fixture, "entries": {POD_A: dict.fromkeys(memory, block)} if memory else {}}
        if pod_memory:
            memory_body["podEntries"] = {POD_A: {"memoryBlocks": block}}
        install(machine, config=fixture_config(), memory=memory_state(memory_body),
                cpu=cpu_state(default=range(8, 32), entries={POD_A: {name: [2 + i] for i, name in enumerate(cpu)}}),
                devices=device_state([device_entry(POD_A, name, "nvidia.com/gpu", {0: [gpu]}) for name in devices],
                                     registered))  # fmt: skip
        snapshot = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, pods_reader=lambda: (pod,)).build()
        obj = build_nrt(snapshot, node_name="worker-1", node_uid=None, method=METHOD_ALL)  # every pod named
        return next(a["value"] for a in obj["attributes"] if a["name"] == "nodeTopologyPodsFingerprint")

    admitted, waiting = fingerprint([("team", "a")]), fingerprint([("team", "a" + PENDING)])
    assert named(guaranteed) == admitted
    assert named(guaranteed, cpu=("app",)) == waiting, "the init container's CPUs are not in yet"
    assert named(guaranteed, memory=("init", "app")) == waiting, "the last container's memory is not in yet"
    assert named(guaranteed, devices=()) == waiting
    assert named(guaranteed, pod_memory=True) == waiting, "pod-level memory: counted once it runs"
    burstable = json.loads(json.dumps(guaranteed))
    burstable["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "8"
    assert named(burstable, cpu=(), memory=()) == admitted, "a Burstable pod: its devices are all it waits for"
    assert named(burstable, cpu=(), memory=(), devices=()) == waiting


def test_for_a_dedicated_informer_finished_and_rejected_pods_are_named_and_subtract_nothing(machine) -> None:  # type: ignore[no-untyped-def]
    """scheduler-plugins' Dedicated informer counts every bound pod not Pending: a pod the kubelet rejected
    (Failed) or that completed (Succeeded) is in its fingerprint until deleted. Told so, the agent names
    them (exclusive ones, as for live pods); its zones are the same with or without them; a pod the snapshot
    still has as live (its phase changed between the two reads) counts once."""
    from exporter.model import PodRef
    from tests.kubelet_files import POD_A, POD_B, fixture_config, install

    install(machine, cpu="cpu_manager_state.static-2pods.json", config=fixture_config(memory="None"))
    a = PodRef(uid=POD_A, namespace="team", name="a", spec_known=True, exclusive_native=True, running=True)
    b = PodRef(uid=POD_B, namespace="team", name="b", spec_known=True, exclusive_native=True, running=True)
    snapshot = SnapshotBuilder(machine.paths, use_nvml=False, use_udev=False, pods_reader=lambda: (a, b)).build()
    rejected = PodRef(uid="dead0000-0000-4000-8000-000000000001", namespace="team", name="rejected",
                      spec_known=True, exclusive_native=True, finished=True)  # fmt: skip
    # Not exclusive: outside with-exclusive-resources' set, inside all's.
    shared_pod = PodRef(
        uid="dead0000-0000-4000-8000-000000000002", namespace="team", name="shared", spec_known=True, finished=True
    )

    def published(*finished: PodRef) -> dict:  # type: ignore[type-arg]
        return build_nrt(snapshot, node_name="worker-1", node_uid=None, method="with-exclusive-resources",
                         finished=finished)  # fmt: skip

    def pods_fingerprint(obj: dict) -> str:  # type: ignore[type-arg]
        return str(next(a["value"] for a in obj["attributes"] if a["name"] == "nodeTopologyPodsFingerprint"))

    shared, dedicated = published(), published(rejected, shared_pod, replace(b, finished=True, running=False))
    assert pods_fingerprint(shared) == fingerprint([("team", "a"), ("team", "b")])
    assert pods_fingerprint(dedicated) == fingerprint([("team", "a"), ("team", "b"), ("team", "rejected")])
    assert shared["zones"] == dedicated["zones"]
    everything = build_nrt(snapshot, node_name="worker-1", node_uid=None, method=METHOD_ALL, finished=(shared_pod,))
    assert pods_fingerprint(everything) == fingerprint([("team", "a"), ("team", "b"), ("team", "shared")])

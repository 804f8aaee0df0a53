from __future__ import annotations

import pytest

from exporter.errors import SourceFormatError, SourceParseError
from exporter.sources.kubelet_config import parse_kubelet_config
from exporter.sources.pod_logs import parse_pod_log_dir


def test_defaults_apply_to_an_empty_file() -> None:
    config = parse_kubelet_config(b"apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n")
    assert (config.cpu_manager_policy, config.memory_manager_policy) == ("none", "None")
    assert (config.topology_manager_policy, config.topology_manager_scope) == ("none", "container")
    assert config.reserved_system_cpus == frozenset()
    assert config.max_allowable_numa_nodes == 8


def test_fields() -> None:
    config = parse_kubelet_config(
        b"""
kind: KubeletConfiguration
cpuManagerPolicy: static
cpuManagerPolicyOptions: {full-pcpus-only: "true", strict-cpu-reservation: true}
memoryManagerPolicy: Static
topologyManagerPolicy: single-numa-node
topologyManagerScope: pod
topologyManagerPolicyOptions: {max-allowable-numa-nodes: "16"}
reservedSystemCPUs: "0,16"
reservedMemory:
- {numaNode: 0, limits: {memory: 1Gi, hugepages-2Mi: 4Mi}}
- {numaNode: 1, limits: {memory: 512Mi}}
systemReserved: {cpu: 500m, memory: 1Gi}
enforceNodeAllocatable: [pods, system-reserved]
systemReservedCgroup: /system.slice
cpuManagerPolicyOption: {full-pcpus-only: "true"}
"""
    )
    assert config.memory_manager_policy == "Static"
    assert config.strict_cpu_reservation
    assert config.max_allowable_numa_nodes == 16
    assert config.reserved_system_cpus == {0, 16}
    assert config.reserved_memory == {0: {"memory": 1 << 30, "hugepages-2Mi": 4 << 20}, 1: {"memory": 512 << 20}}
    assert config.system_reserved == {"cpu": "500m", "memory": "1Gi"}
    assert config.enforce_node_allocatable == ("pods", "system-reserved")
    assert (config.system_reserved_cgroup, config.kube_reserved_cgroup) == ("/system.slice", "")
    assert config.unknown_fields == ("cpuManagerPolicyOption",)  # the kubelet ignores it: doctor says so
    assert parse_kubelet_config(b"{}").enforce_node_allocatable == ("pods",)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b"kind: [", SourceParseError),
        (b"- a list", SourceParseError),
        (b"kind: Pod", SourceFormatError),
        (b"cpuManagerPolicy: dynamic", SourceFormatError),
        # The managers compare policy names exactly (kubelet-oracle: "unknown policy"); see test_doctor_oracle.
        (b"cpuManagerPolicy: Static", SourceFormatError),
        (b"memoryManagerPolicy: static", SourceFormatError),
        (b"apiVersion: kubelet.config.k8s.io/v1", SourceFormatError),
        (b'reservedSystemCPUs: "0, 8"', SourceParseError),
        (
            b"reservedMemory: [{numaNode: 0, limits: {memory: 1Gi}}, {numaNode: 0, limits: {memory: 1Gi}}]",
            SourceFormatError,
        ),
        (b"enforceNodeAllocatable: pods", SourceParseError),
        (b"reservedSystemCPUs: 0-", SourceParseError),
        (b"reservedMemory: [{numaNode: x}]", SourceParseError),
        (b"reservedMemory: [{numaNode: 0, limits: {memory: lots}}]", SourceParseError),
        # Found by `make fuzz`: a flow mapping missing its key parses as {"1Gi": None}.
        (b"reservedMemory: [{numaNode: 0, limits: { 1Gi}}]", SourceParseError),
        (b"reservedMemory: [{numaNode: 0, limits: {memory: true}}]", SourceParseError),
    ],
)
def test_bad_config(text: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_kubelet_config(text)


def test_pod_log_directory_names() -> None:
    pod = parse_pod_log_dir("kube-system_coredns-5d78c9869d-abcde_0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f")
    assert pod is not None
    assert (pod.namespace, pod.name, pod.uid) == (
        "kube-system",
        "coredns-5d78c9869d-abcde",
        "0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f",
    )
    assert parse_pod_log_dir("not-a-pod") is None


def _dropin(directory, name: str, text: str) -> None:  # type: ignore[no-untyped-def]
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n" + text)


def test_drop_ins_merge_over_the_file_in_walk_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """JSON merge patch per drop-in, in filepath.WalkDir order (a subdirectory where its name sorts); a drop-in
    that leaves enforceNodeAllocatable out sets it to [pods] (held to the real kubelet in
    tests/integration/test_real_kubelet_config.py and its refusal of such a drop-in without pod cgroups)."""
    from exporter.paths import HostPaths
    from exporter.sources.kubelet_config import read_kubelet_config

    file = tmp_path / "config.json"
    file.write_text('{"kind": "KubeletConfiguration", "cpuManagerPolicy": "static", "reservedSystemCPUs": "0",'
                    ' "enforceNodeAllocatable": [], "kubeReserved": {"memory": "1Gi", "cpu": "1"},'
                    ' "topologyManagerPolicy": "restricted"}')  # fmt: skip
    dropins = tmp_path / "config.json.d"
    _dropin(dropins, "10-a.conf", "topologyManagerPolicy: best-effort\nkubeReserved: {cpu: null, pid: '100'}\n")
    _dropin(dropins, "20-b/x.conf", "topologyManagerPolicy: single-numa-node\n")
    _dropin(dropins, "30-c.conf", "topologyManagerScope: pod\nenforceNodeAllocatable: []\n")
    _dropin(dropins, "40-d.yaml", "topologyManagerPolicy: none\n")  # not a drop-in
    config = read_kubelet_config(HostPaths(kubelet_dir=tmp_path, kubelet_config_file=file, kubelet_config_dir=dropins))
    assert (config.topology_manager_policy, config.topology_manager_scope) == ("single-numa-node", "pod")
    assert dict(config.kube_reserved) == {"memory": "1Gi", "pid": "100"}  # merged key by key, null deletes
    assert config.enforce_node_allocatable == ()  # the last drop-in set it
    assert [p.rsplit("/", 1)[-1] for p in config.origin] == ["config.json", "10-a.conf", "x.conf", "30-c.conf"]
    _dropin(dropins, "50-e.conf", "maxPods: 10\n")
    config = read_kubelet_config(HostPaths(kubelet_dir=tmp_path, kubelet_config_file=file, kubelet_config_dir=dropins))
    assert config.enforce_node_allocatable == ("pods",)  # defaulted in the drop-in that left it out


def test_drop_ins_alone_and_nothing_at_all(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """k3s and RKE2 configure the kubelet through drop-ins only; with neither file nor drop-ins the source is
    missing and says what to set."""
    from exporter.errors import SourceMissing
    from exporter.paths import HostPaths
    from exporter.sources.kubelet_config import read_kubelet_config

    dropins = tmp_path / "kubelet.conf.d"
    _dropin(dropins, "00-k3s-defaults.conf", "cpuManagerPolicy: static\ntopologyManagerPolicy: restricted\n")
    paths = HostPaths(kubelet_dir=tmp_path, kubelet_config_dir=dropins)
    config = read_kubelet_config(paths)
    assert (config.cpu_manager_policy, config.topology_manager_policy, config.known) == (
        "static",
        "restricted",
        True,
    )
    with pytest.raises(SourceMissing, match="--kubelet-config") as caught:
        read_kubelet_config(HostPaths(kubelet_dir=tmp_path))
    assert str(tmp_path / "config.yaml") in caught.value.message
    with pytest.raises(SourceMissing, match="drop-in directory"):
        read_kubelet_config(HostPaths(kubelet_dir=tmp_path, kubelet_config_dir=tmp_path / "nowhere",
                                      kubelet_config_file=tmp_path / "x"))  # fmt: skip
    _dropin(dropins, "01-bad.conf", "kind: Pod\n")
    with pytest.raises(SourceFormatError, match=r"01-bad\.conf: kind is 'Pod'"):
        read_kubelet_config(paths)

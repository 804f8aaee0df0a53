"""The Helm chart, rendered and linted by the real Helm v4 engine (helm-python-sdk), its manifests checked
against Kubernetes' schemas (kubernetes-validate), its values schema, its security, its container
arguments (parsed by the real CLI), and its RBAC against what the publisher actually asks the API for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from exporter.cli import build_parser
from exporter.sources.kubelet_config import DISTRIBUTIONS
from tests.chart import CHART, KUBE_VERSIONS, OPERATOR_KINDS, SCENARIOS, by_kind, notes, render

CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ValidatingAdmissionPolicy",
                  "ValidatingAdmissionPolicyBinding")  # fmt: skip


def daemonsets(values: dict[str, Any]) -> list[dict[str, Any]]:
    return by_kind(render(values), "DaemonSet")


def daemonset(values: dict[str, Any]) -> dict[str, Any]:
    """The DaemonSet of every node (with gpu.enabled there is a second one, for GPU nodes)."""
    (ds,) = [d for d in daemonsets(values) if not d["metadata"]["name"].endswith("-gpu")]
    return ds


def test_the_ci_scenarios_are_the_ones_the_issue_names() -> None:
    assert {"monitoring-values", "crd-off-values", "gpu-values", "profiles-values"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_is_clean(scenario: str) -> None:
    report = helm.lint(CHART, SCENARIOS[scenario], strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_validates_against_kubernetes(scenario: str, version: str) -> None:
    documents = render(SCENARIOS[scenario])
    assert by_kind(documents, "DaemonSet")
    for document in documents:
        if document["kind"] in OPERATOR_KINDS:
            # kubernetes-validate has no schemas for the Prometheus Operator's CRDs: check their shape here.
            assert document["apiVersion"] == "monitoring.coreos.com/v1"
            assert document["spec"]
            continue
        kubernetes_validate.validate(document, version, strict=True)


def test_the_crd_validates_as_a_crd_and_can_be_turned_off() -> None:
    (crd,) = by_kind(render({}), "CustomResourceDefinition")
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)
    assert crd["metadata"]["name"] == "noderesourcetopologies.topology.node.k8s.io"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert [v["name"] for v in crd["spec"]["versions"] if v["storage"]] == ["v1alpha2"]
    assert by_kind(render(SCENARIOS["crd-off-values"]), "CustomResourceDefinition") == []


@pytest.mark.parametrize(
    "values",
    [
        {"exporter": {"port": "9709"}},
        {"exporter": {"port": 70000}},
        {"unknownKey": True},
        {"exporter": {"unknown": 1}},
        {"nrt": {"fingerprintMethod": "some"}},
        {"nrt": {"enabled": "yes"}},
        {"profiles": {"gpu": {"nvidia.com/gpu": -1}}},
        {"profiles": {"gpu": {}}},
        {"exporter": {"hostPaths": {"sys": "relative/sys", "proc": "/proc", "kubeletDir": "/k", "podLogs": "/p"}}},
        {"exporter": {"extraArgs": ["not-a-flag"]}},
        {"serviceMonitor": {"enabled": 1}},
    ],
)
def test_values_schema_rejects_wrong_types_and_unknown_keys(values: dict[str, Any]) -> None:
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_values_schema_accepts_every_scenario(scenario: str) -> None:
    helm.Chart.load(CHART).validate_schema(SCENARIOS[scenario])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_daemonset_security(scenario: str) -> None:
    for found in daemonsets(SCENARIOS[scenario]):  # every node's and, with gpu.enabled, the GPU nodes'
        _assert_least_privilege(found["spec"]["template"]["spec"])


def _assert_least_privilege(pod: dict[str, Any]) -> None:
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in security["capabilities"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    host_volumes = {v["name"] for v in pod["volumes"] if "hostPath" in v}
    optional = {"pod-resources", "cgroup", "container-logs", "kubelet-config", "kubelet-config-d"}
    assert host_volumes - optional - {"kubelet"} == {"sys", "proc", "pod-logs"}
    assert ("kubelet" in host_volumes) != ("--no-state-files" in container["args"]), "podresources.only: no kubelet"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all(mounts[name]["readOnly"] is True for name in host_volumes), "every hostPath read-only"
    assert all(mounts[name]["mountPath"].startswith("/host/") for name in host_volumes)
    types = {v["hostPath"].get("type") for v in pod["volumes"] if "hostPath" in v}
    assert types <= {"Directory", "File", "Socket"}, f"no host directory created, none left unchecked: {types}"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["nodeSelector"]["kubernetes.io/os"] == "linux"
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["limits"]["memory"]


def test_gpu_and_cpu_nodes_in_one_release() -> None:
    """A second DaemonSet for GPU nodes (the label GPU feature discovery sets), with the NVIDIA runtime class
    and NVML's environment; the first one kept off those nodes; NVML on in both; never a runtime class on a
    node without GPUs."""
    everything = daemonsets(SCENARIOS["gpu-values"])
    by_name = {d["metadata"]["name"]: d for d in everything}
    assert len(by_name) == 2
    (gpu_name,) = [name for name in by_name if name.endswith("-gpu")]
    gpu = by_name[gpu_name]["spec"]["template"]["spec"]
    cpu = daemonset(SCENARIOS["gpu-values"])["spec"]["template"]["spec"]
    assert gpu["runtimeClassName"] == "nvidia"
    assert gpu["nodeSelector"] == {"kubernetes.io/os": "linux", "nvidia.com/gpu.present": "true"}
    env = {e["name"]: e.get("value") for e in gpu["containers"][0]["env"]}
    assert (env["NVIDIA_VISIBLE_DEVICES"], env["NVIDIA_DRIVER_CAPABILITIES"]) == ("all", "utility")
    assert "runtimeClassName" not in cpu
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in cpu["containers"][0]["env"]}
    (term,) = cpu["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}]
    assert all("--no-nvml" not in pod["containers"][0]["args"] for pod in (gpu, cpu)), "NVML on where reachable"
    selectors = [d["spec"]["selector"]["matchLabels"] for d in everything]
    assert selectors[0] != selectors[1], "each DaemonSet owns only its own pods"
    assert len(daemonsets({"gpu": {"enabled": False}})) == 1
    assert "affinity" not in daemonset({"gpu": {"enabled": False}})["spec"]["template"]["spec"]
    assert "--no-nvml" in daemonset({"nvml": False})["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_argument_is_accepted_by_serve(scenario: str) -> None:
    args = daemonset(SCENARIOS[scenario])["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve"
    assert (str(parsed.sysfs), str(parsed.procfs), str(parsed.kubelet_dir), str(parsed.pod_logs)) == (
        "/host/sys", "/host/proc", "/host/var/lib/kubelet", "/host/var/log/pods",
    )  # fmt: skip
    assert parsed.listen_address == ":9709"


def test_profiles_become_a_configmap_the_exporter_can_load(tmp_path: Path) -> None:
    documents = render(SCENARIOS["profiles-values"])
    (configmap,) = [d for d in by_kind(documents, "ConfigMap") if d["metadata"]["name"].endswith("-profiles")]
    from exporter.kubelet.profiles import parse_profiles

    profiles = {p.name: dict(p.requests) for p in parse_profiles(configmap["data"]["profiles.yaml"])}
    assert profiles["gpu-train"] == {"nvidia.com/gpu": 1, "cpu": 8, "memory": 64 << 30}
    args = by_kind(documents, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--profiles=/etc/numa-topology-exporter/profiles.yaml" in args


def test_monitoring_objects_ship_the_generated_rules_and_dashboards() -> None:
    documents = render(SCENARIOS["monitoring-values"])
    (rule,) = by_kind(documents, "PrometheusRule")
    generated = yaml.safe_load((CHART.parent.parent / "dashboards" / "alerts.yaml").read_text())
    assert rule["spec"] == generated
    dashboards = [d for d in by_kind(documents, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(next(iter(d["data"])) for d in dashboards) == ["cluster-numa.json", "node-numa.json"]
    assert all(d["metadata"]["namespace"] == "monitoring" for d in dashboards)
    assert by_kind(documents, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] == "metrics"
    assert by_kind(documents, "PodMonitor")[0]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert not [d for d in render({}) if d["kind"] in OPERATOR_KINDS], "monitoring objects are off by default"


# The chart's RBAC against what a running agent asks a real API server for: tests/integration/test_kube.py.


def test_no_rbac_when_nothing_is_published() -> None:
    documents = render(SCENARIOS["nrt-off-values"])
    assert by_kind(documents, "ClusterRole") == []
    pod = by_kind(documents, "DaemonSet")[0]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert "--no-nrt" in pod["containers"][0]["args"]


def test_the_podresources_socket_is_reached_read_only_and_can_be_turned_off() -> None:
    def container_of(values: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        pod = daemonset(values)["spec"]["template"]["spec"]
        return pod["containers"][0], pod["volumes"]

    default, volumes = container_of({})
    parsed = build_parser().parse_args(default["args"])
    assert parsed.podresources
    assert parsed.podresources_socket is None, "through the kubelet mount: <path.kubelet>/pod-resources"
    assert "pod-resources" not in {v["name"] for v in volumes}
    own, volumes = container_of(SCENARIOS["podresources-values"])
    parsed = build_parser().parse_args(own["args"])
    assert str(parsed.podresources_socket) == "/host/pod-resources/kubelet.sock"
    mount = next(m for m in own["volumeMounts"] if m["name"] == "pod-resources")
    assert mount == {"name": "pod-resources", "mountPath": "/host/pod-resources", "readOnly": True}
    assert next(v for v in volumes if v["name"] == "pod-resources")["hostPath"] == {
        "path": "/var/lib/kubelet/pod-resources", "type": "Directory",
    }  # fmt: skip
    off, _ = container_of({"podresources": {"enabled": False}})
    assert "--no-podresources" in off["args"]


@pytest.mark.parametrize("distribution", ["kubeadm", "gke"])
def test_podresources_only_mounts_no_kubelet_directory(distribution: str) -> None:
    """podresources.only: of the kubelet's directory only pod-resources/ is mounted, read-only, and kubeadm's
    config file on its own (a File mount), never the directory holding pki/ and the pods' volumes."""
    values = {**SCENARIOS["podresources-only-values"], "exporter": {"kubeletConfig": {"distribution": distribution}}}
    pod = daemonset(values)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    parsed = build_parser().parse_args(container["args"])
    assert parsed.state_files is False
    assert parsed.podresources
    assert str(parsed.podresources_socket) == "/host/pod-resources/kubelet.sock"
    paths = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in pod["volumes"] if "hostPath" in v}
    assert "/var/lib/kubelet" not in paths
    under_kubelet = {path: kind for path, kind in paths.items() if path.startswith("/var/lib/kubelet")}
    if distribution == "kubeadm":
        assert under_kubelet == {"/var/lib/kubelet/pod-resources": "Directory", "/var/lib/kubelet/config.yaml": "File"}
        assert str(parsed.kubelet_config) == "/host/kubelet-config/config.yaml"
        assert ("/var/lib/kubelet", Path("/host/kubelet-config")) in parsed.host_path_map
    else:
        assert under_kubelet == {"/var/lib/kubelet/pod-resources": "Directory"}
        assert paths["/home/kubernetes"] == "Directory"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert all(m["readOnly"] for m in mounts.values())
    assert "/host/var/lib/kubelet" not in mounts
    with pytest.raises(Exception, match=r"podresources\.only needs podresources\.enabled"):
        daemonset({"podresources": {"only": True, "enabled": False}})


def test_dra_reads_are_granted_only_when_dra_is_on() -> None:
    def rules(values: dict[str, Any]) -> set[tuple[str, str, str]]:
        (role,) = by_kind(render(values), "ClusterRole")
        return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                for v in rule["verbs"]}  # fmt: skip

    dra = {("resource.k8s.io", "resourceslices", "list"), ("resource.k8s.io", "resourceslices", "watch"),
           ("resource.k8s.io", "resourceclaims", "get")}  # fmt: skip
    assert dra <= rules({})
    assert not {r for r in rules({"dra": {"enabled": False}}) if r[0] == "resource.k8s.io"}
    default = daemonset({})["spec"]["template"]["spec"]["containers"][0]["args"]
    off = daemonset({"dra": {"enabled": False}})["spec"]["template"]["spec"]["containers"][0]["args"]
    assert build_parser().parse_args(default).dra
    assert not build_parser().parse_args(off).dra


def test_observed_placement_mounts_the_cgroup_tree_read_only_and_can_be_off_or_widened() -> None:
    def pod_of(values: dict[str, Any]) -> dict[str, Any]:
        return dict(daemonset(values)["spec"]["template"]["spec"])

    pod = pod_of({})
    container = pod["containers"][0]
    parsed = build_parser().parse_args(container["args"])
    assert (str(parsed.cgroup), str(parsed.container_logs)) == ("/host/sys/fs/cgroup", "/host/var/log/containers")
    assert parsed.placement
    assert parsed.placement_interval == 15
    assert not parsed.placement_all_containers
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["cgroup"] == {"name": "cgroup", "mountPath": "/host/sys/fs/cgroup", "readOnly": True}
    assert mounts["container-logs"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cgroup"]["hostPath"] == {"path": "/sys/fs/cgroup", "type": "Directory"}
    wide = build_parser().parse_args(
        pod_of({"placement": {"allContainers": True, "interval": 30}})["containers"][0]["args"]
    )
    assert wide.placement_all_containers
    assert wide.placement_interval == 30
    off = pod_of({"placement": {"enabled": False}})
    assert not build_parser().parse_args(off["containers"][0]["args"]).placement
    assert not {"cgroup", "container-logs"} & {v["name"] for v in off["volumes"]}


def test_what_prometheus_node_exporter_users_expect() -> None:
    """Monitoring objects labelled for kube-prometheus-stack, jobLabel and metricRelabelings; the image by
    registry, tag or digest; namespaceOverride; revisionHistoryLimit and terminationGracePeriodSeconds."""
    documents = render(SCENARIOS["monitoring-values"])
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        (monitor,) = by_kind(documents, kind)
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    (service_monitor,) = by_kind(documents, "ServiceMonitor")
    assert service_monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    endpoint = service_monitor["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "http"
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    https = render({"serviceMonitor": {"enabled": True, "scheme": "https", "tlsConfig": {"insecureSkipVerify": True}}})
    assert by_kind(https, "ServiceMonitor")[0]["spec"]["endpoints"][0]["tlsConfig"] == {"insecureSkipVerify": True}

    def image(values: dict[str, Any]) -> str:
        return str(daemonset(values)["spec"]["template"]["spec"]["containers"][0]["image"])

    assert image({}).startswith("ghcr.io/numa-topology-exporter/numa-topology-exporter:")
    assert image({"image": {"tag": "1.2.3"}, "global": {"imageRegistry": "mirror.local:5000"}}) == (
        "mirror.local:5000/numa-topology-exporter/numa-topology-exporter:1.2.3"
    )
    digest = "sha256:" + "ab" * 32
    assert image({"image": {"digest": digest, "tag": "ignored"}}).endswith(f"numa-topology-exporter@{digest}")
    moved = render({"namespaceOverride": "numa-system", "serviceMonitor": {"enabled": True}})
    namespaced = [
        d for d in moved if d["kind"] not in CLUSTER_SCOPED
    ]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"numa-system"}
    spec = daemonset({"revisionHistoryLimit": 3, "terminationGracePeriodSeconds": 5})["spec"]
    assert spec["revisionHistoryLimit"] == 3
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 5


def test_the_chart_readme_names_every_top_level_value() -> None:
    """helm/numa-topology-exporter/README.md lists the values by topic: none is left out."""
    readme = (Path(__file__).parents[2] / "helm" / "numa-topology-exporter" / "README.md").read_text()
    values = yaml.safe_load(
        (Path(__file__).parents[2] / "helm" / "numa-topology-exporter" / "values.yaml").read_text()
    )
    missing = [key for key in values if f"`{key}" not in readme and f"`{key}." not in readme]
    assert missing == []


def test_the_notes_say_when_kube_prometheus_stack_would_not_select_the_monitors() -> None:
    hint = "selects monitors and rules by the label release=<its release name>"
    assert hint in notes({"serviceMonitor": {"enabled": True}})
    assert hint not in notes({"serviceMonitor": {"enabled": True, "additionalLabels": {"release": "kps"}}})
    assert hint not in notes({})


@pytest.mark.parametrize(("distribution", "file", "dropins"), DISTRIBUTIONS)
def test_the_kubelet_config_is_mounted_read_only_where_the_distribution_keeps_it(
    distribution: str, file: str | None, dropins: str | None
) -> None:
    """The agent gets the kubelet's --config file and --config-dir exactly where each distribution keeps them
    (exporter/sources/kubelet_config.py DISTRIBUTIONS), each through its own read-only mount; kubeadm's file is
    read through the kubelet directory's mount."""
    from exporter.sources.kubelet_config import DISTRIBUTIONS

    assert (
        distribution,
        file or "/var/lib/kubelet/config.yaml" if distribution == "kubeadm" else file,
        dropins,
    ) in DISTRIBUTIONS
    pod = daemonset({"exporter": {"kubeletConfig": {"distribution": distribution}}})["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    parsed = build_parser().parse_args(container["args"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if distribution == "kubeadm":
        assert str(parsed.kubelet_config) == "/host/var/lib/kubelet/config.yaml"
        assert "kubelet-config" not in mounts
    elif file is None:
        assert parsed.kubelet_config is None
        assert "kubelet-config" not in mounts
    else:
        assert str(parsed.kubelet_config) == f"/host/kubelet-config/{Path(file).name}"
        assert mounts["kubelet-config"] == {
            "name": "kubelet-config",
            "mountPath": "/host/kubelet-config",
            "readOnly": True,
        }
        assert volumes["kubelet-config"]["hostPath"] == {"path": str(Path(file).parent), "type": "Directory"}
    if dropins is None:
        assert parsed.kubelet_config_dir is None
        assert "kubelet-config-d" not in mounts
    else:
        assert str(parsed.kubelet_config_dir) == "/host/kubelet-config.d"
        assert mounts["kubelet-config-d"]["readOnly"] is True
        assert volumes["kubelet-config-d"]["hostPath"] == {"path": dropins, "type": "Directory"}


def test_a_custom_kubelet_config_location() -> None:
    values = {"exporter": {"kubeletConfig": {"distribution": "custom", "file": "/opt/k8s/kubelet.yaml",
                                             "dropinDir": "/opt/k8s/kubelet.d"}}}  # fmt: skip
    (container,) = daemonset(values)["spec"]["template"]["spec"]["containers"]
    parsed = build_parser().parse_args(container["args"])
    assert (str(parsed.kubelet_config), str(parsed.kubelet_config_dir)) == (
        "/host/kubelet-config/kubelet.yaml",
        "/host/kubelet-config.d",
    )


def test_the_notes_give_the_kubelet_config_flags_and_the_recommended_scheduler() -> None:
    text = notes({"exporter": {"kubeletConfig": {"distribution": "eks-al2023"}}})
    doctor = next(line for line in text.splitlines() if "numa-topology-exporter doctor" in line)
    parsed = build_parser().parse_args(doctor.split(" -- ", 1)[1].split()[1:])
    assert (str(parsed.kubelet_config), str(parsed.kubelet_config_dir)) == (
        "/host/kubelet-config/config.json",
        "/host/kubelet-config.d",
    )
    assert "cacheResyncPeriodSeconds: 5, cache: {informerMode: Dedicated}" in text
    shared = notes({"nrt": {"schedulerInformerMode": "Shared", "schedulerResyncSeconds": 1}})
    assert "cacheResyncPeriodSeconds: 1, cache: {informerMode: Shared}" in shared
    assert "cacheResyncPeriodSeconds" not in notes({"nrt": {"enabled": False}})


def test_configz_is_off_by_default_and_grants_nodes_proxy_only_when_on() -> None:
    def rules(values: dict[str, Any]) -> list[dict[str, Any]]:
        (role,) = by_kind(render(values), "ClusterRole")
        return list(role["rules"])

    assert not any("nodes/proxy" in rule["resources"] for rule in rules({}))
    (container,) = daemonset({})["spec"]["template"]["spec"]["containers"]
    assert not build_parser().parse_args(container["args"]).kubelet_configz
    on = {"exporter": {"kubeletConfig": {"distribution": "kubeadm", "configz": True}}}
    assert {"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]} in rules(on)
    (container,) = daemonset(on)["spec"]["template"]["spec"]["containers"]
    assert build_parser().parse_args(container["args"]).kubelet_configz


def test_the_scheduler_informer_mode_reaches_the_agent() -> None:
    def mode(values: dict[str, Any]) -> str:
        args = daemonset(values)["spec"]["template"]["spec"]["containers"][0]["args"]
        return str(build_parser().parse_args(args).nrt_scheduler_informer_mode)

    assert mode({}) == "Dedicated"  # scheduler-plugins' default
    assert mode({"nrt": {"schedulerInformerMode": "Shared"}}) == "Shared"

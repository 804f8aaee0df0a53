"""The kubelet's configuration (`KubeletConfiguration`, kubelet.config.k8s.io/v1beta1) as the kubelet builds it:
its `--config` file, then the `*.conf` drop-ins of its `--config-dir` merged over it, defaults applied.

kubeadm writes `/var/lib/kubelet/config.yaml`; other distributions keep the file elsewhere (DISTRIBUTIONS, each
cited in docs/product.md) or configure the kubelet through drop-ins only (k3s, RKE2): `--kubelet-config` and
`--kubelet-config-dir` point at them. Unset fields take the kubelet's defaults
(K pkg/kubelet/apis/config/v1beta1/defaults.go).

The kubelet's command-line flags override both (K cmd/kubelet/app/server.go `kubeletConfigFlagPrecedence`: the
flags given are parsed again over the merged configuration): `apply_flags` applies the ones that change what the
agent publishes or accounts (FLAG_FIELDS), as the kubelet's flag types set them. A map flag (`--kube-reserved`,
`--eviction-hard`, ...) replaces the file's map, repeated flags adding to it; `--reserved-memory` replaces the
list; `--feature-gates` sets the gates it names over the file's.

Drop-ins are merged as the kubelet v1.36 merges them (K cmd/kubelet/app/server.go `mergeKubeletConfigurations`,
held to the real kubelet's /configz in tests/integration/test_real_kubelet_config.py): every `*.conf` file under the
directory, subdirectories included, in lexical walk order, each applied as a JSON merge patch (RFC 7386: a
mapping merges key by key, a list or scalar replaces, null deletes). One field of a drop-in is defaulted
before the merge: a drop-in that does not set `enforceNodeAllocatable` sets it to `[pods]`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from exporter.cpuset import parse_cpuset
from exporter.errors import (
    SourceFormatError,
    SourceMissing,
    SourceParseError,
    SourceReadError,
    SourceTooLarge,
)
from exporter.model import KubeletConfig
from exporter.paths import HostPaths
from exporter.sources.files import present, read_bounded
from exporter.units import quantity_value

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's loader when PyYAML was built with it

SOURCE = "kubelet_config"
LIMIT_BYTES = 1 << 20
KIND = "KubeletConfiguration"

# K pkg/kubelet/apis/config/v1beta1 KubeletConfiguration (v1.36): every field the kubelet's decoder knows. Any
# other key fails strict decoding; the kubelet then decodes leniently, logs it and ignores the key.
FIELDS = frozenset({
    "address", "allowedUnsafeSysctls", "apiVersion", "authentication", "authorization", "cgroupDriver", "cgroupRoot",
    "cgroupsPerQOS", "clusterDNS", "clusterDomain", "configMapAndSecretChangeDetectionStrategy",
    "containerLogMaxFiles", "containerLogMaxSize", "containerLogMaxWorkers", "containerLogMonitorInterval",
    "containerRuntimeEndpoint", "contentType", "cpuCFSQuota", "cpuCFSQuotaPeriod", "cpuManagerPolicy",
    "cpuManagerPolicyOptions", "cpuManagerReconcilePeriod", "crashLoopBackOff", "enableContentionProfiling",
    "enableControllerAttachDetach", "enableDebugFlagsHandler", "enableDebuggingHandlers", "enableProfilingHandler",
    "enableServer", "enableSystemLogHandler", "enableSystemLogQuery", "enforceNodeAllocatable", "eventBurst",
    "eventRecordQPS", "evictionHard", "evictionMaxPodGracePeriod", "evictionMinimumReclaim",
    "evictionPressureTransitionPeriod", "evictionSoft", "evictionSoftGracePeriod", "failCgroupV1", "failSwapOn",
    "featureGates", "fileCheckFrequency", "hairpinMode", "healthzBindAddress", "healthzPort", "httpCheckFrequency",
    "imageGCHighThresholdPercent", "imageGCLowThresholdPercent", "imageMaximumGCAge", "imageMinimumGCAge",
    "imagePullCredentialsVerificationPolicy", "imageServiceEndpoint", "iptablesDropBit", "iptablesMasqueradeBit",
    "kernelMemcgNotification", "kind", "kubeAPIBurst", "kubeAPIQPS", "kubeReserved", "kubeReservedCgroup",
    "kubeletCgroups", "localStorageCapacityIsolation", "logging", "makeIPTablesUtilChains", "maxOpenFiles",
    "maxParallelImagePulls", "maxPods", "memoryManagerPolicy", "memoryReservationPolicy", "memorySwap",
    "memoryThrottlingFactor", "mergeDefaultEvictionSettings", "nodeLeaseDurationSeconds", "nodeStatusMaxImages",
    "nodeStatusReportFrequency", "nodeStatusUpdateFrequency", "oomScoreAdj", "podCIDR", "podLogsDir", "podPidsLimit",
    "podsPerCore", "port", "preloadedImagesVerificationAllowlist", "protectKernelDefaults", "providerID",
    "qosReserved", "readOnlyPort", "registerNode", "registerWithTaints", "registryBurst", "registryPullQPS",
    "reservedMemory", "reservedSystemCPUs", "resolvConf", "rotateCertificates", "runOnce", "runtimeRequestTimeout",
    "seccompDefault", "serializeImagePulls", "serverTLSBootstrap", "showHiddenMetricsForVersion",
    "shutdownGracePeriod", "shutdownGracePeriodByPodPriority", "shutdownGracePeriodCriticalPods",
    "singleProcessOOMKill", "staticPodPath", "staticPodURL", "staticPodURLHeader", "streamingConnectionIdleTimeout",
    "syncFrequency", "systemCgroups", "systemReserved", "systemReservedCgroup", "tlsCertFile", "tlsCipherSuites",
    "tlsCurvePreferences", "tlsMinVersion", "tlsPrivateKeyFile", "topologyManagerPolicy",
    "topologyManagerPolicyOptions", "topologyManagerScope", "tracing", "userNamespaces", "volumePluginDir",
    "volumeStatsAggPeriod",
})  # fmt: skip
API_VERSION = "kubelet.config.k8s.io/v1beta1"
CPU_POLICIES = ("none", "static")
MEMORY_POLICIES = ("None", "Static")
TOPOLOGY_POLICIES = ("none", "best-effort", "restricted", "single-numa-node")
TOPOLOGY_SCOPES = ("container", "pod")


# Where distributions keep the kubelet's configuration: (distribution, --config file, --config-dir). The sources
# are cited in docs/product.md ("The kubelet's configuration"); the chart's exporter.kubeletConfig.distribution.
DISTRIBUTIONS: tuple[tuple[str, str | None, str | None], ...] = (
    ("kubeadm", "/var/lib/kubelet/config.yaml", None),
    ("eks-al2", "/etc/kubernetes/kubelet/kubelet-config.json", None),
    ("eks-al2023", "/etc/kubernetes/kubelet/config.json", "/etc/kubernetes/kubelet/config.json.d"),
    ("gke", "/home/kubernetes/kubelet-config.yaml", None),
    ("aks", "/etc/default/kubeletconfig.json", None),
    ("k3s", None, "/var/lib/rancher/k3s/agent/etc/kubelet.conf.d"),
    ("rke2", None, "/var/lib/rancher/rke2/agent/etc/kubelet.conf.d"),
)
DROPIN_SUFFIX = ".conf"
DROPIN_LIMIT = 256  # drop-in files read at most; more is refused, not read
DROPIN_DEFAULTS: dict[str, Any] = {"enforceNodeAllocatable": ["pods"]}
WHERE = (
    "the kubelet's configuration is unknown: point --kubelet-config (and --kubelet-config-dir for drop-ins) at "
    "what the kubelet runs with (the chart: exporter.kubeletConfig.distribution, or .file and .dropinDir)"
)


def read_kubelet_config(
    paths: HostPaths,
    *,
    file: Path | None = None,
    directory: Path | None = None,
    flags: Mapping[str, tuple[str, ...]] | None = None,
    no_file: bool = False,
) -> KubeletConfig:
    """The file, then the drop-ins merged over it, then the kubelet's flags (where its command line was read).
    `file` and `directory` (the kubelet's own `--config` and `--config-dir`, as this agent sees them) replace the
    configured paths; `no_file`: the kubelet runs without `--config`. A missing file is fine where a drop-in
    directory is given (k3s and RKE2 configure the kubelet through drop-ins only); both missing is SourceMissing,
    saying what to set."""
    file = file or paths.kubelet_config
    directory = directory or paths.kubelet_config_dir
    origin: list[str] = []
    fields: dict[str, str] = {}
    if directory is not None and not present(directory):
        raise SourceMissing(SOURCE, f"the drop-in directory {directory} does not exist: {WHERE}")
    document: dict[str, Any] = {}
    if not no_file:
        try:
            document = _load_document(read_bounded(file, source=SOURCE, limit_bytes=LIMIT_BYTES), where=str(file))
            origin.append(str(file))
            fields.update(dict.fromkeys(document, str(file)))
        except SourceMissing:
            if directory is None:
                raise SourceMissing(SOURCE, f"{file} does not exist: {WHERE}") from None
    if directory is not None:
        for path in dropin_files(directory):
            dropin = _load_document(read_bounded(path, source=SOURCE, limit_bytes=LIMIT_BYTES), where=str(path))
            document = merge_patch(document, {**DROPIN_DEFAULTS, **dropin})
            origin.append(str(path))
            fields.update(dict.fromkeys(dropin, str(path)))
    if flags is not None:
        document, from_flags = apply_flags(document, flags)
        fields.update(from_flags)
        if from_flags:
            origin.append("flags")
    return _config(document, origin=tuple(origin), fields=fields)


def from_configz(document: Mapping[str, Any]) -> KubeletConfig:
    """The `kubeletconfig` object the kubelet's `/configz` serves: its effective configuration (file, drop-ins
    and flags merged, defaults applied), in v1beta1 field names."""
    return _config(document, origin=("/configz",), fields=dict.fromkeys(document, "/configz"))


# The kubelet's flags (v1.36) that set a field the agent reads: flag -> (KubeletConfiguration field, flag type).
FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "cpu-manager-policy": ("cpuManagerPolicy", "string"),
    "cpu-manager-policy-options": ("cpuManagerPolicyOptions", "map"),
    "reserved-cpus": ("reservedSystemCPUs", "string"),
    "memory-manager-policy": ("memoryManagerPolicy", "string"),
    "reserved-memory": ("reservedMemory", "reserved-memory"),
    "topology-manager-policy": ("topologyManagerPolicy", "string"),
    "topology-manager-scope": ("topologyManagerScope", "string"),
    "topology-manager-policy-options": ("topologyManagerPolicyOptions", "map"),
    "kube-reserved": ("kubeReserved", "map"),
    "system-reserved": ("systemReserved", "map"),
    "eviction-hard": ("evictionHard", "eviction"),
    "feature-gates": ("featureGates", "feature-gates"),
    "cgroup-driver": ("cgroupDriver", "string"),
    "cgroup-root": ("cgroupRoot", "string"),
    "enforce-node-allocatable": ("enforceNodeAllocatable", "list"),
    "system-reserved-cgroup": ("systemReservedCgroup", "string"),
    "kube-reserved-cgroup": ("kubeReservedCgroup", "string"),
}


def apply_flags(
    document: Mapping[str, Any], flags: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The configuration with the kubelet's flags applied over it, and field -> the flag that set it."""
    merged = dict(document)
    origins: dict[str, str] = {}
    for flag, (name, kind) in FLAG_FIELDS.items():
        values = flags.get(flag)
        if not values:
            continue
        if kind == "string":
            merged[name] = values[-1]
        elif kind == "list":
            merged[name] = [item.strip() for item in values[-1].split(",") if item.strip()]
        elif kind == "map":
            merged[name] = _flag_map(flag, values, "=")
        elif kind == "eviction":
            merged[name] = _flag_map(flag, values, "<")
        elif kind == "feature-gates":
            gates = dict(merged.get(name) or {})
            for key, value in _flag_map(flag, values, "=").items():
                if value.lower() not in ("true", "false"):
                    raise SourceParseError(SOURCE, f"--{flag}: {key}={value} is not true or false")
                gates[key] = value.lower() == "true"
            merged[name] = gates
        else:
            merged[name] = _flag_reserved_memory(values)
        origins[name] = f"flag --{flag}"
    return merged, origins


def _flag_map(flag: str, values: tuple[str, ...], separator: str) -> dict[str, str]:
    """A map flag (`k=v,k2=v2`; `--eviction-hard` `signal<value`): repeated flags add to one map."""
    found: dict[str, str] = {}
    for value in values:
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                continue
            key, sep, text = item.partition(separator)
            if not sep or not key.strip():
                raise SourceParseError(SOURCE, f"--{flag}: {item!r} is not KEY{separator}VALUE")
            found[key.strip()] = text.strip()
    return found


def _flag_reserved_memory(values: tuple[str, ...]) -> list[dict[str, Any]]:
    """`--reserved-memory 0:memory=1Gi,hugepages-1M=2Gi` (repeated, or `;`-separated): K pkg/util/flag
    ReservedMemoryVar."""
    entries: list[dict[str, Any]] = []
    for value in values:
        for raw in value.split(";"):
            part = raw.strip()
            if not part:
                continue
            node, sep, limits = part.partition(":")
            if not sep or not node.strip().isdigit():
                raise SourceParseError(SOURCE, f"--reserved-memory: {part!r} is not NUMA:RESOURCE=QUANTITY[,...]")
            entries.append({"numaNode": int(node), "limits": _flag_map("reserved-memory", (limits,), "=")})
    return entries


def dropin_files(directory: Path) -> list[Path]:
    """Every `*.conf` file under `directory` in Go's filepath.WalkDir order (each directory's entries sorted by
    name, a subdirectory walked where it sorts)."""
    found: list[Path] = []

    def walk(path: Path) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda entry: entry.name)
        except OSError as exc:
            raise SourceReadError(SOURCE, f"cannot list {path}: {exc.strerror}") from None
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path))
            elif entry.name.endswith(DROPIN_SUFFIX) and entry.name != DROPIN_SUFFIX:
                found.append(Path(entry.path))
                if len(found) > DROPIN_LIMIT:
                    raise SourceTooLarge(SOURCE, f"{directory} holds over {DROPIN_LIMIT} drop-in files")

    walk(directory)
    return found


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as github.com/evanphx/json-patch's MergePatch applies it."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


CGROUP_DRIVERS = ("cgroupfs", "systemd")


def parse_kubelet_config(raw: bytes) -> KubeletConfig:
    return _config(_load_document(raw), origin=())


def _load_document(raw: bytes, *, where: str = "") -> dict[str, Any]:
    at = f"{where}: " if where else ""
    try:
        document = yaml.load(raw.decode("utf-8"), Loader=_SafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SourceParseError(SOURCE, f"{at}not valid YAML ({_first_line(exc)})") from None
    except RecursionError:
        raise SourceParseError(SOURCE, f"{at}YAML nested too deeply") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise SourceParseError(SOURCE, f"{at}expected a YAML mapping")
    kind = document.get("kind", KIND)
    if kind != KIND:
        raise SourceFormatError(SOURCE, f"{at}kind is {kind!r}, expected {KIND}")
    api_version = document.get("apiVersion", API_VERSION)
    if api_version != API_VERSION:
        raise SourceFormatError(SOURCE, f"{at}apiVersion is {api_version!r}, expected {API_VERSION}")
    return document


def _config(
    document: Mapping[str, Any], *, origin: tuple[str, ...], fields: Mapping[str, str] | None = None
) -> KubeletConfig:
    cpu_policy = _choice(document, "cpuManagerPolicy", "none", CPU_POLICIES)
    memory_policy = _choice(document, "memoryManagerPolicy", "None", MEMORY_POLICIES)
    topology_policy = _choice(document, "topologyManagerPolicy", "none", TOPOLOGY_POLICIES)
    scope = _choice(document, "topologyManagerScope", "container", TOPOLOGY_SCOPES)
    reserved_text = _string(document.get("reservedSystemCPUs"), "reservedSystemCPUs")
    try:
        reserved = parse_cpuset(reserved_text)  # no spaces: the kubelet's cpuset.Parse refuses "0, 8"
    except ValueError as exc:
        raise SourceParseError(SOURCE, f"reservedSystemCPUs: {exc}") from None
    return KubeletConfig(
        cpu_manager_policy=cpu_policy,
        cpu_manager_policy_options=_string_map(document, "cpuManagerPolicyOptions"),
        memory_manager_policy=memory_policy,
        topology_manager_policy=topology_policy,
        topology_manager_scope=scope,
        topology_manager_policy_options=_string_map(document, "topologyManagerPolicyOptions"),
        reserved_system_cpus=reserved,
        reserved_memory=_reserved_memory(document.get("reservedMemory")),
        system_reserved=_string_map(document, "systemReserved"),
        kube_reserved=_string_map(document, "kubeReserved"),
        eviction_hard=_string_map(document, "evictionHard") if document.get("evictionHard") is not None else None,
        feature_gates=_feature_gates(document.get("featureGates")),
        cgroup_driver=_choice(document, "cgroupDriver", "cgroupfs", CGROUP_DRIVERS),
        cgroup_root=_string(document.get("cgroupRoot"), "cgroupRoot") or "/",
        enforce_node_allocatable=_string_list(document, "enforceNodeAllocatable", default=("pods",)),
        system_reserved_cgroup=_string(document.get("systemReservedCgroup"), "systemReservedCgroup"),
        kube_reserved_cgroup=_string(document.get("kubeReservedCgroup"), "kubeReservedCgroup"),
        unknown_fields=tuple(sorted(str(key) for key in document if key not in FIELDS)),
        known=True,
        origin=origin,
        field_origins={name: where for name, where in sorted((fields or {}).items()) if name in NUMA_FIELDS},
    )


# The fields whose origin `snapshot --format json` and doctor show: those the published attributes and the
# accounting come from.
NUMA_FIELDS = frozenset({flag_field for flag_field, _ in FLAG_FIELDS.values()})


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int):
        raise SourceParseError(SOURCE, f"{what} must be a string")
    return str(value)


def _choice(document: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    """Case matters: the kubelet refuses `Static` for the CPU manager and `static` for the memory manager."""
    value = _string(document.get(key), key) or default
    if value in allowed:
        return value
    raise SourceFormatError(SOURCE, f"{key} {value!r} is not one of {', '.join(allowed)}")


def _string_map(document: Mapping[str, Any], key: str) -> dict[str, str]:
    value = document.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SourceParseError(SOURCE, f"{key} must be a mapping")
    return {str(name): str(item).lower() if isinstance(item, bool) else str(item) for name, item in value.items()}


def _string_list(document: Mapping[str, Any], key: str, *, default: tuple[str, ...]) -> tuple[str, ...]:
    value = document.get(key)
    if value is None:  # unset or null: the v1beta1 default
        return default
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SourceParseError(SOURCE, f"{key} must be a list of strings")
    return tuple(value)


def _feature_gates(value: Any) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(enabled, bool) for enabled in value.values()):
        raise SourceParseError(SOURCE, "featureGates must map gate names to true or false")
    return {str(name): enabled for name, enabled in value.items()}


def _reserved_memory(value: Any) -> dict[int, dict[str, int]]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise SourceParseError(SOURCE, "reservedMemory must be a list")
    reserved: dict[int, dict[str, int]] = {}
    for item in value:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("numaNode"), int)
            or isinstance(item["numaNode"], bool)
        ):
            raise SourceParseError(SOURCE, "reservedMemory entries need an integer numaNode")
        limits = item.get("limits") or {}
        if not isinstance(limits, dict):
            raise SourceParseError(SOURCE, "reservedMemory limits must be a mapping")
        per_numa = reserved.setdefault(item["numaNode"], {})
        for resource, quantity in limits.items():
            if str(resource) in per_numa:  # K validation_reserved_memory.go
                raise SourceFormatError(
                    SOURCE, f"reservedMemory has a duplicate value for NUMA node {item['numaNode']} and {resource}"
                )
            try:
                per_numa[str(resource)] = quantity_value(quantity)
            except ValueError as exc:
                raise SourceParseError(SOURCE, f"reservedMemory: {exc}") from None
    return reserved

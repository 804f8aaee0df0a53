"""The kubelet's command line: found in procfs, parsed as the kubelet's pflag set parses it, and its flags applied
over the file and drop-ins as the kubelet applies them (held to the real kubelet's /configz in
tests/integration/test_real_kubelet_flags.py). Command lines as the distributions run the kubelet."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.errors import SourceMissing, SourceParseError
from exporter.kubelet.configuration import EffectiveConfigReader, read_effective_config
from exporter.paths import HostPaths
from exporter.sources.kubelet_config import apply_flags, read_kubelet_config
from exporter.sources.kubelet_process import find_kubelet, k3s_kubelet_flags, parse_flags

# systemd expands kubeadm's 10-kubeadm.conf ExecStart ($KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS
# $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS, the last from /etc/default/kubelet) into separate arguments.
KUBEADM = ["/usr/bin/kubelet", "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf", "--kubeconfig=/etc/kubernetes/kubelet.conf", "--config=/var/lib/kubelet/config.yaml", "--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock", "--pod-infra-container-image=registry.k8s.io/pause:3.10", "--topology-manager-policy=single-numa-node", "--reserved-cpus=0,32"]  # fmt: skip
# EKS AL2: bootstrap.sh --kubelet-extra-args '--cpu-manager-policy=static --topology-manager-policy=...'.
EKS_AL2 = ["/usr/bin/kubelet", "--config", "/etc/kubernetes/kubelet/kubelet-config.json", "--kubeconfig", "/var/lib/kubelet/kubeconfig", "--container-runtime-endpoint", "unix:///run/containerd/containerd.sock", "--image-credential-provider-config", "/etc/eks/image-credential-provider/config.json", "--image-credential-provider-bin-dir", "/etc/eks/image-credential-provider", "--node-ip=10.0.1.23", "--v=2", "--hostname-override=ip-10-0-1-23.ec2.internal", "--cloud-provider=external", "--node-labels=eks.amazonaws.com/nodegroup=gpu", "--cpu-manager-policy=static", "--topology-manager-policy=single-numa-node", "--topology-manager-scope", "pod"]  # fmt: skip
EKS_AL2023 = ["/usr/bin/kubelet", "--config=/etc/kubernetes/kubelet/config.json", "--config-dir=/etc/kubernetes/kubelet/config.json.d", "--kubeconfig=/var/lib/kubelet/kubeconfig", "--node-ip=10.0.1.24", "--node-labels=role=gpu", "--topology-manager-policy=best-effort"]  # fmt: skip
# RKE2 starts the kubelet binary with its own flags and each --kubelet-arg.
RKE2 = ["/var/lib/rancher/rke2/data/v1.33.5-rke2r1-abcdef/bin/kubelet", "--volume-plugin-dir=/var/lib/kubelet/volumeplugins", "--file-check-frequency=5s", "--sync-frequency=30s", "--address=0.0.0.0", "--anonymous-auth=false", "--config-dir=/var/lib/rancher/rke2/agent/etc/kubelet.conf.d", "--kubeconfig=/var/lib/rancher/rke2/agent/kubelet.kubeconfig", "--cpu-manager-policy=static", "--reserved-cpus=0-1"]  # fmt: skip
K3S = ["/usr/local/bin/k3s", "server", "--kubelet-arg=cpu-manager-policy=static", "--kubelet-arg", "reserved-cpus=0-1", "--kubelet-arg=topology-manager-policy=single-numa-node", "--disable=traefik"]  # fmt: skip
GKE = ["/home/kubernetes/bin/kubelet", "--v=2", "--cloud-provider=external", "--experimental-mounter-path=/home/kubernetes/containerized_mounter/mounter", "--cert-dir=/var/lib/kubelet/pki/", "--kubeconfig=/var/lib/kubelet/kubeconfig", "--max-pods=110", "--volume-plugin-dir=/home/kubernetes/flexvolume", "--node-status-max-images=25", "--container-runtime-endpoint=unix:///run/containerd/containerd.sock", "--runtime-cgroups=/system.slice/containerd.service", "--registry-qps=10", "--registry-burst=20", "--config", "/home/kubernetes/kubelet-config.yaml"]  # fmt: skip
# OpenShift's unit: --system-reserved from /etc/node-sizing.env, the config off the kubeadm path.
OPENSHIFT = ["kubelet", "--config=/etc/kubernetes/kubelet.conf", "--bootstrap-kubeconfig=/etc/kubernetes/kubeconfig", "--kubeconfig=/var/lib/kubelet/kubeconfig", "--container-runtime-endpoint=/var/run/crio/crio.sock", "--node-labels=node-role.kubernetes.io/worker,node.openshift.io/os_id=rhcos", "--cloud-provider=", "--hostname-override=", "--system-reserved=cpu=500m,memory=1Gi,ephemeral-storage=1Gi", "--v=2"]  # fmt: skip


def test_distribution_command_lines() -> None:
    kubeadm = parse_flags(KUBEADM[1:])
    assert kubeadm["config"] == ("/var/lib/kubelet/config.yaml",)
    assert kubeadm["topology-manager-policy"] == ("single-numa-node",)
    eks = parse_flags(EKS_AL2[1:])
    assert eks["config"] == ("/etc/kubernetes/kubelet/kubelet-config.json",), "--flag value"
    assert eks["topology-manager-scope"] == ("pod",)
    assert eks["cpu-manager-policy"] == ("static",)
    assert parse_flags(EKS_AL2023[1:])["config-dir"] == ("/etc/kubernetes/kubelet/config.json.d",)
    rke2 = parse_flags(RKE2[1:])
    assert (rke2["config-dir"], rke2["reserved-cpus"]) == (("/var/lib/rancher/rke2/agent/etc/kubelet.conf.d",), ("0-1",))
    assert parse_flags(GKE[1:])["config"] == ("/home/kubernetes/kubelet-config.yaml",)
    openshift = parse_flags(OPENSHIFT[1:])
    assert openshift["system-reserved"] == ("cpu=500m,memory=1Gi,ephemeral-storage=1Gi",)
    assert openshift["cloud-provider"] == ("",), "an empty value is a value"
    assert k3s_kubelet_flags(K3S[2:]) == {
        "cpu-manager-policy": ("static",), "reserved-cpus": ("0-1",), "topology-manager-policy": ("single-numa-node",),
    }  # fmt: skip


def test_pflag_forms() -> None:
    flags = parse_flags(["--fail-swap-on", "--cpu-manager-policy", "static", "-v=4", "--reserved-memory",
                         "0:memory=1Gi", "--reserved-memory=1:memory=2Gi", "stray", "--", "--topology-manager-policy=x"])  # fmt: skip
    assert flags["fail-swap-on"] == ("true",), "a boolean without a value takes none from the next argument"
    assert flags["cpu-manager-policy"] == ("static",)
    assert flags["v"] == ("4",), "single-dash long flags, as Go's flag package allows"
    assert flags["reserved-memory"] == ("0:memory=1Gi", "1:memory=2Gi"), "repeated, in order"
    assert "topology-manager-policy" not in flags, "nothing after --"


def test_flags_override_as_the_kubelet_applies_them() -> None:
    document = {
        "topologyManagerPolicy": "none", "kubeReserved": {"cpu": "1", "memory": "2Gi"},
        "featureGates": {"A": True, "B": False}, "reservedMemory": [{"numaNode": 0, "limits": {"memory": "3Gi"}}],
    }  # fmt: skip
    flags = {
        "topology-manager-policy": ("restricted", "single-numa-node"),  # the last wins
        "kube-reserved": ("memory=1Gi",),  # replaces the file's map
        "system-reserved": ("cpu=500m", "memory=1Gi"),  # repeated: one map
        "feature-gates": ("B=true,C=false",),  # over the file's gates
        "reserved-memory": ("0:memory=1Gi;1:memory=2Gi,hugepages-1Gi=2Gi",),
        "eviction-hard": ("memory.available<100Mi,nodefs.available<10%",),
        "enforce-node-allocatable": ("pods,system-reserved",),
        "max-pods": ("58",),  # not a field the agent reads
    }
    merged, origins = apply_flags(document, flags)
    assert merged["topologyManagerPolicy"] == "single-numa-node"
    assert merged["kubeReserved"] == {"memory": "1Gi"}
    assert merged["systemReserved"] == {"cpu": "500m", "memory": "1Gi"}
    assert merged["featureGates"] == {"A": True, "B": True, "C": False}
    assert merged["reservedMemory"] == [{"numaNode": 0, "limits": {"memory": "1Gi"}},
                                        {"numaNode": 1, "limits": {"memory": "2Gi", "hugepages-1Gi": "2Gi"}}]  # fmt: skip
    assert merged["evictionHard"] == {"memory.available": "100Mi", "nodefs.available": "10%"}
    assert merged["enforceNodeAllocatable"] == ["pods", "system-reserved"]
    assert "maxPods" not in merged
    assert origins["topologyManagerPolicy"] == "flag --topology-manager-policy"
    with pytest.raises(SourceParseError, match="reserved-memory"):
        apply_flags({}, {"reserved-memory": ("memory=1Gi",)})
    with pytest.raises(SourceParseError, match="kube-reserved"):
        apply_flags({}, {"kube-reserved": ("cpu",)})


def write_process(procfs: Path, pid: int, argv: list[str], comm: str | None = None) -> None:
    directory = procfs / str(pid)
    directory.mkdir(parents=True)
    (directory / "comm").write_text((comm or Path(argv[0]).name)[:15] + "\n")
    (directory / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_the_kubelet_found_in_procfs(tmp_path: Path) -> None:
    procfs = tmp_path / "proc"
    write_process(procfs, 1, ["/sbin/init"])
    write_process(procfs, 900, ["/usr/bin/containerd"])
    with pytest.raises(SourceMissing, match="no kubelet process visible"):
        find_kubelet(procfs)
    write_process(procfs, 1234, EKS_AL2)
    found = find_kubelet(procfs)
    assert (found.pid, found.last("config"), found.root_dir) == (
        1234, "/etc/kubernetes/kubelet/kubelet-config.json", "/var/lib/kubelet")  # fmt: skip
    write_process(procfs, 2000, [*KUBEADM, "--root-dir=/var/lib/kubelet-b"])
    with pytest.raises(SourceMissing, match="2 kubelet processes"):
        find_kubelet(procfs)
    assert find_kubelet(procfs, host_root_dir="/var/lib/kubelet-b/").pid == 2000, "by its root directory"
    assert find_kubelet(procfs, host_root_dir="/var/lib/kubelet").pid == 1234
    k3s = tmp_path / "k3s"
    write_process(k3s, 77, K3S, comm="k3s-server")
    embedded = find_kubelet(k3s)
    assert embedded.embedded == "k3s"
    assert embedded.last("topology-manager-policy") == "single-numa-node"


def test_the_effective_configuration_names_where_each_field_came_from(tmp_path: Path) -> None:
    """A kubeadm node whose extra args set the policy: the file says none, the flag single-numa-node; the agent
    reads the command line from the host's /proc and the file where the command line says (seen here through
    --host-path-map)."""
    host_kubelet = tmp_path / "host" / "var" / "lib" / "kubelet"
    host_kubelet.mkdir(parents=True)
    (host_kubelet / "config.yaml").write_text(
        "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\ncpuManagerPolicy: static\n"
        "topologyManagerPolicy: none\nreservedSystemCPUs: '0'\n"
    )
    procfs = tmp_path / "proc"
    write_process(procfs, 4321, KUBEADM)
    paths = HostPaths(procfs=procfs, kubelet_dir=host_kubelet, host_path_map=(("/var/lib/kubelet", host_kubelet),))
    config = read_effective_config(paths)
    assert config.topology_manager_policy == "single-numa-node"
    assert config.cpu_manager_policy == "static"
    assert sorted(config.reserved_system_cpus) == [0, 32], "--reserved-cpus over the file's"
    assert config.kubelet_pid == 4321
    assert not config.flags_unchecked
    assert config.field_origins["topologyManagerPolicy"] == "flag --topology-manager-policy"
    assert config.field_origins["cpuManagerPolicy"] == str(host_kubelet / "config.yaml")
    assert config.origin == (str(host_kubelet / "config.yaml"), "flags")

    # The file the command line names is not mounted, and nobody told the agent another: no policy, and
    # the message names the mount.
    openshift = tmp_path / "proc-openshift"
    write_process(openshift, 55, OPENSHIFT)
    unmounted = HostPaths(procfs=openshift, kubelet_dir=host_kubelet, host_path_map=(("/var/lib/kubelet", host_kubelet),))
    with pytest.raises(SourceMissing, match=r"--config /etc/kubernetes/kubelet.conf.*exporter.kubeletConfig.file"):
        read_effective_config(unmounted)

    # No kubelet visible: the file stands, and the flags are said to be unchecked.
    blind = HostPaths(procfs=tmp_path / "empty", kubelet_dir=host_kubelet)
    (tmp_path / "empty").mkdir()
    alone = read_effective_config(blind)
    assert alone.topology_manager_policy == "none"
    assert "flags are unchecked" in alone.flags_unchecked


def test_a_kubelet_without_a_config_file_runs_on_defaults_and_flags(tmp_path: Path) -> None:
    procfs = tmp_path / "proc"
    write_process(procfs, 10, ["/usr/bin/kubelet", "--cpu-manager-policy=static", "--reserved-cpus=0",
                               "--topology-manager-policy=restricted"])  # fmt: skip
    config = read_kubelet_config(HostPaths(procfs=procfs), flags=parse_flags(["--topology-manager-policy=restricted"]),
                                 no_file=True)  # fmt: skip
    assert config.topology_manager_policy == "restricted"
    effective = read_effective_config(HostPaths(procfs=procfs, kubelet_dir=tmp_path / "kubelet"))
    assert (effective.cpu_manager_policy, effective.topology_manager_policy) == ("static", "restricted")
    assert effective.origin == ("flags",)


def test_a_refresh_reads_the_known_kubelet_again_not_every_process(tmp_path: Path) -> None:
    """The reader remembers the kubelet's process: while it runs the same command line, no scan (a second
    kubelet appearing, which a scan would find ambiguous, changes nothing); once it is gone, a scan finds the
    new one (a kubelet restarted with other flags)."""
    procfs = tmp_path / "proc"
    write_process(procfs, 10, ["/usr/bin/kubelet", "--topology-manager-policy=restricted"])
    reader = EffectiveConfigReader(HostPaths(procfs=procfs, kubelet_dir=tmp_path / "kubelet"))
    assert (reader.read().kubelet_pid, reader.read().topology_manager_policy) == (10, "restricted")
    write_process(procfs, 12, ["/usr/bin/kubelet", "--root-dir=/elsewhere"])
    assert reader.read().kubelet_pid == 10, "the known one, without a scan"
    for name in ("comm", "cmdline"):
        (procfs / "10" / name).unlink()
    (procfs / "10").rmdir()
    (procfs / "12" / "cmdline").write_bytes(b"/usr/bin/kubelet\0--topology-manager-policy=best-effort\0")
    restarted = reader.read()
    assert (restarted.kubelet_pid, restarted.topology_manager_policy) == (12, "best-effort")

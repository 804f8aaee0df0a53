"""`doctor` says the kubelet will not start exactly when the kubelet's own code refuses the configuration.

Hypothesis mixes valid and broken settings of the kinds doctor checks (CPU reservations and policy options,
reservedMemory against kube/system-reserved and the hard eviction threshold, Topology Manager options,
feature gates); kubelet-oracle loads each configuration with the kubelet's config loader, validation and
resource-manager constructors. Both must agree on every example.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.accounting import KubeletState
from exporter.doctor import diagnose
from exporter.snapshot import Snapshot, account
from exporter.sources import kubelet_config
from tests.oracle import GIB, MachineSpec, ask, asset

EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", "250")) // 2
MACHINE = MachineSpec(
    cpus=[(i, i // 4, i % 4 + 8 * (i // 8), i // 4) for i in range(8)]
    + [(i + 8, i // 4, i % 4 + 8 * (i // 8), i // 4) for i in range(8)],
    memory={0: 4 * GIB, 1: 4 * GIB},
    hugepages={0: {2 << 20: 8}, 1: {2 << 20: 8}},
)
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _oracle() -> None:
    asset("kubelet-oracle")


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    config: dict[str, Any] = {}
    gates = draw(st.sampled_from([{}, {"CPUManagerPolicyAlphaOptions": True}, {"CPUManagerPolicyBetaOptions": False}]))
    if gates:
        config["featureGates"] = gates
    if draw(st.integers(0, 4)) > 0:
        config["cpuManagerPolicy"] = "static"
    reservation = draw(st.sampled_from(["kube", "kube", "system", "cpus", "offline", "none", "too-many", "fraction"]))
    if reservation == "kube":
        config.setdefault("kubeReserved", {})["cpu"] = draw(st.sampled_from(["1", "2", "500m"]))
    elif reservation == "system":
        config["systemReserved"] = {"cpu": "1"}
    elif reservation == "cpus":
        config["reservedSystemCPUs"] = draw(st.sampled_from(["0", "0,8", "0-1"]))
    elif reservation == "offline":
        config["reservedSystemCPUs"] = "0,40"
    elif reservation == "too-many":
        config.setdefault("kubeReserved", {})["cpu"] = "17"
    elif reservation == "fraction":
        config.setdefault("kubeReserved", {})["cpu"] = "100n"
    options = draw(
        st.dictionaries(
            st.sampled_from(["full-pcpus-only", "distribute-cpus-across-numa", "align-by-socket",
                             "distribute-cpus-across-cores", "strict-cpu-reservation",
                             "prefer-align-cpus-by-uncorecache", "no-such-option"]),
            st.sampled_from(["true", "true", "false", "maybe"]),
            max_size=2,
        )
    )  # fmt: skip
    if options:
        config["cpuManagerPolicyOptions"] = options
    config["topologyManagerPolicy"] = draw(st.sampled_from(["none", "single-numa-node", "restricted", "best-effort"]))
    topology_options = draw(
        st.dictionaries(
            st.sampled_from(["prefer-closest-numa-nodes", "max-allowable-numa-nodes", "no-such-option"]),
            st.sampled_from(["true", "4", "8", "16"]),
            max_size=1,
        )
    )
    if topology_options:
        config["topologyManagerPolicyOptions"] = topology_options
    if draw(st.booleans()):
        config["memoryManagerPolicy"] = "Static"
        kube_memory = draw(st.sampled_from([None, "412Mi", "1Gi"]))
        if kube_memory:
            config.setdefault("kubeReserved", {})["memory"] = kube_memory
        eviction = draw(st.sampled_from([None, {"memory.available": "200Mi"}, {"memory.available": "5%"},
                                         {"nodefs.available": "10%"}]))  # fmt: skip
        if eviction is not None:
            config["evictionHard"] = eviction
        # What the kubelet computes: kube-reserved memory plus the memory.available hard eviction threshold
        # (100Mi when evictionHard is unset; 5% of 8 GiB is 429496736 with the kubelet's float32 percentage).
        threshold = {None: 100 << 20, "200Mi": 200 << 20, "5%": 429496736}[(eviction or {}).get("memory.available")]
        expected = {None: 0, "412Mi": 412 << 20, "1Gi": GIB}[kube_memory] + (
            threshold if eviction is None or "memory.available" in eviction else 0
        )
        shape = draw(st.sampled_from(["right", "right", "split", "off-by-one", "missing", "unknown-numa", "zero",
                                      "hugepages"]))  # fmt: skip
        if shape == "right" and expected:
            config["reservedMemory"] = [{"numaNode": 0, "limits": {"memory": str(expected)}}]
        elif shape == "split" and expected > 2:
            config["reservedMemory"] = [{"numaNode": 0, "limits": {"memory": str(expected - expected // 2)}},
                                        {"numaNode": 1, "limits": {"memory": str(expected // 2)}}]  # fmt: skip
        elif shape == "off-by-one":
            config["reservedMemory"] = [{"numaNode": 0, "limits": {"memory": str(expected + 1)}}]
        elif shape == "unknown-numa":
            config["reservedMemory"] = [{"numaNode": 5, "limits": {"memory": str(expected or 1)}}]
        elif shape == "zero":
            config["reservedMemory"] = [{"numaNode": 0, "limits": {"memory": "0"}}]
        elif shape == "hugepages":
            config["reservedMemory"] = [
                {"numaNode": 0, "limits": {"memory": str(expected or 1), "hugepages-2Mi": "2Mi"}}
            ]
    return config


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=os.environ.get("ORACLE_RANDOM") != "1")  # fmt: skip
@given(configs())
def test_doctor_refuses_exactly_what_the_kubelet_refuses(config: dict[str, Any]) -> None:
    answer = ask(
        {
            "machine": MACHINE.oracle_machine(),
            "kubeletConfig": config,
            "queries": [{"type": "admit_on", "pod": {"requests": {"cpu": "1", "memory": "100Mi"}}}],
        }
    )
    refused = answer.get("error") or answer["results"][0].get("error")
    topology = MACHINE.topology()
    state = KubeletState(config=kubelet_config.parse_kubelet_config(yaml.safe_dump(config).encode()))
    snapshot = Snapshot(
        topology=topology,
        kubelet=state,
        accounting=account(topology, state),
        sources=(),
        errors_total={},
        taken_at=0.0,
        duration_seconds=0.0,
    )
    blocking = [finding.message for finding in diagnose(snapshot) if finding.blocks_start]
    assert bool(blocking) == bool(refused), f"kubelet: {refused!r}; doctor: {blocking!r}"
    COUNTS["refused by both" if refused else "accepted by both"] += 1

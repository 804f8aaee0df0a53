"""The podresources-only mode's records name the policy the API shows (exporter/kubelet/podresources_state.py):
a configuration read that says otherwise is not the kubelet's, as with a state file of another policy. The
records themselves are held to the kubelet's in tests/integration/test_podresources_state_oracle.py and
test_real_podresources_only.py."""

from __future__ import annotations

import pytest

from exporter.kubelet.accounting import KubeletState
from exporter.kubelet.podresources_state import cpu_state, memory_state
from exporter.model import KubeletConfig, PodResourcesReading, ReportedMemory
from exporter.snapshot import config_contradiction
from tests.oracle import MachineSpec

MACHINE = MachineSpec(cpus=[(cpu, 0, cpu, cpu // 4) for cpu in range(8)], memory={0: 4 << 30, 1: 4 << 30})
STATIC = PodResourcesReading(
    pods=(),
    allocatable_cpus=frozenset(range(1, 8)),
    allocatable_devices=(),
    allocatable_memory=tuple(
        ReportedMemory(memory_type="memory", size_bytes=3 << 30, numa_nodes=frozenset({n})) for n in (0, 1)
    ),
)
NONE = PodResourcesReading(pods=(), allocatable_cpus=frozenset(), allocatable_devices=(), allocatable_memory=())


def state(reading: PodResourcesReading, config: KubeletConfig) -> KubeletState:
    topology = MACHINE.topology()
    return KubeletState(
        config=config,
        cpu=cpu_state(reading, topology, config, pods=()),
        memory=memory_state(reading, topology, pods=()),
        podresources=reading,
    )


@pytest.mark.parametrize(
    ("reading", "cpu", "memory", "said"),
    [
        (NONE, "static", "None", "the podresources API shows the none policy"),
        (STATIC, "none", "Static", "the podresources API shows the static policy"),
        (STATIC, "static", "None", "the podresources API shows the Static policy"),
    ],
)
def test_a_config_the_api_contradicts_is_not_the_kubelets(
    reading: PodResourcesReading, cpu: str, memory: str, said: str
) -> None:
    config = KubeletConfig(cpu_manager_policy=cpu, memory_manager_policy=memory, known=True)
    why = config_contradiction(state(reading, config))
    assert why is not None
    assert why.startswith(said), why


@pytest.mark.parametrize(("reading", "cpu", "memory"), [(NONE, "none", "None"), (STATIC, "static", "Static")])
def test_the_config_the_api_agrees_with_stands(reading: PodResourcesReading, cpu: str, memory: str) -> None:
    config = KubeletConfig(cpu_manager_policy=cpu, memory_manager_policy=memory, known=True)
    assert config_contradiction(state(reading, config)) is None

"""`doctor` says the kubelet will not start exactly when the kubelet's own code refuses the configuration.

Hypothesis mixes valid and broken settings of the kinds doctor checks (CPU reservations and policy options,
reservedMemory against kube/system-reserved and the hard eviction threshold, Topology Manager options,
feature gates); kubelet-oracle loads each configuration with the kubelet's config loader, validation and
resource-manager constructors. Both must agree on every example.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.errors import SourceError
from exporter.kubelet.accounting import KubeletState
from exporter.model import KubeletConfig, SourceStatus
from exporter.snapshot import Snapshot, account
from exporter.sources import cpu_manager, kubelet_config, memory_manager
from exporter.views.doctor import diagnose
from tests.kubelet_files import memory_state
from tests.oracle import GIB, MachineSpec, ask, asset, refusal

EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", "250")) // 2
MACHINE = MachineSpec(
    cpus=[(i, i // 4, i % 4 + 8 * (i // 8), i // 4) for i in range(8)]
    + [(i + 8, i // 4, i % 4 + 8 * (i // 8), i // 4) for i in range(8)],
    memory={0: 4 * GIB, 1: 4 * GIB},
    hugepages={0: {2 << 20: 8}, 1: {2 << 20: 8}},
)
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _oracle() -> Iterator[None]:
    asset("kubelet-oracle")
    yield
    if COUNTS:  # the property test ran: it compared enough of each, and mostly by cause, not by yes and no
        assert COUNTS["refused by both"] >= EXAMPLES // 10, COUNTS
        assert COUNTS["accepted by both"] >= EXAMPLES // 10, COUNTS
        assert COUNTS["refused by both, for the same cause"] >= 0.8 * COUNTS["refused by both"], COUNTS


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
    # Settings of config validation (rarely, so that the resource-manager checks above still get exercised).
    if draw(st.integers(0, 5)) == 0:
        enforced = draw(st.lists(st.sampled_from(["pods", "system-reserved", "kube-reserved-compressible", "none"]),
                                 min_size=0, max_size=2, unique=True))  # fmt: skip
        config["enforceNodeAllocatable"] = enforced
        for key in draw(st.lists(st.sampled_from(["systemReservedCgroup", "kubeReservedCgroup"]), unique=True)):
            config[key] = "/reserved.slice"
    if draw(st.integers(0, 5)) == 0:
        signal = draw(st.sampled_from(["nodefs.available", "imagefs.inodesFree", "pid.available", "memory.free"]))
        config.setdefault("evictionHard", {})[signal] = draw(st.sampled_from(["10%", "0%", "100%", "101%", "0", "5Gi"]))
    if draw(st.integers(0, 5)) == 0:
        gate = draw(st.sampled_from(["TopologyManagerPolicyOptions", "KubeletPodResourcesGet", "MemoryManager",
                                     "PodLevelResources", "DRAConsumableCapacity"]))  # fmt: skip
        config.setdefault("featureGates", {})[gate] = draw(st.booleans())
    if draw(st.integers(0, 5)) == 0:
        config.setdefault("systemReserved", {})[
            draw(st.sampled_from(["pid", "ephemeral-storage", "example.com/gpu"]))
        ] = draw(st.sampled_from(["1", "-1", "1Gi"]))
    return config


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=os.environ.get("ORACLE_RANDOM") != "1")  # fmt: skip
@given(configs())
def test_doctor_refuses_exactly_what_the_kubelet_refuses(config: dict[str, Any]) -> None:
    refused = _kubelet_refuses(config)
    blocking = [finding.message for finding in diagnose(_snapshot(config)) if finding.blocks_start]
    assert bool(blocking) == bool(refused), f"kubelet: {refused!r}; doctor: {blocking!r}"
    COUNTS["refused by both" if refused else "accepted by both"] += 1
    if refused:
        # Not only yes and no: the kubelet stops at the first error it meets, and doctor must name that one
        # among the errors it lists.
        words = cause(str(refused))
        if words is not None:
            assert any(all(w.lower() in m.lower() for w in words) for m in blocking), (
                f"the kubelet refuses for {refused!r} ({words}); doctor says {blocking!r}"
            )
            COUNTS["refused by both, for the same cause"] += 1


# The kubelet's refusal (its own error text) -> words doctor's finding of the same cause contains.
CAUSES: tuple[tuple[str, str], ...] = (
    (r'cannot set feature gate (\w+)', "feature gate {0}"),
    (r'reserved-cpus: (\S+) is not a subset', "reservedSystemCPUs {0}"),
    (r'unable to reserve the required amount of CPUs', "reserved CPUs"),
    (r'unable to determine reserved CPU resources', "CPU reservation"),
    (r'(?:Alpha|Beta)-level Options not enabled, but option "([^"]+)"', "cpuManagerPolicyOptions {0}"),
    (r'unknown CPU Manager Policy option: "([^"]+)"', "cpuManagerPolicyOptions|{0}"),
    (r'unknown Topology Manager Policy option: "([^"]+)"', "topologyManagerPolicyOptions|{0}"),
    (r'--(system|kube)-reserved value failed to parse: resource quantity for "([^"]+)"', "{0}Reserved {1}"),
    (r'eviction percentage threshold (\S+) must', "evictionHard {0}"),
    (r'eviction threshold (\S+) must be positive', "evictionHard {0}|positive"),
    (r'unsupported eviction signal (\S+)', "evictionHard|unsupported eviction signal '{0}'"),
    (r'memory manager: the total amount', "reservedMemory"),
    (r'reserved memory may not be zero for NUMA node (\d+) and resource "([^"]+)"',
     "reservedMemory for NUMA node {0} and {1} may not be zero"),
    (r'bad value for option "([^"]+)": strconv.ParseBool', "{0}|is not a boolean"),
    (r'unable to convert policy option to integer "([^"]+)"', "topologyManagerPolicyOptions {0}"),
    (r'minimum value of "([^"]+)" should not be less than (\d+)', "topologyManagerPolicyOptions {0}|at least {1}"),
    (r'None policy: received unsupported options', "the none policy takes no options"),
    (r'--(system|kube)-reserved value failed to parse: cannot reserve "([^"]+)" resource', "{0}Reserved|{1}"),
    (r'(\w+)Cgroup \(--[\w-]+\) must be specified when "([^"]+)"', "enforceNodeAllocatable {1}|{0}Cgroup"),
    (r'may not contain additional enforcements when "none"', "enforceNodeAllocatable|none"),
    (r'error: (\w+) is enabled, but depends on features that are disabled: \[(\w+)', "feature gate {1}|{0}"),
)


def cause(refusal: str) -> list[str] | None:
    for pattern, words in CAUSES:
        if (m := re.search(pattern, refusal)) is not None:
            return words.format(*m.groups()).split("|")
    return None


def _snapshot(config: dict[str, Any], state_files: dict[str, Any] | None = None) -> Snapshot:
    """What doctor sees on MACHINE with this configuration (and state files), the way the builder makes it:
    a configuration the parser refuses leaves the defaults and a kubelet_config status saying why."""
    sources: tuple[SourceStatus, ...] = ()
    try:
        parsed = kubelet_config.parse_kubelet_config(yaml.safe_dump(config).encode())
    except SourceError as exc:
        parsed = KubeletConfig()
        sources = (SourceStatus(source="kubelet_config", up=False, reason=exc.reason, message=exc.message),)
    files = state_files or {}
    state = KubeletState(
        config=parsed,
        cpu=cpu_manager.parse_cpu_manager_state(json.dumps(files["cpu_manager_state"]).encode())
        if "cpu_manager_state" in files
        else None,
        memory=memory_manager.parse_memory_manager_state(json.dumps(files["memory_manager_state"]).encode())
        if "memory_manager_state" in files
        else None,
    )
    topology = MACHINE.topology()
    return Snapshot(topology=topology, kubelet=state, accounting=account(topology, state), sources=sources,
                    errors_total={}, taken_at=0.0, duration_seconds=0.0)  # fmt: skip


def _kubelet_refuses(config: dict[str, Any], state_files: dict[str, Any] | None = None) -> str | None:
    request: dict[str, Any] = {
        "machine": MACHINE.oracle_machine(),
        "kubeletConfig": config,
        "queries": [{"type": "admit_on", "pod": {"requests": {"cpu": "1", "memory": "100Mi"}}}],
    }
    if state_files:
        request["state"] = state_files
    return refusal(request)


STATIC = {"cpuManagerPolicy": "static", "kubeReserved": {"cpu": "1"}}
# (configuration, the kubelet refuses it, what doctor must say). The first column is asserted against the
# oracle too: each case records what the kubelet v1.36.2 decides.
LINT_CASES: dict[str, tuple[dict[str, Any], bool, str | None]] = {
    "memory policy spelled static": ({**STATIC, "memoryManagerPolicy": "static"}, True, "memoryManagerPolicy 'static'"),
    "cpu policy spelled Static": ({"cpuManagerPolicy": "Static"}, True, "cpuManagerPolicy 'Static'"),
    "a space in reservedSystemCPUs": ({**STATIC, "reservedSystemCPUs": "0, 8"}, True, "reservedSystemCPUs"),
    "a wrong apiVersion": ({**STATIC, "apiVersion": "kubelet.config.k8s.io/v1"}, True, "apiVersion"),
    "a misspelled field": ({**STATIC, "cpuManagerPolicyOption": {"full-pcpus-only": "true"}}, False,
                           "did you mean 'cpuManagerPolicyOptions'?"),
    "a removed feature gate": ({**STATIC, "featureGates": {"MemoryManager": True}}, False,
                               "MemoryManager no longer exists"),
    "a locked feature gate turned off": ({**STATIC, "featureGates": {"CPUManagerPolicyOptions": False}}, True,
                                         "locked to true"),
    "a gate whose dependent is on": ({**STATIC, "featureGates": {"PodLevelResources": False}}, True,
                                     "InPlacePodLevelResourcesVerticalScaling"),
    "the gate and its dependent off": (
        {**STATIC, "featureGates": {"PodLevelResources": False, "InPlacePodLevelResourcesVerticalScaling": False}},
        False, None),
    "reservedSystemCPUs with a reserved cgroup": (
        {**STATIC, "reservedSystemCPUs": "0", "systemReservedCgroup": "/system.slice"}, True, "systemReservedCgroup"),
    "system-reserved enforced without its cgroup": (
        {**STATIC, "enforceNodeAllocatable": ["pods", "system-reserved"]}, True, "needs systemReservedCgroup"),
    "kube-reserved enforced with its cgroup": (
        {**STATIC, "enforceNodeAllocatable": ["pods", "kube-reserved"], "kubeReservedCgroup": "/kube"}, False,
        None),
    "none and pods enforced": ({**STATIC, "enforceNodeAllocatable": ["none", "pods"]}, True, '"none"'),
    "an unknown enforcement": ({**STATIC, "enforceNodeAllocatable": ["pod"]}, True, "'pod' is not one of"),
    "a GPU in kubeReserved": ({**STATIC, "kubeReserved": {"cpu": "1", "nvidia.com/gpu": "1"}}, True,
                              "cannot reserve 'nvidia.com/gpu'"),
    "hugepages in systemReserved": ({**STATIC, "systemReserved": {"hugepages-2Mi": "2Mi"}}, True, "cannot reserve"),
    "a negative kubeReserved": ({**STATIC, "kubeReserved": {"cpu": "1", "memory": "-1"}}, True, "negative"),
    "pid and ephemeral-storage reserved": (
        {**STATIC, "systemReserved": {"pid": "1000", "ephemeral-storage": "1Gi"}}, False, None),
    "a zero eviction threshold": ({**STATIC, "evictionHard": {"memory.available": "0"}}, True, "must be positive"),
    "an eviction threshold over 100%": ({**STATIC, "evictionHard": {"nodefs.available": "120%"}}, True, "100%"),
    "an unknown eviction signal": ({**STATIC, "evictionHard": {"memory.free": "1Gi"}}, True, "'memory.free'"),
    "0% is no threshold": ({**STATIC, "evictionHard": {"memory.available": "0%"}}, False, None),
    "a CPU limit in reservedMemory": (
        {**STATIC, "reservedMemory": [{"numaNode": 0, "limits": {"cpu": "1"}}]}, True, "'cpu' is neither"),
    "a duplicate reservedMemory entry": (
        {**STATIC, "memoryManagerPolicy": "Static",
         "reservedMemory": [{"numaNode": 0, "limits": {"memory": "50Mi"}}, {"numaNode": 0, "limits": {"memory": "50Mi"}}]},
        True, "duplicate"),
    "100% memory eviction is none": (
        {**STATIC, "memoryManagerPolicy": "Static", "evictionHard": {"memory.available": "100%"},
         "reservedMemory": [{"numaNode": 0, "limits": {"memory": "1"}}]},
        True, "adds up to 1 bytes"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(LINT_CASES))
def test_doctor_lints_the_configuration_as_the_kubelet_loads_it(name: str) -> None:
    config, refused, said = LINT_CASES[name]
    kubelet = _kubelet_refuses(config)
    assert bool(kubelet) == refused, f"the case's record is wrong: the kubelet says {kubelet!r}"
    findings = diagnose(_snapshot(config))
    assert any(f.blocks_start for f in findings) == refused, [f.line() for f in findings]
    if said is None:  # accepted, and nothing doctor calls an error
        assert not [f for f in findings if f.severity == "error"], [f.line() for f in findings]
    else:
        assert any(said in f.message for f in findings), [f.line() for f in findings]


def _state_after_one_pod(config: dict[str, Any]) -> dict[str, Any]:
    """The state files the kubelet writes with `config` once it admits one {cpu: 2, memory: 1Gi} pod."""
    answer = ask({
        "machine": MACHINE.oracle_machine(),
        "kubeletConfig": config,
        "queries": [{"type": "fit", "pod": {"requests": {"cpu": "2", "memory": "1Gi"}}, "maxPods": 1}],
    })  # fmt: skip
    assert answer["results"][0]["count"] == 1, answer
    files: dict[str, Any] = answer["results"][0]["finalState"]
    return files


RUNNING = {"cpuManagerPolicy": "static", "reservedSystemCPUs": "0", "memoryManagerPolicy": "Static",
           "kubeReserved": {"memory": "412Mi"}, "reservedMemory": [{"numaNode": 0, "limits": {"memory": "512Mi"}}],
           "topologyManagerPolicy": "single-numa-node"}  # fmt: skip
# A configuration rolled out to a node already running a pod under RUNNING: (new settings, refused, doctor says).
ROLLOUT_CASES: dict[str, tuple[dict[str, Any], bool, str | None]] = {
    "unchanged": ({}, False, None),
    "more reserved CPUs, one of them pinned": ({"reservedSystemCPUs": "0-1"}, True, "are not in cpu_manager_state"),
    "reserved CPUs moved to free ones": ({"reservedSystemCPUs": "8"}, False, None),
    "the CPU manager turned off": ({"cpuManagerPolicy": "none", "reservedSystemCPUs": ""}, True,
                                   "written by policy 'static'"),
    "the memory manager turned off": ({"memoryManagerPolicy": "None", "reservedMemory": []}, True,
                                      "written by policy 'Static'"),
    "reservedMemory split over both NUMA nodes": (
        {"reservedMemory": [{"numaNode": 0, "limits": {"memory": "256Mi"}}, {"numaNode": 1, "limits": {"memory": "256Mi"}}]},
        True, "but reservedMemory says"),
    "strict reservation added": ({"cpuManagerPolicyOptions": {"strict-cpu-reservation": "true"}}, True,
                                 "strictly reserved CPUs"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ROLLOUT_CASES))
def test_doctor_checks_a_rollout_against_the_state_files_as_the_kubelet_does(name: str) -> None:
    """Changing reservations or policies on a node with pods: the kubelet refuses to start on the old state
    files (validateState, the checkpoints' policy names); doctor, given those files, says so."""
    state = _state_after_one_pod(RUNNING)
    changes, refused, said = ROLLOUT_CASES[name]
    config = {**RUNNING, **changes}
    config = {key: value for key, value in config.items() if value not in ("", [])}
    kubelet = _kubelet_refuses(config, state)
    assert bool(kubelet) == refused, f"the case's record is wrong: the kubelet says {kubelet!r}"
    findings = diagnose(_snapshot(config, state))
    assert any(f.blocks_start for f in findings) == refused, [f.line() for f in findings]
    if said is None:  # accepted, and nothing doctor calls an error
        assert not [f for f in findings if f.severity == "error"], [f.line() for f in findings]
    else:
        assert any(said in f.message for f in findings), [f.line() for f in findings]


def test_a_changed_reservation_is_refused_on_a_memory_state_with_no_pods() -> None:
    """The memory manager compares the whole machine state in its file, not only what pods hold: a node
    whose pods are gone still refuses a new reservedMemory until the file is removed."""
    state = _state_after_one_pod(RUNNING)
    memory = state["memory_manager_state"]
    memory["entries"] = {}
    node = memory["machineState"]["0"]
    node["numberOfAssignments"] = 0
    table = node["memoryMap"]["memory"]
    table["free"], table["reserved"] = table["allocatable"], 0
    empty = {"memory_manager_state": json.loads(memory_state(memory))}
    assert _kubelet_refuses(RUNNING, empty) is None
    assert not any(f.blocks_start for f in diagnose(_snapshot(RUNNING, empty)))
    moved = {**RUNNING, "reservedMemory": [{"numaNode": 0, "limits": {"memory": "256Mi"}},
                                           {"numaNode": 1, "limits": {"memory": "256Mi"}}]}  # fmt: skip
    assert _kubelet_refuses(moved, empty)
    findings = diagnose(_snapshot(moved, empty))
    assert [f.message for f in findings if f.blocks_start] == [
        "memory_manager_state reserves 536870912 bytes of memory on NUMA node 0 but reservedMemory says 268435456: "
        "drain the node and remove the state file, or keep the old setting: the kubelet will not start"
    ]

"""The pod-set fingerprint `pfp0v001` (k8stopologyawareschedwg/podfingerprint), computed exactly.

Per pod: XXH64(name, seed = XXH64(namespace, seed 0)). The set: those values sorted ascending (duplicates
kept), each fed as 8 little-endian bytes into one XXH64 stream with seed 0; the result is "pfp0" + "v001" +
the big-endian hex digest. The NodeResourceTopologyMatch scheduler plugin compares it with its own view
to tell whether our object reflects the pods it has placed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import xxhash

PREFIX = "pfp0"
VERSION = "v001"
ANNOTATION = "topology.node.k8s.io/fingerprint"
ATTRIBUTE = "nodeTopologyPodsFingerprint"
ATTRIBUTE_METHOD = "nodeTopologyPodsFingerprintMethod"
METHOD_ALL = "all"
METHOD_WITH_EXCLUSIVE_RESOURCES = "with-exclusive-resources"
# No fingerprint at all: how exporters without one publish (the consumer's cache then never resyncs a node
# it reserved on; bench/admission.py emulates resource-topology-exporter's defaults with it).
METHOD_NONE = "none"
METHODS = (METHOD_WITH_EXCLUSIVE_RESOURCES, METHOD_ALL, METHOD_NONE)
# The consumer's pod informer (scheduler-plugins `cache.informerMode`): which bound pods its fingerprint
# counts. `Shared` counts pods in phase Running; `Dedicated`, its default, every bound pod not Pending, so
# pods that finished or that the kubelet rejected (Succeeded, Failed) too, until they are deleted.
INFORMER_DEDICATED = "Dedicated"
INFORMER_SHARED = "Shared"
INFORMER_MODES = (INFORMER_DEDICATED, INFORMER_SHARED)
_UINT64 = struct.Struct("<Q")


def pod_hash(namespace: str, name: str) -> int:
    return int(xxhash.xxh64_intdigest(name.encode(), seed=xxhash.xxh64_intdigest(namespace.encode())))


def fingerprint(pods: Iterable[tuple[str, str]]) -> str:
    """`pods` are (namespace, name) pairs; their order does not matter."""
    digest = xxhash.xxh64(seed=0)
    for value in sorted(pod_hash(namespace, name) for namespace, name in pods):
        digest.update(_UINT64.pack(value))
    return f"{PREFIX}{VERSION}{digest.hexdigest()}"


def is_valid(text: str) -> bool:
    return len(text) >= 16 and text.startswith(PREFIX) and text[4:8] == VERSION

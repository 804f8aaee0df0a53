from __future__ import annotations

import json

import pytest

from exporter.fingerprint import fingerprint, is_valid
from tests.kubelet_files import KUBELET_FIXTURES

VECTORS = json.loads((KUBELET_FIXTURES / "podfingerprint-vectors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["fingerprint"])
def test_vectors(vector: dict[str, object]) -> None:
    pods = [tuple(pod) for pod in vector["pods"]]  # type: ignore[attr-defined]
    assert fingerprint(pods) == vector["fingerprint"]  # type: ignore[arg-type]


def test_the_259_pod_upstream_vector() -> None:
    pods = json.loads((KUBELET_FIXTURES / "podfingerprint-upstream-pods.json").read_text())
    assert len(pods) == 259
    assert fingerprint((pod["namespace"], pod["name"]) for pod in pods) == "pfp0v001e477a4e3b2fc0ec6"
    assert VECTORS["upstream_vector"]["fingerprint"] == "pfp0v001e477a4e3b2fc0ec6"


def test_order_does_not_matter_and_duplicates_count() -> None:
    pods = [("a", "x"), ("b", "y")]
    assert fingerprint(pods) == fingerprint(reversed(pods))
    assert fingerprint([*pods, ("a", "x")]) != fingerprint(pods)
    assert fingerprint([]) == "pfp0v001ef46db3751d8e999"
    assert is_valid(fingerprint(pods))
    assert not is_valid("pfp0v002abc")

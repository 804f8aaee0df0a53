"""The agent's in-cluster endpoint (kubeapi.in_cluster): what a pod's environment gives, and the token read
again as the kubelet rotates it."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.kubeapi import SERVICE_ACCOUNT_DIR_ENV, TOKEN_REREAD_SECONDS, TokenFile, in_cluster


def test_the_token_is_read_again_once_a_minute(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    now = [100.0]
    source = TokenFile(token, clock=lambda: now[0])
    assert source() == "Bearer first"
    token.write_text("second")
    now[0] += TOKEN_REREAD_SECONDS - 1
    assert source() == "Bearer first", "not read again before a minute"
    now[0] += 1
    assert source() == "Bearer second"
    token.unlink()
    now[0] += TOKEN_REREAD_SECONDS
    assert source() == "Bearer second", "a file gone for a moment keeps the last token"


def test_a_pods_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVICE_ACCOUNT_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert in_cluster() is None, "no token: not in a pod"
    (tmp_path / "token").write_text("t")
    endpoint = in_cluster()
    assert endpoint is not None
    assert endpoint.server == "https://[fd00::1]:443"
    assert endpoint.verify
    assert endpoint.ca_file is None
    (tmp_path / "ca.crt").write_text("x")
    endpoint = in_cluster()
    assert endpoint is not None
    assert endpoint.ca_file == str(tmp_path / "ca.crt")
    assert endpoint.authorization() == "Bearer t"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert in_cluster() is None

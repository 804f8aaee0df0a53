"""A short load run in the test suite: 50 concurrent scrapers while the state file changes 10 times a
second. `make soak` runs the same harness for 5 minutes and measures memory growth (RELIABILITY.md)."""

from __future__ import annotations

import os

from bench.soak import run


def test_fifty_scrapers_during_ten_changes_a_second_never_fail() -> None:
    result = run(float(os.environ.get("SOAK_SECONDS", "8")), 50)
    assert result["alive"] == 1.0
    assert result["scrapes"] > 200
    assert result["failed"] == 0
    assert result["changes"] >= 40
    assert result["refreshes"] >= 10, "the changes were refreshed while scrapes ran"

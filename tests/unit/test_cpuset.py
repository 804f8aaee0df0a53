from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.cpuset import format_cpuset, parse_cpumask, parse_cpuset, parse_sysfs_cpulist


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", set()),
        ("0", {0}),
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        ("5-5", {5}),
        ("0-1,4-7,11-17,20-23,27-31", {0, 1, 4, 5, 6, 7, *range(11, 18), 20, 21, 22, 23, *range(27, 32)}),
    ],
)
def test_parse_cpuset(text: str, cpus: set[int]) -> None:
    assert parse_cpuset(text) == cpus


@pytest.mark.parametrize("text", [" 1", "1 ", "1-", "-1", "3-1", "a", "1,,2", ",", "1-2-3", "0x1", "١"])
def test_parse_cpuset_rejects_what_the_kubelet_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        parse_cpuset(text)


def test_format_is_canonical() -> None:
    assert format_cpuset({1, 2}) == "1-2"
    assert format_cpuset({0, 2, 3, 4, 9}) == "0,2-4,9"
    assert format_cpuset(set()) == ""


@given(st.frozensets(st.integers(min_value=0, max_value=1023)))
def test_round_trip(cpus: frozenset[int]) -> None:
    assert parse_cpuset(format_cpuset(cpus)) == cpus


def test_sysfs_files() -> None:
    assert parse_sysfs_cpulist("0-3\n") == {0, 1, 2, 3}
    assert parse_cpumask("000000ff,00000001\n") == {0, *range(32, 40)}
    assert parse_cpumask("00000000,00000000") == set()

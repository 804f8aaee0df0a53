"""bench/admission.py's verdicts: the scheduler's own delays (the allowance the real-node test shares), the p99
goal against the blind scheduler, and whether a missed p99 is one an agent's requeue could reach (its bound arm,
updated at each flush the scheduler's log shows)."""

from __future__ import annotations

import pytest

from bench.admission import ARMS, FLUSHING, Result, headline, missed, reach
from exporter.agent.writer import REQUEUE_MARGIN_SECONDS
from tests.workload import allowance


def result(arm: str, p99: float, *, seed: int = 1, cpus: int = 150, rejected: int = 0, races: int = 0) -> Result:
    return Result(arm=arm, seed=seed, rejected=rejected, running=50, p50=1.0, p99=p99, slowest=p99, pending=0,
                  fit_at={10.0: 0, 12.6: 0, 60.0: 0}, cpus=cpus, writes_per_node=10, seconds=40, races=races,
                  allowance=20.6 if arm == "ours" else 12.6)  # fmt: skip


def test_the_allowance_is_two_resyncs_the_requeue_margin_the_backoff_and_the_debounce() -> None:
    assert REQUEUE_MARGIN_SECONDS == 0.5
    assert allowance(5) == pytest.approx(10 + 0.5 + 10 + 0.1)
    assert allowance(1, 2.0) == pytest.approx(2 + 0.5 + 2 + 0.1)
    assert ARMS["ours-1s-backoff2"].allowance == pytest.approx(allowance(1, 2.0))
    assert ARMS["no-reserve"].allowance == pytest.approx(0.5 + 10 + 0.1)


def test_every_bound_arm_is_its_arm_with_only_the_update_at_each_flush_added() -> None:
    bounds = [name for name, arm in ARMS.items() if arm.at_flush]
    assert bounds == ["ours-at-flush", "ours-1s-at-flush"]
    for name in bounds:
        arm, base = ARMS[name], ARMS[name.removesuffix("-at-flush")]
        assert (arm.scheduler, arm.agent_flags, arm.options) == (base.scheduler, base.agent_flags, base.options)
        assert not base.at_flush


def test_the_flush_is_read_from_the_scheduler_caches_own_line() -> None:
    line = ('I1207 17:42:58.019005   29887 overreserve.go:394] "flushing" logger="nrtcache.resync" generation=0 '
            'node="bench-1"')  # fmt: skip
    match = FLUSHING.search(line)
    assert match is not None
    assert match.group(1) == "bench-1"
    check = ('I1207 17:42:58.018 29887 store.go:433] "podset fingerprint check" logger="nrtcache.resync" '
             'node="bench-1" expected="pfpA" computed="pfpB"')  # fmt: skip
    assert FLUSHING.search(check) is None


def test_the_goal_and_whether_a_missed_p99_is_within_an_agents_reach() -> None:
    blind, ours = result("blind", 5.0), result("ours-1s", 15.0)
    assert missed(result("ours-1s", 10.0), blind) == []
    assert missed(ours, blind) == ["p99 15.0 s > 2 x 5.0 s"]
    short = result("ours-1s", 9.0, cpus=149, rejected=2, races=1)
    assert missed(short, blind) == ["1 rejected", "149 CPUs held against 150"]
    assert missed(result("ours-1s", float("nan")), blind) == ["p99 nan s > 2 x 5.0 s"]
    # The bound of the same seed judges the miss; another seed's does not.
    beyond = [blind, ours, result("ours-1s-at-flush", 9.0, seed=2), result("ours-1s-at-flush", 12.0)]
    assert reach(ours, blind, beyond).endswith("p99 12.0 s (2.4 x blind): beyond any agent's requeue")
    flush_moment = [blind, ours, result("ours-1s-at-flush", 9.0)]
    assert reach(ours, blind, flush_moment).endswith("p99 9.0 s (1.8 x blind): the rest is the flush's moment")
    assert reach(ours, blind, [blind, ours]) == "", "no bound run: nothing said"
    assert reach(result("ours-1s", 10.0), blind, flush_moment) == "", "the goal met: nothing to explain"


def test_the_exit_status_is_the_chart_defaults_goal_but_the_p99() -> None:
    blind = result("blind", 5.0, cpus=149)
    assert headline([blind, result("ours", 30.0, cpus=150), result("ours-1s", 9.0, rejected=3)]) == 0
    assert headline([blind, result("ours", 3.0, cpus=148)]) == 1
    assert headline([blind, result("ours", 3.0, rejected=2, races=2)]) == 0, "the cache's own race"
    assert headline([blind, result("ours", 3.0, rejected=2, races=1)]) == 1
    waiting = result("ours", 3.0)
    waiting.fit_at = {10.0: 4, 20.6: 1, 60.0: 0}
    assert headline([blind, waiting]) == 1, "a pod that fits Pending past the scheduler's delays"
    waiting.fit_at = {10.0: 4, 20.6: 0, 60.0: 0}
    assert headline([blind, waiting]) == 0, "within them"
    assert headline([result("ours", 3.0, rejected=1)]) == 0, "no blind run: not judged"

"""bench/admission.py's verdicts: the scheduler's own delays (the allowance the real-node test shares), the p99
goal against the blind scheduler, how the same arm did with a requeue at each flush of the scheduler's cache (its
-at-flush arm, which reads the flushes from the scheduler's log), and the exit status."""

from __future__ import annotations

import pytest

from bench.admission import ARMS, Result, flushes, headline, missed, reach
from exporter.agent.writer import REQUEUE_MARGIN_SECONDS
from tests.workload import allowance


def result(arm: str, p99: float, *, seed: int = 1, cpus: int = 150, rejected: int = 0, races: int = 0) -> Result:
    wait = ARMS[arm].allowance
    return Result(arm=arm, seed=seed, rejected=rejected, running=50, p50=1.0, p99=p99, slowest=p99, pending=0,
                  fit_at={10.0: 0, wait: 0, 60.0: 0}, cpus=cpus, writes_per_node=10, seconds=40, races=races,
                  allowance=wait, at_flush=30 if ARMS[arm].at_flush else 0)  # fmt: skip


def test_the_allowance_is_two_resyncs_the_requeue_margin_the_backoff_and_the_debounce() -> None:
    assert REQUEUE_MARGIN_SECONDS == 0.5
    assert allowance(5) == pytest.approx(10 + 0.5 + 10 + 0.1)
    assert allowance(1, 2.0) == pytest.approx(2 + 0.5 + 2 + 0.1)
    assert ARMS["ours"].allowance == pytest.approx(allowance(5))
    assert ARMS["ours-1s-backoff2"].allowance == pytest.approx(allowance(1, 2.0))
    assert ARMS["no-reserve"].allowance == pytest.approx(0.5 + 10 + 0.1)


def test_every_at_flush_arm_is_its_arm_with_only_the_requeue_at_each_flush_added() -> None:
    added = [name for name, arm in ARMS.items() if arm.at_flush]
    assert added == ["ours-at-flush", "ours-1s-at-flush"]
    for name in added:
        arm, base = ARMS[name], ARMS[name.removesuffix("-at-flush")]
        assert (arm.scheduler, arm.agent_flags, arm.options) == (base.scheduler, base.agent_flags, base.options)
        assert not base.at_flush


def test_the_flushes_are_read_from_the_scheduler_caches_own_lines_across_partial_reads() -> None:
    flush = b'I1207 17:42:58.019005   29887 overreserve.go:394] "flushing" logger="nrtcache.resync" generation=0 '
    check = (b'I1207 17:42:58.018 29887 store.go:433] "podset fingerprint check" logger="nrtcache.resync" '
             b'node="bench-2" expected="pfpA" computed="pfpB"\n')  # fmt: skip
    nodes, rest = flushes(check + flush + b'node="bench-1"\n' + flush + b'node="be')
    assert nodes == {"bench-1"}, "a fingerprint check is no flush; a partial line waits"
    assert rest == flush + b'node="be'
    nodes, rest = flushes(rest + b'nch-3"\n')
    assert (nodes, rest) == ({"bench-3"}, b"")
    assert flushes(b"") == (set(), b"")


def test_the_goal_and_how_a_requeue_at_each_flush_did() -> None:
    blind, ours = result("blind", 5.0), result("ours-1s", 15.0)
    assert missed(result("ours-1s", 10.0), blind) == []
    assert missed(ours, blind) == ["p99 15.0 s > 2 x 5.0 s"]
    assert missed(ours, blind, p99=False) == []
    short = result("ours-1s", 9.0, cpus=149, rejected=2, races=1)
    assert missed(short, blind) == ["1 rejected", "149 CPUs held against 150"]
    assert missed(result("ours-1s", float("nan")), blind) == ["p99 nan s > 2 x 5.0 s"]
    # The -at-flush run of the same seed is the one compared; another seed's is not.
    either = [blind, ours, result("ours-1s-at-flush", 9.0, seed=2), result("ours-1s-at-flush", 12.0)]
    assert reach(ours, blind, either).endswith("p99 12.0 s, 2.4 x blind, not within it either")
    flush_moment = [blind, ours, result("ours-1s-at-flush", 9.0)]
    assert reach(ours, blind, flush_moment).endswith("p99 9.0 s, 1.8 x blind, within it: the rest is the flush's moment")
    assert reach(ours, blind, [blind, ours]) == "", "no -at-flush run: nothing said"
    assert reach(result("ours-1s", 10.0), blind, flush_moment) == "", "the goal met: nothing to explain"
    idle = result("ours-1s-at-flush", 9.0)
    idle.at_flush = 0
    assert reach(ours, blind, [blind, ours, idle]) == "", "a run whose hand never requeued compares nothing"
    assert reach(ours, result("blind", 0.0), flush_moment) == "", "no blind p99 to divide by"


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

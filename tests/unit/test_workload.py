"""The real-node test's judge of a rejection (tests/workload.py `scheduler_race`), on log lines in the formats
the scheduler, the kubelet and the agent write (taken from a real run, names shortened)."""

from __future__ import annotations

from datetime import date

from tests.workload import _klog_day, _klog_time, _seconds, scheduler_race, timeline

NS = "real-x"


def scheduler_log(*, q_bound: str, flush: str, p_reserved: str) -> list[str]:
    return [
        f'I1204 {q_bound}   21906 schedule_one.go:481] "Successfully bound pod to node" pod="{NS}/q" node="n-2" evaluatedNodes=3 feasibleNodes=1',
        f'I1204 {flush}   21906 store.go:433] "podset fingerprint check" logger="nrtcache.resync" generation=20 node="n-2" expected="pfpA" computed="pfpA" onlyExclusiveResources=true',
        f'I1204 {p_reserved}   21906 overreserve.go:185] "post reserve" logger="nrtcache" pod="{NS}/p" podUID="u" node="n-2" assumedResources="{NS}/p::[cpu=1];"',
    ]


def kubelet_log(*, q_allocated: str, q_removed: str | None = None) -> str:
    lines = [
        f'I1204 {q_allocated}   21621 policy_static.go:723] "AllocateCPUs" pod="{NS}/q" podUID="v" containerName="c0" result="5,21 aligned=<uncore:true>"'
    ]
    if q_removed:
        lines.append(f'I1204 {q_removed}   21621 kubelet.go:2734] "SyncLoop REMOVE" source="api" pods=["{NS}/q"]')
    return "\n".join(lines)


AGENT = "2026-12-04 17:13:37,686 DEBUG exporter.agent.writer: NodeResourceTopology n-2 written: pfpA, available {}"


def test_a_reservation_dropped_for_a_pod_our_object_could_not_subtract_is_the_schedulers_race() -> None:
    """Q bound at .310, admitted at .320 (after our write at 37.686), the cache resynced from that write at .359
    and dropped Q's reservation: P's rejection is the scheduler's."""
    why = scheduler_race(NS, "p", "n-2", agent_log=AGENT,
                         scheduler_log=scheduler_log(q_bound="17:13:38.310182", flush="17:13:38.359202", p_reserved="17:13:38.471475"),
                         kubelet_log=kubelet_log(q_allocated="17:13:38.320000"))  # fmt: skip
    assert why is not None
    assert why.startswith("q was reserved on n-2")


def test_a_pod_admitted_before_our_write_was_ours_to_subtract() -> None:
    """Q admitted at 37.600, before our write at 37.686: our object subtracted it (or should have), so a
    rejection after that resync is not the scheduler's race."""
    assert scheduler_race(NS, "p", "n-2", agent_log=AGENT,
                          scheduler_log=scheduler_log(q_bound="17:13:37.590000", flush="17:13:38.359202", p_reserved="17:13:38.471475"),
                          kubelet_log=kubelet_log(q_allocated="17:13:37.600000")) is None  # fmt: skip


def test_a_pod_gone_before_the_resync_rightly_lost_its_reservation() -> None:
    assert scheduler_race(NS, "p", "n-2", agent_log=AGENT,
                          scheduler_log=scheduler_log(q_bound="17:13:38.310182", flush="17:13:38.359202", p_reserved="17:13:38.471475"),
                          kubelet_log=kubelet_log(q_allocated="17:13:38.320000", q_removed="17:13:38.340000")) is None  # fmt: skip


def test_no_resync_before_the_reservation_explains_nothing() -> None:
    assert scheduler_race(NS, "p", "n-2", agent_log=AGENT,
                          scheduler_log=scheduler_log(q_bound="17:13:38.310182", flush="17:13:38.500000", p_reserved="17:13:38.471475"),
                          kubelet_log=kubelet_log(q_allocated="17:13:38.320000")) is None  # fmt: skip


def test_admitted_after_our_write_but_before_the_resync_is_the_race_too() -> None:
    """Dedicated's case: Q admitted at 38.000, between our write (37.686) and the resync (38.359) that matched
    that write: the object the cache took could not subtract Q. Told apart only by the agent's write time."""
    logs = scheduler_log(q_bound="17:13:37.990000", flush="17:13:38.359202", p_reserved="17:13:38.471475")
    assert scheduler_race(NS, "p", "n-2", agent_log=AGENT, scheduler_log=logs,
                          kubelet_log=kubelet_log(q_allocated="17:13:38.000000")) is not None  # fmt: skip
    assert scheduler_race(NS, "p", "n-2", agent_log="", scheduler_log=logs,
                          kubelet_log=kubelet_log(q_allocated="17:13:38.000000")) is None  # fmt: skip


def test_admission_times_can_come_from_a_played_kubelet() -> None:
    """The oracle-played end-to-end test has no kubelet log: it says when it admitted each pod."""
    logs = scheduler_log(q_bound="17:13:38.310182", flush="17:13:38.359202", p_reserved="17:13:38.471475")
    day = _klog_day("I1204")  # the day of the log lines above
    admitted_late, admitted_early = _seconds("17:13:38.32", day), _seconds("17:13:37.60", day)
    assert scheduler_race(NS, "p", "n-2", agent_log=AGENT, scheduler_log=logs, admitted={"q": admitted_late}) is not None
    assert scheduler_race(NS, "p", "n-2", agent_log=AGENT, scheduler_log=logs, admitted={"q": admitted_early}) is None


def test_times_on_either_side_of_midnight_keep_their_order() -> None:
    new_year = date(2027, 1, 1)
    before, after = _klog_day("I1231", today=new_year), _klog_day("I0101", today=new_year)
    assert (before, after) == (date(2026, 12, 31), new_year), "klog names no year: the latest day not after tomorrow"
    assert 0 < _seconds("00:00:00.100000", after) - _seconds("23:59:59.900000", before) < 1
    assert _klog_time("I0101 00:00:00.100000   1 store.go:1] x") is not None


def agent_naming(*pods: str) -> str:
    named = [f"{NS}/{pod}" for pod in pods]
    return f"{AGENT}, pods {named!r}"


def test_what_the_flushed_object_named_decides_over_the_times() -> None:
    """The agent lists the pods each write's fingerprint covers. Q admitted at 37.600, before the write at
    37.686, but that write carried a snapshot read before: it did not name Q, so the cache that resynced from
    it dropped Q's reservation with nothing subtracting Q (the times alone would call that ours). A write that
    named Q subtracted it: a rejection after resyncing from it is ours, whatever the times say."""
    logs = scheduler_log(q_bound="17:13:37.590000", flush="17:13:38.359202", p_reserved="17:13:38.471475")
    kubelet = kubelet_log(q_allocated="17:13:37.600000")
    assert scheduler_race(NS, "p", "n-2", agent_log=AGENT, scheduler_log=logs, kubelet_log=kubelet) is None
    why = scheduler_race(NS, "p", "n-2", agent_log=agent_naming("a"), scheduler_log=logs, kubelet_log=kubelet)
    assert why is not None
    assert "did not account for q" in why
    late = kubelet_log(q_allocated="17:13:38.000000")
    assert (
        scheduler_race(NS, "p", "n-2", agent_log=agent_naming("a", "q"), scheduler_log=logs, kubelet_log=late) is None
    )


def test_a_pod_the_kubelet_rejected_held_nothing() -> None:
    logs = scheduler_log(q_bound="17:13:38.310182", flush="17:13:38.359202", p_reserved="17:13:38.471475")
    kubelet = kubelet_log(q_allocated="17:13:38.320000")
    assert scheduler_race(NS, "p", "n-2", agent_log=agent_naming(), scheduler_log=logs, kubelet_log=kubelet)
    assert scheduler_race(NS, "p", "n-2", agent_log=agent_naming(), scheduler_log=logs, kubelet_log=kubelet,
                          rejected=["q"]) is None  # fmt: skip


def test_the_timeline_of_an_unexplained_rejection_holds_each_side() -> None:
    logs = scheduler_log(q_bound="17:13:38.310182", flush="17:13:38.359202", p_reserved="17:13:38.471475")
    lines = timeline(NS, "p", "n-2", scheduler_log=logs, agent_log=agent_naming("a"),
                     kubelet_log=kubelet_log(q_allocated="17:13:38.320000"))  # fmt: skip
    assert [line.split()[1] for line in lines] == ["agent", "scheduler", "kubelet", "scheduler", "scheduler"]
    assert lines[0].startswith("17:13:37.686000 agent NodeResourceTopology n-2 written: pfpA")
    assert timeline(NS, "r", "n-2", scheduler_log=logs, agent_log="", kubelet_log="") == [
        f"no reservation of {NS}/r in the scheduler's log"
    ]


def test_a_reservation_made_before_the_flush_is_dropped_by_it_even_when_the_bind_comes_after() -> None:
    """From bench/admission.py's Dedicated arm (seed 3): Q reserved at .523, the cache's check matched our
    object at .526, Q bound at .532, the flush itself at .650 (it waits for the cache's lock) dropped Q's
    reservation, and P reserved at .740 on Q's CPUs. No object could name Q at .526: it was not even bound."""

    def logs(*, q_reserved: str, flushing: str, q_bound: str | None = "07:53:08.532679") -> list[str]:
        lines = [
            f'I1205 {q_reserved}   29068 overreserve.go:185] "post reserve" logger="nrtcache" pod="{NS}/q" podUID="u" node="n-2" assumedResources="{NS}/q::[cpu=1];"',
            'I1205 07:53:08.526360   29068 store.go:433] "podset fingerprint check" logger="nrtcache.resync" generation=13 node="n-2" expected="pfpA" computed="pfpA" onlyExclusiveResources=true',
            f'I1205 {flushing}   29068 overreserve.go:394] "flushing" logger="nrtcache.resync" generation=13 node="n-2"',
            f'I1205 07:53:08.740274   29068 overreserve.go:185] "post reserve" logger="nrtcache" pod="{NS}/p" podUID="v" node="n-2" assumedResources="{NS}/p::[cpu=4];"',
        ]
        if q_bound:
            lines.insert(
                2,
                f'I1205 {q_bound}   29068 schedule_one.go:481] "Successfully bound pod to node" pod="{NS}/q" node="n-2" evaluatedNodes=5 feasibleNodes=2',
            )
        return lines  # fmt: skip

    agent = f"2026-12-05 07:53:08,400 DEBUG exporter.agent.writer: NodeResourceTopology n-2 written: pfpA, available {{}}, pods ['{NS}/a']"
    why = scheduler_race(
        NS, "p", "n-2", agent_log=agent, scheduler_log=logs(q_reserved="07:53:08.523136", flushing="07:53:08.650991")
    )
    assert why is not None
    assert why.startswith("q was reserved on n-2 before the scheduler's cache flushed it")
    # Reserved between the check and the flush: dropped all the same.
    assert scheduler_race(
        NS,
        "p",
        "n-2",
        agent_log=agent,
        scheduler_log=logs(q_reserved="07:53:08.600000", flushing="07:53:08.650991", q_bound="07:53:08.610000"),
    )
    # Reserved after the flush: the cache kept it, so P's rejection is not this race.
    assert (
        scheduler_race(
            NS,
            "p",
            "n-2",
            agent_log=agent,
            scheduler_log=logs(q_reserved="07:53:08.700000", flushing="07:53:08.650991", q_bound="07:53:08.720000"),
        )
        is None
    )
    # Never bound: it held nothing on the node.
    assert scheduler_race(NS, "p", "n-2", agent_log=agent, scheduler_log=logs(q_reserved="07:53:08.523136", flushing="07:53:08.650991", q_bound=None)) is None  # fmt: skip


def test_a_flush_between_a_reservation_and_its_bind_is_told_from_the_schedulers_log_alone() -> None:
    """Q reserved at 31.4636 and bound at 31.4767; the cache checked the node at 31.4708 and flushed; P reserved
    after: the flush dropped Q's reservation before any object could name Q. A check after Q's bind is this race
    only where the test's watch shows the object as it was at the bind (test below)."""
    def log(check: str) -> list[str]:
        return [
            f'I1207 05:37:31.463639    8839 overreserve.go:185] "post reserve" logger="nrtcache" pod="{NS}/q" podUID="u" node="n-0" assumedResources="x"',
            f'I1207 {check}    8839 store.go:433] "podset fingerprint check" logger="nrtcache.resync" generation=4 node="n-0" expected="pfpA" computed="pfpA" onlyExclusiveResources=true',
            f'I1207 05:37:31.476743    8839 schedule_one.go:481] "Successfully bound pod to node" pod="{NS}/q" node="n-0" evaluatedNodes=3 feasibleNodes=1',
            f'I1207 05:37:31.549111    8839 overreserve.go:185] "post reserve" logger="nrtcache" pod="{NS}/p" podUID="v" node="n-0" assumedResources="x"',
        ]  # fmt: skip

    from tests.workload import NrtChanges, race_seen

    unwatched = object.__new__(NrtChanges)
    unwatched.changes = {}

    def judge(check: str, pod: str = "p") -> str | None:
        return race_seen(NS, pod, "n-0", scheduler_log=log(check), changes=unwatched)

    assert judge("05:37:31.470835") is not None
    assert judge("05:37:31.490000") is None, "13 ms after the bind: only with the watch's evidence"
    assert judge("05:37:31.470835", "q") is None, "Q itself"


def test_the_race_is_told_from_the_schedulers_log_and_the_tests_own_watch_never_the_agents() -> None:
    """From a real run (2026-12-07): Q reserved on n-0 at 19.086 and bound at 19.123; the cache checked n-0 at
    19.219 against the object as it was before the bind (pfpA), flushed, and P was reserved at 19.367 on what Q
    held. The test's watch saw the object change to name Q at 19.248, after the check. Anything short of that is
    not the race: the object changed before the check, changed too late, a flush came after the change, or the
    check's object is not the one the watch saw at the bind."""
    from tests.workload import NrtChanges, race_seen

    log = [
        f'I1207 12:43:19.086446   24976 overreserve.go:185] "post reserve" logger="nrtcache" pod="{NS}/q" podUID="u" node="n-0" assumedResources="x"',
        f'I1207 12:43:19.123450   24976 schedule_one.go:481] "Successfully bound pod to node" pod="{NS}/q" node="n-0" evaluatedNodes=3 feasibleNodes=1',
        'I1207 12:43:19.218960   24976 store.go:433] "podset fingerprint check" logger="nrtcache.resync" generation=10 node="n-0" expected="pfpA" computed="pfpA" onlyExclusiveResources=true',
        f'I1207 12:43:19.366796   24976 overreserve.go:185] "post reserve" logger="nrtcache" pod="{NS}/p" podUID="v" node="n-0" assumedResources="x"',
    ]  # fmt: skip

    def watched(*changes: tuple[str, str]) -> NrtChanges:
        seen = object.__new__(NrtChanges)
        day = _klog_day("I1207")  # the day the klog lines above are read on (they carry no year)
        seen.changes = {"n-0": [(_seconds(stamp, day), value) for stamp, value in changes]}
        return seen

    def judge(changes: NrtChanges, lines: list[str] = log) -> str | None:
        return race_seen(NS, "p", "n-0", scheduler_log=lines, changes=changes)

    real = watched(("12:43:18.100000", "pfpA"), ("12:43:19.248000", "pfpB"))
    why = judge(real)
    assert why is not None
    assert "96 ms after q's bind" in why
    assert "125 ms after the bind" in why
    assert judge(watched(("12:43:18.100000", "pfpA"), ("12:43:19.200000", "pfpB"))) is None, "named before the check"
    assert judge(watched(("12:43:18.100000", "pfpA"), ("12:43:19.500000", "pfpB"))) is None, "named 377 ms late"
    assert judge(watched(("12:43:18.100000", "pfpZ"), ("12:43:19.248000", "pfpB"))) is None, "another object"
    later = [*log[:3], log[2].replace("19.218960", "19.300000"), log[3]]
    assert judge(real, later) is None, "a flush after the object named Q gave the cache Q"
    before_bind = [log[0], log[2].replace("19.218960", "19.100000"), log[1], log[3]]
    assert judge(watched(), before_bind) is not None, "a flush before the bind needs no watch"
    assert judge(real, [line for line in log if '"post reserve"' not in line or "/p" not in line]) is None

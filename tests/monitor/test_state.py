"""The monitor's state machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from ttsha.config import NodeConfig
from ttsha.monitor.state import Decider

NODES = {
    "a": NodeConfig(url="http://127.0.0.2:8900", priority=200),
    "b": NodeConfig(url="http://127.0.0.3:8900", priority=100),
}
INFO = {"engine": "embedded", "model_version": "v1"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


def feed(decider, clock, name, ok, n=1, info=INFO):
    events = []
    for _ in range(n):
        events += decider.observe(name, ok, clock.tick(), info if ok else None, 1.0, "" if ok else "refused")
    return events


def kinds(events):
    return [(e.kind, e.node) for e in events]


@pytest.fixture
def clock():
    return Clock()


def started(clock, **kw):
    d = Decider(NODES, fall=2, rise=3, **kw)
    feed(d, clock, "a", True)
    feed(d, clock, "b", True)
    return d


def test_start_waits_for_every_node_then_picks_the_highest_priority(clock):
    d = Decider(NODES, fall=2, rise=3)
    assert d.roles() is None  # nothing probed: nothing to route
    events = feed(d, clock, "b", True)
    assert kinds(events) == [("node_up", "b")] and d.primary is None  # a not heard from yet
    events = feed(d, clock, "a", True)
    assert kinds(events) == [("node_up", "a"), ("switchover", "a")]
    assert d.roles() == {"a": "primary", "b": "backup"}


def test_start_with_a_dead_node(clock):
    d = Decider(NODES, fall=2, rise=3)
    feed(d, clock, "a", False, 2)
    events = feed(d, clock, "b", True)
    assert ("switchover", "b") in kinds(events) and d.roles() == {"a": "down", "b": "primary"}


def test_existing_primary_is_adopted(clock):
    d = Decider(NODES, fall=2, rise=3, primary="b")
    feed(d, clock, "a", True)  # a answers first, but b routes today: no switch before b is probed
    assert d.primary == "b"
    events = feed(d, clock, "b", True)
    assert d.primary == "b" and ("switchover", "b") not in kinds(events)
    assert d.roles() == {"a": "backup", "b": "primary"}


def test_fall_and_failover(clock):
    d = started(clock)
    assert d.primary == "a" and d.roles() == {"a": "primary", "b": "backup"}
    # One failure is not enough to act on; it is recorded as the outage's start.
    assert kinds(feed(d, clock, "a", False)) == [("probe_failed", "a")]
    assert d.primary == "a"
    events = feed(d, clock, "a", False)
    assert kinds(events) == [("node_down", "a"), ("switchover", "b")]
    assert d.roles() == {"a": "down", "b": "primary"}


def test_rise_needs_consecutive_successes_and_no_failback(clock):
    d = started(clock)
    feed(d, clock, "a", False, 2)
    assert feed(d, clock, "a", True, 2) == []
    feed(d, clock, "a", False)  # a flap resets the count
    assert feed(d, clock, "a", True, 2) == []
    events = feed(d, clock, "a", True)
    assert kinds(events) == [("node_up", "a")]
    assert d.primary == "b" and d.roles() == {"a": "backup", "b": "primary"}


def test_a_node_failing_most_probes_but_never_twice_in_a_row_goes_down(clock):
    """A slow node (stalls with short spells of service between them) answers
    a probe now and then: never `fall` failures in a row, yet it must go."""
    d = started(clock)
    assert kinds(feed(d, clock, "a", False)) == [("probe_failed", "a")]
    feed(d, clock, "a", True)
    assert kinds(feed(d, clock, "a", False)) == [("probe_failed", "a")]  # 2 of the last 3: still up
    events = feed(d, clock, "a", True) + feed(d, clock, "a", False)  # 3 of the last 5
    assert kinds(events) == [("probe_failed", "a"), ("node_down", "a"), ("switchover", "b")]
    assert "3 of the last 5 probes failed" in events[1].detail
    # Recovered (rise in a row), an old failure or two no longer count against it.
    feed(d, clock, "a", True, 3)
    assert d.states["a"].status == "up"
    feed(d, clock, "a", False)
    feed(d, clock, "a", True)
    feed(d, clock, "a", False)
    assert d.states["a"].status == "up"  # 2 of the last 3 since it came back


def test_an_occasional_failed_probe_does_not_mark_a_node_down(clock):
    d = started(clock)
    for _ in range(20):  # one failure in every three probes: a lossy link, not a dead node
        feed(d, clock, "a", False)
        feed(d, clock, "a", True, 2)
    assert d.states["a"].status == "up" and d.primary == "a"


def test_flapping_node_never_serves(clock):
    d = started(clock)
    feed(d, clock, "a", False, 2)
    for _ in range(10):
        feed(d, clock, "a", True, 2)
        feed(d, clock, "a", False)
    assert d.states["a"].status == "down" and d.primary == "b"


def test_a_node_that_relapses_soon_after_recovering_needs_ever_longer_to_serve(clock):
    """A slow node runs now and then: rise good probes in a row happen by chance,
    and each brief return cost a reload and a fence (seen in the failover bench)."""
    d = started(clock)
    feed(d, clock, "a", False, 2)  # down once: an ordinary outage, no penalty
    assert kinds(feed(d, clock, "a", True, 3))[0] == ("node_up", "a")
    feed(d, clock, "a", False, 2)  # down again 2 s after recovering: a flap
    assert d.states["a"].flaps == 1
    assert feed(d, clock, "a", True, 5) == [] and d.states["a"].status == "down"  # now needs 6
    events = feed(d, clock, "a", True)
    assert kinds(events) == [("node_up", "a")] and "flapping: 1 quick relapses" in events[0].detail
    feed(d, clock, "a", False, 2)
    assert d.states["a"].flaps == 2
    assert feed(d, clock, "a", True, 11) == [] and kinds(feed(d, clock, "a", True)) == [("node_up", "a")]
    feed(d, clock, "a", True, 30)  # up long enough: forgiven
    assert d.states["a"].flaps == 0
    feed(d, clock, "a", False, 2)
    assert d.states["a"].flaps == 0  # down after a long stay is an outage, not a flap
    assert kinds(feed(d, clock, "a", True, 3))[0] == ("node_up", "a")


def test_failback_after_duration(clock):
    d = started(clock, failback="after:10s")
    feed(d, clock, "a", False, 2)
    feed(d, clock, "a", True, 3)  # up again at t
    assert d.primary == "b"
    events = feed(d, clock, "a", True, 9)  # 9 s later: not yet
    assert d.primary == "b" and not events
    events = feed(d, clock, "a", True, 1)
    assert kinds(events) == [("switchover", "a")] and d.primary == "a"


def test_all_down_keeps_last_routing(clock):
    d = started(clock)
    feed(d, clock, "a", False, 2)
    roles_before = d.roles()
    events = feed(d, clock, "b", False, 2)
    assert ("all_down", "*") in kinds(events)
    assert d.roles() is None  # the monitor keeps the last applied file
    assert feed(d, clock, "b", False, 3) == []  # alerted once, not on every probe
    events = feed(d, clock, "b", True, 3)
    assert d.primary == "b" and d.roles() == roles_before


def test_starting_or_degraded_counts_as_failure(clock):
    d = started(clock)
    # The probe reports 503 starting/degraded as ok=False: same path as a dead node.
    events = feed(d, clock, "a", False, 2)
    assert ("node_down", "a") in kinds(events)


def test_model_mismatch_warned_once(clock):
    d = Decider(NODES, fall=2, rise=3)
    feed(d, clock, "a", True)
    events = feed(d, clock, "b", True, info={"engine": "embedded", "model_version": "v2"})
    assert kinds(events)[-1] == ("model_mismatch", "b")
    assert "v2" in events[-1].detail and "v1" in events[-1].detail
    assert feed(d, clock, "b", True, 3, info={"engine": "embedded", "model_version": "v2"}) == []


def test_active_active(clock):
    d = Decider(NODES, mode="active-active", fall=2, rise=3)
    feed(d, clock, "a", True)
    feed(d, clock, "b", True)
    assert d.roles() == {"a": "active", "b": "active"}
    feed(d, clock, "a", False, 2)
    assert d.roles() == {"a": "down", "b": "active"}


def test_faster_probing_while_changing(clock):
    d = started(clock)
    assert not d.states["a"].changing
    feed(d, clock, "a", False)
    assert d.states["a"].changing
    feed(d, clock, "a", False)
    assert not d.states["a"].changing  # settled: down
    feed(d, clock, "a", True)
    assert d.states["a"].changing


def test_a_node_that_failed_a_recent_probe_is_probed_fast_until_its_window_is_clean(clock):
    d = started(clock)
    feed(d, clock, "a", False)
    feed(d, clock, "a", True)
    assert d.states["a"].status == "up" and d.states["a"].changing  # one good answer between stalls
    feed(d, clock, "a", True, 3)
    assert d.states["a"].changing  # the failure is still among the last 2 * fall + 1
    feed(d, clock, "a", True)
    assert not d.states["a"].changing


def test_manual_switchover(clock):
    d = started(clock)
    event = d.set_primary("b", clock.tick())
    assert event.kind == "switchover" and d.primary == "b"
    feed(d, clock, "b", False, 2)
    with pytest.raises(ValueError):
        d.set_primary("b", clock.tick())


def test_a_planned_switchover_is_not_undone_by_automatic_failback(clock):
    d = started(clock, failback="after:10s")
    d.set_primary("b", clock.tick())
    assert feed(d, clock, "a", True, 20) == [] and d.primary == "b"
    # Once the pinned node fails, the usual rules apply again.
    feed(d, clock, "b", False, 2)
    assert d.primary == "a"
    feed(d, clock, "b", True, 3)
    feed(d, clock, "b", True, 20)
    assert d.primary == "a"  # b has the lower priority: no failback to it


def test_switchover_refuses_unknown_down_or_active_active(clock):
    d = started(clock)
    with pytest.raises(ValueError, match="not a configured node"):
        d.set_primary("c", clock.tick())
    aa = Decider(NODES, mode="active-active")
    feed(aa, clock, "a", True)
    with pytest.raises(ValueError, match="active-standby"):
        aa.set_primary("a", clock.tick())


# -- three nodes ------------------------------------------------------------------
TRIO = {
    "a": NodeConfig(url="http://127.0.0.2:8900", priority=300),
    "b": NodeConfig(url="http://127.0.0.3:8900", priority=200, weight=3),
    "c": NodeConfig(url="http://127.0.0.4:8900", priority=100),
}


def trio(clock, **kw):
    d = Decider(TRIO, fall=2, rise=3, **kw)
    for name in ("c", "b", "a"):
        feed(d, clock, name, True)
    return d


def test_three_nodes_active_standby_promote_backups_in_priority_order(clock):
    d = trio(clock)
    assert d.primary == "a" and d.roles() == {"a": "primary", "b": "backup", "c": "backup"}
    events = feed(d, clock, "a", False, 2)
    assert ("switchover", "b") in kinds(events)
    assert d.roles() == {"a": "down", "b": "primary", "c": "backup"}  # the next in priority, c still backs it up
    feed(d, clock, "b", False, 2)
    assert d.roles() == {"a": "down", "b": "down", "c": "primary"}
    # The first to return is a backup; the primary keeps its role (no automatic failback).
    feed(d, clock, "a", True, 3)
    assert d.roles() == {"a": "backup", "b": "down", "c": "primary"}
    feed(d, clock, "b", True, 3)
    assert d.roles() == {"a": "backup", "b": "backup", "c": "primary"}
    # c fails: the highest-priority backup takes over, not the first one to come back.
    feed(d, clock, "c", False, 2)
    assert d.primary == "a" and d.roles() == {"a": "primary", "b": "backup", "c": "down"}


def test_three_nodes_failback_goes_to_the_highest_priority(clock):
    d = trio(clock, failback="after:10s")
    feed(d, clock, "a", False, 2)
    feed(d, clock, "b", False, 2)
    assert d.primary == "c"
    feed(d, clock, "b", True, 3)  # b back: higher than c, after 10 s up it takes over
    assert d.primary == "c"
    feed(d, clock, "b", True, 10)
    assert d.primary == "b"
    feed(d, clock, "a", True, 13)
    assert d.primary == "a" and d.roles() == {"a": "primary", "b": "backup", "c": "backup"}


def test_three_nodes_active_active_route_to_every_healthy_node(clock):
    d = trio(clock, mode="active-active")
    assert d.roles() == {"a": "active", "b": "active", "c": "active"}
    feed(d, clock, "b", False, 2)
    assert d.roles() == {"a": "active", "b": "down", "c": "active"}
    feed(d, clock, "c", False, 2)
    assert d.roles() == {"a": "active", "b": "down", "c": "down"}
    feed(d, clock, "b", True, 2)
    assert d.roles()["b"] == "down"  # rejoins only after rise good probes
    feed(d, clock, "b", True)
    assert d.roles() == {"a": "active", "b": "active", "c": "down"}
    feed(d, clock, "a", False, 2)
    feed(d, clock, "b", False, 2)
    assert d.all_down and d.roles() is None  # nothing up: the last routing stays (the daemon keeps it)


def test_three_nodes_model_mismatches_are_reported_once_per_node(clock):
    d = trio(clock)
    v2 = {"engine": "embedded", "model_version": "v2"}
    events = feed(d, clock, "b", True, info=v2) + feed(d, clock, "c", True, info=v2)
    assert kinds(events) == [("model_mismatch", "b"), ("model_mismatch", "c")]
    # Two differing nodes must not take turns being reported on every probe.
    assert feed(d, clock, "b", True, 3, info=v2) + feed(d, clock, "c", True, 3, info=v2) == []
    feed(d, clock, "b", True)  # b caught up with the primary; a later difference is news again
    assert kinds(feed(d, clock, "b", True, info={"engine": "embedded", "model_version": "v3"})) == [
        ("model_mismatch", "b")]


def test_the_upstream_lists_the_primary_then_the_backups_in_promotion_order(clock):
    from ttsha.nginx import render_upstream, roles_of

    d = trio(clock)
    feed(d, clock, "a", False, 2)
    feed(d, clock, "a", True, 3)  # back as a backup, ahead of c by priority
    text = render_upstream(TRIO, d.roles())
    servers = [line.split("#")[1].strip() for line in text.splitlines() if line.strip().startswith("server")]
    assert servers == ["b: primary", "a: backup", "c: backup"]
    assert roles_of(text) == {"a": "backup", "b": "primary", "c": "backup"}


def test_three_nodes_active_active_check_models_against_the_highest_priority_node(clock):
    d = trio(clock, mode="active-active")
    events = feed(d, clock, "c", True, info={"engine": "embedded", "model_version": "v0"})
    assert kinds(events) == [("model_mismatch", "c")]
    assert "the models source, node a, serves embedded v1" in events[0].detail
    assert feed(d, clock, "b", True) == []
    named = Decider(TRIO, mode="active-active", fall=2, rise=3, models_source="c")
    for name in ("c", "b"):
        feed(named, clock, name, True)
    events = feed(named, clock, "a", True, info={"engine": "embedded", "model_version": "v0"})
    assert kinds(events) == [("node_up", "a"), ("model_mismatch", "a")]
    assert "the models source, node c, serves" in events[1].detail

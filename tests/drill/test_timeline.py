"""The failover timeline from the monitor's events (pure)."""

from __future__ import annotations

import pytest

from ttsha.drill.timeline import timeline


def test_timeline_from_monitor_events():
    events = [
        {"at": 90.0, "kind": "node_down", "node": "primary"},  # an earlier story
        {"at": 100.2, "kind": "probe_failed", "node": "primary"},
        {"at": 100.3, "kind": "probe_failed", "node": "primary"},
        {"at": 100.4, "kind": "node_down", "node": "primary"},
        {"at": 100.4, "kind": "switchover", "node": "standby"},
        {"at": 100.6, "kind": "upstream_rewritten", "node": None, "data": {"reload_s": 0.1, "live_s": 0.05}},
        {"at": 104.0, "kind": "node_up", "node": "primary"},  # before the restore: a blip, not the rejoin
        {"at": 116.0, "kind": "node_up", "node": "primary"},
        {"kind": "garbage"},
    ]
    t = timeline(events, wall_fault=100.0, restore_at=115.0, target="primary", standby="standby")
    assert t["first_failed_probe"] == pytest.approx(0.2) and t["marked_down"] == pytest.approx(0.4)
    assert t["switchover"] == pytest.approx(0.4)
    assert t["upstream_rewritten"] == pytest.approx(0.45) and t["reload_done"] == pytest.approx(0.6)
    assert t["node_restored"] == pytest.approx(15.0) and t["rejoined"] == pytest.approx(16.0)


def test_a_failover_seen_while_the_fault_was_still_being_injected_counts_before_zero():
    """Zero is when the injection returned (the fault in effect); a slow injection (an SSH
    session and a helper on a busy node) may already have been noticed by then."""
    events = [
        {"at": 95.0, "kind": "node_down", "node": "primary"},  # before the injection began: earlier
        {"at": 98.7, "kind": "probe_failed", "node": "primary"},
        {"at": 99.1, "kind": "node_down", "node": "primary"},
    ]
    t = timeline(events, wall_fault=100.0, restore_at=115.0, target="primary", standby="standby", injecting_s=2.0)
    assert t["first_failed_probe"] == pytest.approx(-1.3) and t["marked_down"] == pytest.approx(-0.9)
    # Without the injection's time, those events would be lost to the earlier story.
    assert "marked_down" not in timeline(events, 100.0, 115.0, "primary", "standby")

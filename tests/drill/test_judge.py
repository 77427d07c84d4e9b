"""The verdict against [drill]'s objectives (pure)."""

from __future__ import annotations

import math

from ttsha.config import parse
from ttsha.drill.judge import Objectives, Outcome, judge

GOOD = Outcome("primary", failed=0, rto_s=0.3, rpo_files=0, slowest_s=1.2, p99_during_s=0.9, rejoined_as="backup")


def test_objectives_come_from_the_config():
    config = parse({"drill": {"max_stall": "1500ms", "max_p99_during": "1s", "max_failed_requests": 2}})
    obj = Objectives.from_config(config.drill)
    assert (obj.max_stall_s, obj.max_p99_during_s, obj.max_failed_requests, obj.max_rto_s) == (1.5, 1.0, 2, 2.0)
    assert "slowest request <= 1.5 s" in obj.describe()


def test_all_met():
    assert judge(GOOD, Objectives()) == []


def test_a_stall_fails_the_drill_even_with_no_failed_request():
    from dataclasses import replace

    missed = judge(replace(GOOD, slowest_s=10.8), Objectives())
    assert missed == ["slowest request 10.800 s > max_stall 3 s"]
    missed = judge(replace(GOOD, p99_during_s=2.5), Objectives())
    assert missed == ["p99 in the 5 s after the fault 2.500 s > 2 s"]


def test_each_objective_can_be_missed():
    bad = Outcome("primary", failed=3, rto_s=None, rpo_files=1, slowest_s=math.nan, p99_during_s=math.nan,
                  rejoined_as=None, restore_error="start_command failed", unsent=40, planned=100)
    missed = judge(bad, Objectives())
    assert missed == ["restoring primary failed: start_command failed", "failed requests 3 > 0", "RTO unknown s > 2 s",
                      "RPO 1 files > 0", "no request completed", "no request in the 5 s after the fault",
                      "40 of 100 planned requests never sent: every client was stuck",
                      "primary did not rejoin as standby within 60 s"]


def test_a_gateway_drill_needs_a_quick_move_clean_requests_after_it_and_the_same_primary():
    from dataclasses import replace

    from ttsha.drill.judge import GatewayOutcome, judge_gateway

    good = GatewayOutcome("gateway-kill", "gw-a", answered_s=0.9, bound_s=1.5, failed_after_move=0, after_move=30,
                          primary_before="primary", primary_after="primary")
    assert judge_gateway(good) == []
    assert judge_gateway(replace(good, answered_s=1.6)) == [
        "VIP moved and a new request answered 1.600 s after the fault > 1.5 s"]
    assert "did not move" in judge_gateway(replace(good, answered_s=None))[0]
    assert judge_gateway(replace(good, failed_after_move=2)) == [
        "2 of 30 requests started after the VIP moved failed"]
    assert judge_gateway(replace(good, primary_after="standby")) == ["the primary node changed: primary -> standby"]
    assert "restoring gw-a failed" in judge_gateway(replace(good, restore_error="nginx did not start"))[0]


def test_a_frozen_gateway_is_allowed_the_track_script_s_two_failed_checks():
    from ttsha.drill.gateway import bound_s

    assert bound_s("gateway-kill", 1.0) == 1.5
    assert bound_s("gateway-freeze", 1.0) == 5.5

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

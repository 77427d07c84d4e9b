"""What clients saw, in numbers (pure)."""

from __future__ import annotations

import math

import pytest

from ttsha.drill import stats
from ttsha.drill.stats import Sample

A, B = "10.0.0.1:8900", "10.0.0.2:8900"
NAMES = {A: "primary", B: "standby"}


def s(at, status=200, latency=0.1, upstream=A, kind="new", **kw):
    return Sample(at, kind, status, latency, upstream, **kw)


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert stats.percentile(values, 0.5) == 50 and stats.percentile(values, 0.99) == 99
    assert stats.percentile(values, 1.0) == 100 and stats.percentile([3.0], 0.99) == 3.0
    assert math.isnan(stats.percentile([], 0.5))


def test_latency_counts_from_when_a_request_was_due():
    table = stats.latency_table([s(1.0, latency=0.2, lag_s=2.0)])
    assert table["during"]["max"] == pytest.approx(2200)


def test_windows_and_latency_table():
    samples = [s(-1, latency=0.1), s(0.0, latency=0.2), s(4.99, latency=3.0), s(5.0, latency=0.4)]
    table = stats.latency_table(samples)
    assert {k: v["n"] for k, v in table.items()} == {"before": 1, "during": 2, "after": 1}
    assert table["during"]["max"] == pytest.approx(3000) and table["during"]["p99"] == pytest.approx(3000)
    assert math.isnan(stats.latency_table([])["during"]["p50"])


def test_failures_rto_and_the_standby_by_its_nginx_address():
    samples = [s(-1), s(0.1, status=0, latency=0.05, upstream="", error="refused"),
               s(0.2, status=503, latency=0.1, upstream=f"{A}, {B}", kind="fetch"),
               s(0.3, latency=0.2, upstream=f"{A}, {B}"), s(0.5, upstream=B)]
    assert stats.failures(samples) == {"connection": 1, "503": 1}
    assert stats.failures_by_kind(samples) == {"new": {"connection": 1}, "fetch": {"503": 1}}
    first = stats.first_success_on(samples, B)
    assert first == pytest.approx(0.5)  # the retried request ended on B at 0.3 + 0.2
    assert stats.first_success_on(samples, "standby.example:8900") is None
    assert stats.rto(samples, first) == pytest.approx(0.5)
    assert stats.rto([s(-1), s(1)], None) is None  # no failover seen: no RTO
    assert stats.rto([s(1, status=502, latency=0.5)], None) == pytest.approx(1.5)


def test_the_slowest_requests_say_why():
    samples = [s(-2, latency=0.1, cache="HIT", kind="hot"),
               s(0.5, latency=10.2, upstream=f"{A}, {B}", upstream_status="504, 200", cache="MISS"),
               s(1.0, latency=4.0, upstream=B, cache="MISS", lag_s=1.5),
               s(2.0, status=0, latency=0.5, upstream="", error="timed out")]
    top = stats.slowest(samples, NAMES, n=3, concurrency=8)
    assert [t["latency_s"] for t in top] == [10.2, 5.5, 0.5]  # from when each was due
    assert top[1]["sent_late_s"] == 1.5
    assert top[0]["retried"] and top[0]["window"] == "during"
    assert top[0]["why"] == "retried by the gateway: primary (504) then standby (200); synthesized"
    assert top[1]["why"] == "answered by standby; synthesized; sent 1.5 s late (all 8 clients busy)"
    assert top[2]["why"] == "no answer (timed out)"
    assert stats.explain(s(0, status=404, upstream="1.2.3.4:80", kind="fetch"), NAMES) == \
        "answered by 1.2.3.4:80; status 404"


def test_new_texts_answered_from_cache_are_counted():
    assert stats.new_cached([s(0, cache="HIT"), s(0, cache="MISS"), s(0, cache="HIT", kind="hot")]) == 1


def test_requests_are_counted_apart_before_and_after_the_vip_moved():
    samples = [s(-1.0), s(0.1, status=0), s(0.5, status=0), s(0.9), s(1.2, latency=0.3), s(2.0, status=502)]
    assert stats.around_move(samples, 0.8) == {"before_move": 3, "failed_before_move": 2,
                                               "after_move": 3, "failed_after_move": 1}
    # Never moved: every request counts as sent to the faulted gateway.
    assert stats.around_move(samples, None)["before_move"] == 6


def test_the_first_answer_after_the_move_is_the_earliest_end_of_a_request_sent_after_it():
    samples = [s(0.5, latency=0.1), s(0.9, latency=0.6), s(1.0, latency=0.2), s(1.1, status=0, latency=0.01)]
    assert stats.first_answer_after(samples, 0.8) == pytest.approx(1.2)
    assert stats.first_answer_after(samples, None) is None
    assert stats.first_answer_after([s(0.9, status=0)], 0.8) is None

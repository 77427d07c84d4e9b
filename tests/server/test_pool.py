"""The admission rule as a pure class, and the pool that applies it."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from ttsha.server.pool import JOB_OVERHEAD_UNITS, Admission, job_units
from ttsha.server.service import CANARY_TEXT

JOB = job_units(20)  # a 20-character request


def test_the_first_measurement_replaces_the_guess_then_a_weighted_mean():
    rule = Admission(workers=2, seconds_per_unit=1.0)
    rule.observe(10, 0.5)  # the warm-up
    assert rule.seconds_per_unit == pytest.approx(0.05)
    rule.observe(10, 1.5)
    assert rule.seconds_per_unit == pytest.approx(0.8 * 0.05 + 0.2 * 0.15)
    rule.observe(0, 3.0)  # nothing to learn from
    assert rule.seconds_per_unit == pytest.approx(0.07)


def test_a_free_worker_takes_any_job_however_long():
    rule = Admission(workers=2, seconds_per_unit=0.1)
    assert rule.retry_after(job_units(2000), waiting=0, waiting_units=0, running=[], deadline=20) is None
    assert rule.retry_after(job_units(2000), waiting=0, waiting_units=0, running=[(JOB, 0.0)], deadline=20) is None
    # Both workers busy: the same job waits, and alone it outlasts the deadline.
    running = [(JOB, 0.0), (JOB, 0.0)]
    assert rule.retry_after(job_units(2000), waiting=0, waiting_units=0, running=running, deadline=20) is not None


def test_a_burst_is_admitted_while_it_can_finish_in_time():
    """Two workers, 2.4 s a job: with k jobs waiting ahead, a new one finishes at 1.2 (k + 2) + 2.4 s."""
    rule = Admission(workers=2, seconds_per_unit=0.1)
    running = [(JOB, 0.0), (JOB, 0.0)]
    admitted = 0
    while rule.retry_after(JOB, admitted, admitted * JOB, running, deadline=20.0) is None:
        admitted += 1
        assert admitted < 100
    assert admitted == 13  # behind 12: 1.2 * 14 + 2.4 = 19.2 s; behind 13: 20.4 s
    assert rule.finish_in(JOB, 13, 13 * JOB, running) == pytest.approx(20.4)
    assert rule.retry_after(JOB, 13, 13 * JOB, running, deadline=20.0) == 1


def test_running_jobs_count_only_what_they_still_need():
    rule = Admission(workers=2, seconds_per_unit=0.1)
    fresh = rule.finish_in(JOB, 4, 4 * JOB, [(JOB, 0.0), (JOB, 0.0)])
    half_done = rule.finish_in(JOB, 4, 4 * JOB, [(JOB, 1.2), (JOB, 1.2)])
    overdue = rule.finish_in(JOB, 4, 4 * JOB, [(JOB, 9.0), (JOB, 9.0)])
    assert fresh - half_done == pytest.approx(1.2)
    assert overdue == pytest.approx((4 * JOB * 0.1) / 2 + JOB * 0.1)  # never negative


def test_retry_after_is_when_the_backlog_would_let_it_fit():
    rule = Admission(workers=1, seconds_per_unit=1.0)
    running = [(10.0, 0.0)]
    # 10 s running + 30 s queued + 5 s own = 45 s; with a 20 s deadline, 25 s later it fits.
    assert rule.retry_after(5.0, 3, 30.0, running, deadline=20.0) == 25
    assert job_units(0) == JOB_OVERHEAD_UNITS


def test_server_admits_a_burst_it_can_finish_and_refuses_beyond_the_deadline(make_node, fake_engine):
    fake_engine.seconds_per_char = 0.02
    node = make_node(fake_engine, start=False, workers=2, queue_size=64, deadline=2.0)
    node.service.start()
    pool = node.service.pool
    # Seeded by the warm-up (the canary: ten characters and a full stop), before any request.
    assert pool.admission.observed == 1
    spu = pool.admission.seconds_per_unit
    assert 0.2 / job_units(len(CANARY_TEXT)) <= spu < 3 * 0.2 / job_units(len(CANARY_TEXT))
    job = JOB * spu
    # However long the two running jobs have run, this many requests fit; never more than at_most.
    surely = math.floor((2.0 - 2 * job) / (job / 2)) + 3
    at_most = math.floor((2.0 - job) / (job / 2)) + 3
    assert surely >= 6

    fake_engine.gate.clear()
    results: dict[int, tuple[int, dict, str | None]] = {}

    def send(i: int) -> None:
        resp, data = node.client.synth(text=f"{i:02d}" + "突发请求的重试来自刚刚失效的主节点现在" [: 18])
        results[i] = (resp.status, json.loads(data) if resp.status != 200 else {}, resp.getheader("Retry-After"))

    threads = []
    for i in range(at_most + 2):  # bounded: one past what can fit
        thread = threading.Thread(target=send, args=(i,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 5
        # Each request is either in the pool or refused before the next one is sent.
        while pool.queue_depth + pool.busy < i + 1 and i not in results and time.monotonic() < deadline:
            time.sleep(0.005)
        if i in results:
            break
    refused = [i for i, (status, _, _) in results.items() if status == 503]
    assert refused, "a request beyond the deadline must be refused"
    first = refused[0]
    assert surely <= first <= at_most, (first, surely, at_most)
    status, body, retry_after = results[first]
    assert body["error"] == "overloaded" and "deadline" in body["message"]
    assert retry_after is not None and int(retry_after) >= 1
    fake_engine.gate.set()
    for thread in threads:
        thread.join(30)
    assert [results[i][0] for i in range(first)] == [200] * first  # the whole admitted burst


def test_queued_requests_go_oldest_first_by_their_arrival_at_the_gateway():
    """A request retried from a dead node arrives here late but has waited longest: it goes first."""
    from concurrent.futures import Future

    from ttsha.server.pool import SynthesisPool

    pool = SynthesisPool(workers=1, queue_size=8)
    pool.start()
    gate, order = threading.Event(), []
    try:
        blocker: Future = pool.submit(lambda: gate.wait(30))
        now = time.time()
        # Submitted in this order while the only worker is busy.
        futures = [pool.submit(lambda name=name: order.append(name), arrived=arrived)
                   for name, arrived in (("new", None), ("retried", now - 4.0), ("older-retried", now - 6.0),
                                         ("just-before", now - 0.5))]
        gate.set()
        for future in (blocker, *futures):
            future.result(30)
    finally:
        gate.set()
        pool.stop(5)
    assert order == ["older-retried", "retried", "just-before", "new"]


def test_the_server_serves_a_request_stamped_earlier_by_the_gateway_first(make_node, fake_engine):
    from ttsha.protocol import ARRIVAL_HEADER

    spoken: list[str] = []
    speak = fake_engine._synthesize_piece

    def recording(text, *args):
        spoken.append(text)
        return speak(text, *args)

    fake_engine._synthesize_piece = recording
    node = make_node(fake_engine, workers=1, queue_size=8)
    fake_engine.gate.clear()
    fake_engine.started.clear()
    results: dict[str, int] = {}

    def send(text: str, headers: dict[str, str]) -> None:
        resp, _ = node.client.request("POST", "/v1/synthesize", body={"text": text}, headers=headers)
        results[text] = resp.status

    def start(text: str, headers: dict[str, str], queued: int) -> threading.Thread:
        thread = threading.Thread(target=send, args=(text, headers))
        thread.start()
        deadline = time.monotonic() + 10
        while node.service.pool.queue_depth < queued and time.monotonic() < deadline:
            time.sleep(0.005)
        assert node.service.pool.queue_depth == queued
        return thread

    threads = [threading.Thread(target=send, args=("占着工人。", {}))]
    threads[0].start()
    assert fake_engine.started.wait(10)
    threads.append(start("新来的请求。", {}, 1))
    threads.append(start("从失效节点重试的请求。", {ARRIVAL_HEADER: f"t={time.time() - 3:.3f}"}, 2))
    # A stamp that is not a time is ignored (the request counts as arriving now), never an error.
    threads.append(start("乱写的时间戳。", {ARRIVAL_HEADER: "t=soon"}, 3))
    fake_engine.gate.set()
    for thread in threads:
        thread.join(30)
    assert set(results.values()) == {200}
    assert spoken[-3:] == ["从失效节点重试的请求", "新来的请求", "乱写的时间戳"], spoken  # pieces lose their stop

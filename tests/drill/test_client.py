"""The drill's client loop against a gateway that stops answering (a real socket)."""

from __future__ import annotations

import random
import socket
import time

from ttsha.drill.client import Gateway, Traffic
from ttsha.drill.traffic import Mix, schedule


def test_stuck_clients_make_requests_late_then_unsent_and_the_loop_stays_bounded():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # connections are accepted by the kernel, never answered
        port = server.getsockname()[1]
        plan = schedule(rate=20, duration=1.0, mix=Mix(new=1, hot=0, fetch=0), rng=random.Random(1))
        traffic = Traffic(Gateway(f"http://127.0.0.1:{port}", timeout=0.5), plan, seed=1, concurrency=2)
        started = time.monotonic()
        traffic.start()
        time.sleep(max(0.0, traffic.end_time + 0.25 - time.monotonic()))
        traffic.stop()
        assert traffic.join(5.0)
        elapsed = time.monotonic() - started
    assert len(plan) == 20 and elapsed < 3.0  # bounded by the schedule and the client timeout
    # Two clients, each stuck 0.5 s per request for about 1.25 s: a handful sent, late; the rest never.
    assert 2 <= traffic.sent <= 8 and traffic.unsent == 20 - traffic.sent
    assert len(traffic.samples) == traffic.sent
    assert all(s.status == 0 and "timed out" in s.error for s in traffic.samples)
    assert max(s.lag_s for s in traffic.samples) >= 0.4

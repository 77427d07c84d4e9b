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


class _CuttingGateway:
    """Answers a synthesis with 1000 bytes announced, cuts it after 400; serves the rest by Range."""

    BODY = bytes(range(256)) * 3 + bytes(232)

    def __init__(self, with_id: bool = True) -> None:
        import http.server
        import threading

        body, with_id_ = self.BODY, with_id

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                if with_id_:
                    self.send_header("X-Audio-Id", "ab" * 16)
                self.end_headers()
                self.wfile.write(body[:400])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # the node died mid-body

            def do_GET(self):
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_body_cut_mid_way_is_completed_by_range_and_counted():
    from ttsha.drill.client import call

    gw = _CuttingGateway()
    try:
        resp = Gateway(gw.url, timeout=5).synthesize("一")
        assert resp.status == 200 and resp.body == _CuttingGateway.BODY and resp.resumed == 1
        sample = call(Gateway(gw.url, timeout=5), "new", "一")
        assert sample.ok and sample.resumed
    finally:
        gw.close()


def test_a_cut_body_without_an_id_is_a_failure():
    from ttsha.drill.client import call

    gw = _CuttingGateway(with_id=False)
    try:
        sample = call(Gateway(gw.url, timeout=5), "new", "一")
        assert sample.status == 0 and "IncompleteRead" in sample.error
    finally:
        gw.close()

"""One probe of a node's /health, against a real HTTP server on loopback."""

from __future__ import annotations

import http.server
import threading

import pytest

from ttsha.monitor.daemon import probe

from .conftest import reply_json


@pytest.fixture
def node():
    """A /health that answers ready after ``delay`` seconds."""
    state = {"delay": 0.0}
    gate = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            gate.wait(state["delay"])  # never set: waits exactly the delay
            reply_json(self, {"status": "ready"})

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_a_ready_node_is_eligible(node):
    url, _ = node
    assert probe(url, 0.3, 0.5, slow_after=0.2) == (True, {"status": "ready"}, "")


def test_a_node_that_answers_too_slowly_is_not(node):
    url, state = node
    state["delay"] = 0.3  # under the read timeout, over the slow limit: a gray failure
    ok, body, reason = probe(url, 0.3, 1.0, slow_after=0.2)
    assert not ok and body is None and reason == "slow: no answer within 200 ms"  # not waited for past the limit
    assert probe(url, 0.3, 1.0, slow_after=0.0)[0]  # 0: no limit
    # Late but within the socket's patience (a read timeout below slow_after): judged by the time it took.
    ok, body, reason = probe(url, 0.3, 0.35, slow_after=0.5)
    assert ok
    state["delay"] = 0.25
    ok, body, reason = probe(url, 0.3, 0.2, slow_after=0.0)
    assert not ok and "timed out" in reason


def test_a_node_that_does_not_answer_in_time_is_not(node):
    url, state = node
    state["delay"] = 1.0
    ok, body, reason = probe(url, 0.3, 0.2, slow_after=0.2)
    assert not ok and body is None and "timed out" in reason

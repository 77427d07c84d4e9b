"""Alerts reach a real webhook on loopback, are rate limited and never block."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ttsha.alert import Alert, Alerter
from ttsha.config import AlertConfig


class Hook:
    def __init__(self, fail_first: int = 0, delay: float = 0.0) -> None:
        self.received: list[dict] = []
        self.fail_first, self.delay = fail_first, delay
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(hook.delay)
                if hook.fail_first > 0:
                    hook.fail_first -= 1
                    self.send_response(500)
                else:
                    hook.received.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    return predicate()


def test_json_payload(hook):
    alerter = Alerter(AlertConfig(webhook_url=hook.url), source="gw1", backoff=0.01)
    assert alerter.send(Alert("switchover", "switchover standby: primary -> standby", "warning",
                              data={"to": "standby"}))
    assert wait(lambda: hook.received)
    body = hook.received[0]
    assert body["kind"] == "switchover" and body["source"] == "gw1" and body["data"] == {"to": "standby"}
    alerter.close()


def test_wecom_payload(hook):
    alerter = Alerter(AlertConfig(webhook_url=hook.url, format="wecom"), source="gw1", backoff=0.01)
    alerter.send(Alert("all_down", "every node is down", "critical"))
    assert wait(lambda: hook.received)
    body = hook.received[0]
    assert body["msgtype"] == "text" and "every node is down" in body["text"]["content"]
    assert "[ttsha critical]" in body["text"]["content"]
    alerter.close()


def test_retries_then_delivers(hook):
    hook.fail_first = 2
    alerter = Alerter(AlertConfig(webhook_url=hook.url, retries=3), backoff=0.01)
    alerter.send(Alert("node_down", "node_down primary"))
    assert wait(lambda: hook.received)
    assert len(hook.received) == 1
    alerter.close()


def test_rate_limited_per_kind(hook):
    alerter = Alerter(AlertConfig(webhook_url=hook.url, min_interval=60), backoff=0.01)
    now = time.time()
    assert alerter.send(Alert("node_down", "a", at=now))
    assert not alerter.send(Alert("node_down", "b", at=now + 1))  # same kind within the interval
    assert alerter.send(Alert("switchover", "c", at=now + 1))  # another kind
    assert alerter.send(Alert("node_down", "d", at=now + 61))
    assert wait(lambda: len(hook.received) == 3)
    assert [b["message"] for b in hook.received] == ["a", "c", "d"]
    assert alerter.dropped == 1
    alerter.close()


def test_a_dead_or_slow_webhook_never_blocks():
    slow = Hook(delay=3.0)
    try:
        alerter = Alerter(AlertConfig(webhook_url=slow.url, retries=0), backoff=0.01)
        started = time.monotonic()
        for i in range(5):
            alerter.send(Alert(f"kind{i}", "x"))
        assert time.monotonic() - started < 0.1
        alerter.close(timeout=30)  # let the deliveries finish inside the test
    finally:
        slow.close()
    dead = Alerter(AlertConfig(webhook_url="http://127.0.0.1:9/none", retries=1), backoff=0.01)
    started = time.monotonic()
    assert dead.send(Alert("node_down", "x"))
    assert time.monotonic() - started < 0.1
    dead.close(timeout=10)


def test_no_webhook_logs_only(caplog):
    alerter = Alerter(AlertConfig())
    assert alerter.send(Alert("node_down", "primary is down"))
    assert "primary is down" in caplog.text
    alerter.close()

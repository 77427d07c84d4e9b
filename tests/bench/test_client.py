"""The benchmark's outside client against a small real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import client
import pytest


class _Node(BaseHTTPRequestHandler):
    """Synthesis by hash; every fifth synthesis refused with 503, as an overloaded node does."""

    texts: list[str] = []
    count = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, body: bytes, audio_id: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", "127.0.0.2:1")
        if audio_id:
            self.send_header("X-Audio-Id", audio_id)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"]
        with self.lock:
            type(self).count += 1
            refuse = type(self).count % 5 == 0
            self.texts.append(text)
        if refuse:
            self._answer(503, b'{"error": "overloaded"}')
        else:
            self._answer(200, b"RIFF....", hashlib.sha256(text.encode()).hexdigest()[:16])

    def do_GET(self) -> None:
        self._answer(200 if self.path.startswith("/v1/audio/") else 404, b"RIFF....")


@pytest.fixture
def node():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Node)
    _Node.texts, _Node.count = [], 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_traffic_is_bounded_open_loop_and_fresh(node):
    start_at = time.monotonic() + 0.5
    out = subprocess.run([sys.executable, client.__file__, "traffic", "--url", node, "--rate", "40",
                          "--requests", "60", "--concurrency", "4", "--seed", "12", "--start-at", repr(start_at),
                          "--timeout", "5"], capture_output=True, text=True, timeout=60, check=True)
    samples = json.loads(out.stdout)["samples"]
    assert [s["i"] for s in samples] == list(range(60))  # exactly the requests asked for
    for s in samples:
        assert abs(s["due"] - (start_at + s["i"] / 40)) < 1e-6
        assert s["sent"] >= s["due"] - 0.01 and s["end"] >= s["sent"]
    kinds = {s["kind"] for s in samples}
    assert kinds == {"new", "hot", "fetch"}
    assert {s["status"] for s in samples} == {200, 503}  # refusals are recorded, not hidden
    assert all(s["upstream"] == "127.0.0.2:1" for s in samples)
    new = [t for t in _Node.texts if t not in client.HOT]
    assert len(new) == len(set(new)) > 10  # every new text is new
    # Another seed, other texts: a second run is not served from cache.
    assert not set(new) & {client.new_text(13, i) for i in range(60)}


def test_capacity_counts_successes_per_second(node):
    out = subprocess.run([sys.executable, client.__file__, "capacity", "--url", node, "--seconds", "1",
                          "--concurrency", "2", "--seed", "5"], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["ok"] > 0 and result["failed"] > 0  # the 503s are not counted as capacity
    assert result["rps"] == pytest.approx(result["ok"] / result["seconds"])


def test_a_dead_gateway_is_a_failure_not_a_crash():
    out = client.call("127.0.0.1", 1, 2.0, "GET", "/v1/voices", None)
    assert out["status"] == 0 and "ConnectionRefusedError" in out["error"]

"""``serve`` bounds its connections (issue 16, item 5): real sockets against
the server ``serve`` runs (BoundedWSGIServer), with short deadlines."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from ttsha.server.app import create_app
from ttsha.server.http import BoundedWSGIServer
from ttsha.server.service import Service
from ttsha.store import AudioStore

from ..server.conftest import SERVE, Client, FakeEngine

HEADER_TIMEOUT = 1.0


@pytest.fixture
def server(tmp_path):
    servers = []

    def make(**limits):
        service = Service(SERVE, FakeEngine(), AudioStore(tmp_path / f"store{len(servers)}"))
        limits.setdefault("header_timeout", HEADER_TIMEOUT)
        limits.setdefault("body_timeout", HEADER_TIMEOUT)
        srv = BoundedWSGIServer("127.0.0.1", 0, create_app(service), **limits)
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        service.start()
        servers.append((srv, service, thread))
        return srv

    yield make
    for srv, service, thread in servers:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        service.stop(timeout=5)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server ends the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_slowloris_does_not_stop_normal_clients(server):
    srv = server()
    port = srv.server_address[1]
    attackers = []
    for _ in range(300):
        s = connect(port)
        s.sendall(b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\n")
        attackers.append(s)
    try:
        client = Client("127.0.0.1", port)
        for _ in range(5):
            started = time.monotonic()
            resp, data = client.request("GET", "/health", timeout=5)
            assert resp.status == 200 and json.loads(data)["status"] == "ready"
            resp, data = client.synth(text="你好")
            assert resp.status == 200 and data[:4] == b"RIFF"
            assert time.monotonic() - started < 5
        for s in attackers:  # keep dribbling: a total deadline, not a per-read one
            s.sendall(b"X-a: b\r\n")
        deadline = time.monotonic() + HEADER_TIMEOUT + 10
        assert all(closed_by_server(s, max(0.1, deadline - time.monotonic())) for s in attackers)
        wait = time.monotonic() + 5
        while srv.connections and time.monotonic() < wait:
            time.sleep(0.05)
        assert srv.connections == 0 and srv.reaped >= 300
    finally:
        for s in attackers:
            s.close()


def test_an_idle_connection_is_closed_after_the_header_timeout(server):
    srv = server()
    s = connect(srv.server_address[1])
    try:
        started = time.monotonic()
        assert closed_by_server(s, HEADER_TIMEOUT + 5)
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9
    finally:
        s.close()


def test_a_slow_body_is_cut_off(server):
    srv = server()
    s = connect(srv.server_address[1])
    try:
        s.sendall(b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"te")
        status, _, body = read_response(s)  # the app sees the body end early: a 4xx, then close
        assert 400 <= status < 500 and json.loads(body)["error"]
        assert closed_by_server(s, 5)
    finally:
        s.close()


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def hold_slots(port: int, n: int, head: bytes = b"GET /health HTTP/1.1\r\nHost: x\r\n") -> list[socket.socket]:
    """``n`` slowloris connections: a request head that never ends."""
    held = []
    for _ in range(n):
        s = connect(port)
        s.sendall(head)
        held.append(s)
    return held


def test_health_answers_while_a_slowloris_holds_every_slot(server):
    """Issue 16: beyond the cap, /health keeps answering (the monitor must not mark
    the node down) and other clients get a 503 JSON with Retry-After, never a hang.
    The attackers send the start of a /health request: a slow one cannot take a
    reserved slot, only a whole head can."""
    srv = server(max_connections=20, header_timeout=60)
    port = srv.server_address[1]
    holders = hold_slots(port, 20)
    attackers = []
    try:
        assert wait_for(lambda: srv.connections == 20)
        attackers = hold_slots(port, 280)  # beyond the cap (more than the overflow holds: the oldest go first)
        assert wait_for(lambda: srv.overflow.pending > 0)
        client = Client("127.0.0.1", port)
        for _ in range(10):
            resp, data = client.request("GET", "/health", timeout=10)
            assert resp.status == 200 and json.loads(data)["status"] == "ready"
        assert srv.health_reserved >= 10 and srv.connections >= 20
        resp, data = client.synth(text="你好", timeout=20)
        assert resp.status == 503 and resp.getheader("Content-Type") == "application/json"
        assert json.loads(data)["error"] == "too_many_connections" and resp.getheader("Retry-After") == "1"
        # Every attacker beyond the cap is answered and closed; the slot holders still hold theirs.
        deadline = time.monotonic() + 15
        assert all(closed_by_server(s, max(0.1, deadline - time.monotonic())) for s in attackers)
        assert srv.connections == 20 and srv.refused >= 280
    finally:
        for s in holders + attackers:
            s.close()
    assert wait_for(lambda: srv.connections == 0)
    resp, data = Client("127.0.0.1", port).synth(text="你好")
    assert resp.status == 200 and data[:4] == b"RIFF"


def test_beyond_the_cap_a_client_is_served_when_a_slot_frees(server):
    srv = server(max_connections=3, header_timeout=60, overflow_wait=30)
    port = srv.server_address[1]
    holders = hold_slots(port, 3, b"POST /v1/synthesize HTTP/1.1\r\n")
    got: list = []
    try:
        assert wait_for(lambda: srv.connections == 3)
        thread = threading.Thread(target=lambda: got.append(Client("127.0.0.1", port).synth(text="你好", timeout=40)))
        thread.start()
        assert wait_for(lambda: srv.overflow.waiting == 1)  # its whole request is in; no slot yet
        holders.pop().close()
        thread.join(40)
        resp, data = got[0]
        assert resp.status == 200 and data[:4] == b"RIFF" and srv.refused == 0
    finally:
        for s in holders:
            s.close()


def test_beyond_the_cap_a_request_without_a_slot_gets_503_json(server):
    srv = server(max_connections=5, header_timeout=60, overflow_wait=0.5)
    port = srv.server_address[1]
    held = hold_slots(port, 5)
    try:
        assert wait_for(lambda: srv.connections == 5)
        extra = connect(port)  # sends nothing at all
        status, headers, body = read_response(extra)
        assert status == 503 and json.loads(body)["error"] == "too_many_connections" and headers["retry-after"]
        assert closed_by_server(extra, 5)
        extra.close()
        extra = connect(port)  # a whole request with a body that waits for no slot
        extra.sendall(b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 18\r\n\r\n{\"text\": \"\\u4f60\"}")
        status, headers, body = read_response(extra)
        assert status == 503 and json.loads(body)["error"] == "too_many_connections"
        extra.close()
        # HEAD /health with a query still takes a reserved slot; a /health POST (a body) does not.
        resp, _ = Client("127.0.0.1", port).request("HEAD", "/health?probe=1")
        assert resp.status == 200
        resp, _ = Client("127.0.0.1", port).request("POST", "/health", body={"x": 1})
        assert resp.status == 503
    finally:
        for s in held:
            s.close()
    assert wait_for(lambda: srv.connections == 0)
    resp, _ = Client("127.0.0.1", port).request("GET", "/health")
    assert resp.status == 200


def test_the_connection_closes_after_a_413(server):
    srv = server()
    s = connect(srv.server_address[1])
    try:
        s.sendall(b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 10000000\r\n\r\n")
        status, _, body = read_response(s)
        assert status == 413 and json.loads(body)["error"]
        # The client goes on sending slowly; the server still closes.
        stop = time.monotonic() + 10
        closed = False
        while time.monotonic() < stop and not closed:
            try:
                s.sendall(b"x" * 100)
            except OSError:
                closed = True
                break
            closed = closed_by_server(s, 0.2)
        assert closed
    finally:
        s.close()


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
])
def test_parser_errors_are_json(server, request_bytes, status):
    srv = server()
    s = connect(srv.server_address[1])
    try:
        s.sendall(request_bytes)
        got, headers, body = read_response(s)
        assert got == status and headers["content-type"] == "application/json"
        assert json.loads(body)["error"]
    finally:
        s.close()


def test_ordinary_requests_work_through_the_bounded_server(server):
    """Streaming, a chunked request body and the OpenAI route, as under `ttsha serve`."""
    srv = server()
    port = srv.server_address[1]
    resp, data = Client("127.0.0.1", port).synth(text="第一句。第二句。", stream=True)
    assert resp.status == 200 and data[:4] == b"RIFF" and resp.getheader("Transfer-Encoding") == "chunked"
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = {"model": "tts-1", "input": "你好", "response_format": "wav"}  # mp3 is OpenAI's default
    conn.request("POST", "/v1/audio/speech", body=iter([json.dumps(body).encode()]),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read()[:4] == b"RIFF"
    conn.close()
    assert srv.reaped == 0

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ttsha import httpclient


class _Handler(BaseHTTPRequestHandler):
    release = threading.Event()

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/stall":
            self.release.wait(10)  # until the test is done with it
            return
        if self.path == "/cut":
            self.send_response(503)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"status":')
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = json.dumps({"path": self.path, "claim": self.headers.get("X-Claim")}).encode()
        self.send_response(404 if self.path == "/missing" else 200)
        self.send_header("X-Upstream", "127.0.0.1:1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        got = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(got)))
        self.end_headers()
        self.wfile.write(got)


@pytest.fixture
def server():
    _Handler.release = threading.Event()  # a fresh one: the last test's is set
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    _Handler.release.set()
    srv.shutdown()
    srv.server_close()


def test_get_returns_status_lowercase_headers_and_json(server):
    reply = httpclient.get(server + "/health?x=1", headers={"X-Claim": "c"})
    assert reply.ok and reply.answered == 200 and not reply.error
    assert reply.headers["x-upstream"] == "127.0.0.1:1"
    assert reply.json_object() == {"path": "/health?x=1", "claim": "c"}


def test_an_error_status_is_an_answer_not_an_exception(server):
    reply = httpclient.get(server + "/missing")
    assert reply.status == 404 and not reply.ok and not reply.error


def test_post_json_sends_the_document(server):
    reply = httpclient.post_json(server + "/", {"text": "你好"})
    assert reply.status == 201 and reply.json() == {"text": "你好"}


def test_unreachable_is_status_zero_with_a_reason():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        reply = httpclient.get(f"http://127.0.0.1:{port}/health", timeout=2)
    assert reply.status == 0 and not reply.connected and "ConnectionRefused" in reply.error


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/", "not a url", "ftp://127.0.0.1/"])
def test_a_bad_url_is_status_zero_not_a_traceback(url):
    reply = httpclient.get(url)
    assert reply.status == 0 and reply.error.startswith("invalid url")


def test_a_stalled_peer_times_out_after_connecting(server):
    reply = httpclient.get(server + "/stall", connect_timeout=2, timeout=0.2)
    assert reply.status == 0 and reply.connected and reply.timed_out


def test_a_body_cut_short_keeps_its_status_and_what_came(server):
    reply = httpclient.get(server + "/cut")
    assert reply.status == 503 and reply.error and reply.answered == 0
    assert reply.body == b'{"status":'


def test_host_url_brackets_ipv6():
    assert httpclient.host_url("::1", 80, "/health") == "http://[::1]:80/health"
    assert httpclient.host_url("127.0.0.1", 80) == "http://127.0.0.1:80/"

"""The gateway's own refusals are JSON too (a real Nginx rendered by ttsha)."""

from __future__ import annotations

import json
import socket

import pytest


def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(("request_bytes", "status", "error"), [
    (b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n"
     b"Connection: close\r\n\r\n", 413, "request_entity_too_large"),
    (b"GET /v1/synthesize?text=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 414,
     "uri_too_long"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\nConnection: close\r\n\r\n", 431,
     "request_header_fields_too_large"),
])
def test_nginx_refusals_are_json(pair, request_bytes, status, error):
    _, _, gateway = pair
    got, headers, body = raw(gateway.port, request_bytes)
    assert got == status and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == error


def test_a_nodes_own_json_error_passes_through(pair):
    _, _, gateway = pair
    got, headers, body = raw(gateway.port, b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                           b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert got == 400 and json.loads(body)["error"] == "empty_text"

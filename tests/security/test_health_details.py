"""``/health`` internals only for the monitor and loopback (issue 16, item 8):
clients through a real Nginx gateway see the status alone."""

from __future__ import annotations

import http.client
import json

from werkzeug.test import Client as WsgiClient

from ttsha.monitor.daemon import probe
from ttsha.protocol import GATEWAY_HEADER, RoleVerifier, load_secret, probe_headers, sign_claim
from ttsha.server.app import create_app
from ttsha.server.service import Service
from ttsha.store import AudioStore

from ..server.conftest import SECRET, SERVE, FakeEngine, RoleSigner


def get_health(host: str, port: int, headers: dict | None = None) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/health", headers=headers or {})
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def test_through_the_gateway_the_status_alone(pair):
    config, nodes, gateway = pair
    assert get_health("127.0.0.1", gateway.port) == {"status": "ready"}
    # Nothing a client sends brings the internals back through the gateway.
    forged = {**sign_claim(b"y" * 32, "", "a", "gw", 1), GATEWAY_HEADER: "", "X-Forwarded-For": "127.0.0.1"}
    assert get_health("127.0.0.1", gateway.port, forged) == {"status": "ready"}
    # Direct on loopback (the replicator, an operator on the node): everything.
    direct = get_health(nodes["a"].host, nodes["a"].port)
    assert "pid" in direct and "role_claims" in direct
    # The monitor's signed probe: everything (it reads model_version and replication from it).
    secret = load_secret(config.monitor.secret_file)
    ok, body, _ = probe(nodes["a"].url, 1, 1, sign_claim(secret, "", "a", "gw", 1))
    assert ok and "pid" in body and "model_version" in body


def test_a_remote_caller_needs_the_monitors_signature(tmp_path):
    service = Service(SERVE, FakeEngine(), AudioStore(tmp_path / "store"), roles=RoleVerifier(SECRET, "a"))
    service.start()
    try:
        client = WsgiClient(create_app(service))
        remote = {"REMOTE_ADDR": "10.0.0.9", "SERVER_NAME": "10.0.0.2"}
        assert client.get("/health", environ_overrides=remote).get_json() == {"status": "ready"}
        assert client.get("/health", environ_overrides=remote, headers={"X-TTSHA-Role": "primary"}).get_json() == {
            "status": "ready"}
        # A gateway tool (failover's checks, drills): signed, no role.
        tool = client.get("/health", environ_overrides=remote, headers=probe_headers(SECRET, "a", "gw")).get_json()
        assert "pid" in tool and tool["role"] is None
        signed = client.get("/health", environ_overrides=remote, headers=RoleSigner().claim("primary")).get_json()
        assert signed["role"] == "primary" and "pid" in signed
        # The node itself on its own address (serve bound to 10.0.0.2, the replicator asking there).
        same_host = {"REMOTE_ADDR": "10.0.0.2", "SERVER_NAME": "10.0.0.2"}
        assert "pid" in client.get("/health", environ_overrides=same_host).get_json()
    finally:
        service.stop(timeout=5)


def test_metrics_are_not_served_through_the_gateway(pair):
    """Found trying issue 16 as an attacker: any client read a node's internals
    (replication lag and errors, queue, every route's counts) at GATEWAY/metrics.
    Prometheus scrapes each node directly (conf/prometheus)."""
    _, nodes, gateway = pair
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    conn.request("GET", "/metrics", headers={GATEWAY_HEADER: ""})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 403 and json.loads(body)["error"] == "forbidden" and b"ttsha_" not in body
    conn = http.client.HTTPConnection(nodes["a"].host, nodes["a"].port, timeout=5)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200 and b"ttsha_http_requests_total" in resp.read()
    conn.close()

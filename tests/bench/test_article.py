"""The article's gateway (the failover benchmark's baseline) on a real Nginx."""

from __future__ import annotations

import http.client
import json

import article

from ttsha.nginx import node_address


def _post(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/synthesize", body=json.dumps({"text": "你好。"}).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("X-Upstream", "")
    finally:
        conn.close()


def test_render_is_the_articles_upstream(pair):
    config, _, _ = pair
    upstream, site = article.render(config, "a", "b")
    a, b = (node_address(config.nodes[n]) for n in "ab")
    assert f"server {a} max_fails=2 fail_timeout=10s;" in upstream
    assert f"server {b} backup;" in upstream
    # Nginx's own retry policy and timeouts: none of ttsha's gateway settings.
    for directive in ("proxy_next_upstream", "proxy_connect_timeout", "proxy_read_timeout", "keepalive"):
        assert directive not in upstream + site


def test_install_routes_to_the_primary_then_the_backup_when_it_dies(pair):
    config, nodes, gateway = pair
    article.install(config, "a", "b")
    assert article.served_generation(config) == article.GENERATION
    a, b = (node_address(config.nodes[n]) for n in "ab")
    assert _post(gateway.port) == (200, a)
    nodes["a"].kill()
    # Refused before the request was sent: even Nginx's default policy tries the backup.
    status, upstream = _post(gateway.port)
    assert status == 200
    assert upstream.split(",")[-1].strip() == b

"""Optional API keys and per-key rate limits at the gateway (issue 16): a
real Nginx rendered by ttsha in front of a real node process."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from ttsha.cli import main
from ttsha.config import Config, MonitorConfig, NginxConfig, NodeConfig
from ttsha.errors import ConfigError
from ttsha.nginx import PrivateGateway, load_api_keys, render_site, render_upstream

from ..monitor.conftest import NodeProcess, free_port, need

GOOD = "k1-0123456789abcdef0123456789"
SLOW = "k2-abcdef0123456789abcdef0123"


def keys_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "api_keys"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def gateway(tmp_path):
    binary = need("nginx", "nginx")
    node = NodeProcess("127.0.0.2", free_port("127.0.0.2"), tmp_path / "store")
    node.start()
    try:
        yield from _gateway(tmp_path, binary, node)
    finally:
        node.close()


def _gateway(tmp_path, binary, node):
    prefix = tmp_path / "gw"
    prefix.mkdir()
    config = Config(
        nodes={"a": NodeConfig(url=node.url)},
        monitor=MonitorConfig(state_file=tmp_path / "m.json", control_socket=tmp_path / "m.sock"),
        nginx=NginxConfig(listen=f"127.0.0.1:{free_port()}", upstream_file=prefix / "ttsha-upstream.conf",
                          api_keys_file=keys_file(tmp_path, f"# name key [rate]\napp {GOOD}\nbatch {SLOW} 1r/m\n"),
                          api_rate="50r/s", api_burst=3),
    )
    (prefix / "ttsha-upstream.conf").write_text(render_upstream(config.nodes, {"a": "primary"}))
    gw = PrivateGateway(config, prefix, binary)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def request(port: int, method: str, path: str, key: str | None = None, body: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_a_key_is_required_and_errors_are_json(gateway):
    for key in (None, "not-a-valid-key-0000000000", GOOD + "x"):
        resp, data = request(gateway.port, "POST", "/v1/synthesize", key, {"text": "你好"})
        assert resp.status == 401 and resp.getheader("Content-Type") == "application/json"
        assert json.loads(data)["error"] == "unauthorized" and "Bearer" in resp.getheader("WWW-Authenticate")
    resp, data = request(gateway.port, "POST", "/v1/synthesize", GOOD, {"text": "你好"})
    assert resp.status == 200 and data[:4] == b"RIFF"
    resp, data = request(gateway.port, "POST", "/v1/audio/speech", GOOD, {"model": "tts-1", "input": "你好"})
    assert resp.status == 200
    # /health stays open (status alone) for load balancers.
    resp, data = request(gateway.port, "GET", "/health")
    assert resp.status == 200 and json.loads(data) == {"status": "ready"}


def test_rate_limits_are_per_key_and_json(gateway):
    # 1 per minute with a burst of 3: four pass at once, the fifth is refused.
    statuses = [request(gateway.port, "GET", "/v1/voices", SLOW) for _ in range(5)]
    assert [resp.status for resp, _ in statuses] == [200, 200, 200, 200, 429]
    resp, data = statuses[-1]
    assert json.loads(data)["error"] == "rate_limited" and resp.getheader("Content-Type") == "application/json"
    resp, _ = request(gateway.port, "GET", "/v1/voices", GOOD)  # another key, its own bucket
    assert resp.status == 200


@pytest.mark.parametrize(("text", "match"), [
    (f'app "Bearer x"; }} server {{ {GOOD}\n', "NAME KEY"),
    (f'app {GOOD};return\n', "16 or more"),
    (f"app {GOOD} 10r/s;\n", "rate"),
    (f"a;b {GOOD}\n", "name"),
    (f"app {GOOD}\napp {SLOW}\n", "twice"),
    ("# nothing\n", "no key"),
])
def test_a_bad_keys_file_is_refused(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_api_keys(keys_file(tmp_path, text), "10r/s")


def test_a_keys_file_others_can_read_is_refused(tmp_path, capsys):
    path = keys_file(tmp_path, f"app {GOOD}\n", mode=0o644)
    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(f'[nginx]\napi_keys_file = "{path}"\n')
    assert main(["--config", str(cfg), "nginx", "render", "--stdout"]) == 3
    assert "chmod 600" in capsys.readouterr().err


def test_the_rendered_site_with_keys_is_private(tmp_path):
    path = keys_file(tmp_path, f"app {GOOD}\n")
    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(f'[nginx]\napi_keys_file = "{path}"\nupstream_file = "{tmp_path}/up.conf"\n'
                   f'site_file = "{tmp_path}/site.conf"\n')
    assert main(["--config", str(cfg), "nginx", "render"]) == 0
    assert (tmp_path / "site.conf").stat().st_mode & 0o077 == 0
    assert GOOD in (tmp_path / "site.conf").read_text()


def test_without_keys_nothing_changes():
    assert "ttsha_api" not in render_site(Config())

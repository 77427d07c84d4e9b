from __future__ import annotations

import json
import subprocess
import time

import pytest

from ttsha.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def gw_config(tmp_path):
    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(
        f"""
[nginx]
listen = "127.0.0.1:18099"
upstream_file = "{tmp_path}/gw/ttsha-upstream.conf"
site_file = "{tmp_path}/site.conf"
[monitor]
state_file = "{tmp_path}/monitor.json"
"""
    )
    return cfg


def test_render_full_prefix_passes_nginx_t(capsys, tmp_path, gw_config):
    from ..monitor.conftest import need

    nginx = need("nginx", "nginx")
    code, _, err = run(capsys, "--config", str(gw_config), "nginx", "render", "--prefix", str(tmp_path / "gw"))
    assert code == 0 and "nginx.conf" in err
    upstream = (tmp_path / "gw" / "ttsha-upstream.conf").read_text()
    assert "127.0.0.2:8900 max_fails=1" in upstream and "127.0.0.3:8900 backup" in upstream
    site = (tmp_path / "gw" / "ttsha-site.conf").read_text()
    assert "proxy_next_upstream error timeout http_502 http_503 non_idempotent" in site
    assert "proxy_connect_timeout 500ms" in site and "client_max_body_size" in site
    main_conf = (tmp_path / "gw" / "nginx.conf").read_text()
    assert "worker_shutdown_timeout" in main_conf
    gw = tmp_path / "gw"
    subprocess.run([nginx, "-t", "-q", "-p", str(gw), "-c", str(gw / "nginx.conf")], check=True)
    # An existing upstream file (the monitor's) is left alone without --force.
    (tmp_path / "gw" / "ttsha-upstream.conf").write_text(upstream.replace("backup", "down"))
    run(capsys, "--config", str(gw_config), "nginx", "render", "--prefix", str(tmp_path / "gw"))
    assert "down" in (tmp_path / "gw" / "ttsha-upstream.conf").read_text()


def test_render_stdout(capsys, tmp_path, gw_config):
    code, out, _ = run(capsys, "--config", str(gw_config), "nginx", "render", "--stdout")
    assert code == 0 and "listen 127.0.0.1:18099;" in out
    assert f"include {tmp_path}/gw/ttsha-upstream.conf;" in out


def test_shipped_example_matches_the_renderer(capsys):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent.parent
    code, out, _ = run(capsys, "--config", str(root / "conf" / "ttsha.toml"), "nginx", "render", "--stdout")
    assert code == 0
    assert (root / "conf" / "nginx" / "ttsha.conf").read_text() == out, "regenerate conf/nginx/ttsha.conf"


def test_status(capsys, tmp_path, gw_config):
    code, _, err = run(capsys, "--config", str(gw_config), "status")
    assert code == 1 and "is 'ttsha monitor' running" in err
    now = time.time()
    (tmp_path / "monitor.json").write_text(
        json.dumps(
            {
                "updated_at": now,
                "mode": "active-standby",
                "primary": "standby",
                "nodes": {
                    "primary": {"status": "down", "role": "down", "since": now - 30, "last_probe_ms": 0.4,
                                "last_error": "ConnectionRefusedError", "engine": "embedded", "model_version": "v1"},
                    "standby": {"status": "up", "role": "primary", "since": now - 100, "last_probe_ms": 1.2,
                                "last_error": "", "engine": "embedded", "model_version": "v1",
                                "replication": {"queue_depth": 7, "lag_s": {"p50": 0.01, "p99": 0.042},
                                                "connected": False,
                                                "ack": {"mode": "standby", "state": "degraded",
                                                        "reason": "no answer [within] 500 ms"}}},
                },
                "events": [{"kind": "switchover", "node": "standby", "at": now - 29, "detail": "primary -> standby"}],
                "gateway": {"id": "gw-a", "vip": "192.0.2.100", "holds": True, "epoch": 1764748800123},
            }
        )
    )
    code, out, _ = run(capsys, "--config", str(gw_config), "status")
    assert code == 0
    assert "ConnectionRefusedError" in out and "switchover" in out and "primary -> standby" in out
    assert "queue 7, lag p99 42 ms, disconnected" in out
    assert "degraded" in out and "[within]" in out  # acknowledgements; the reason is not markup
    assert "gateway gw-a holds the virtual IP 192.0.2.100 (role epoch 1764748800123)" in out
    code, out, _ = run(capsys, "--config", str(gw_config), "status", "--json")
    assert json.loads(out)["primary"] == "standby"

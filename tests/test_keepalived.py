"""The gateway pair's keepalived.conf: rendered from the config, judged by the real `keepalived -t`."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from ttsha import keepalived
from ttsha.cli import main
from ttsha.config import parse
from ttsha.errors import ConfigError
from ttsha.monitor.control import ControlServer

from .monitor.conftest import need, need_root
from .test_alert import Hook, wait

TTSHA = str(Path(sys.executable).with_name("ttsha"))


@pytest.fixture
def link():
    """A real interface for keepalived -t to accept (a veth pair, removed after)."""
    ip = need("ip", "iproute2")
    need_root("creating an interface needs root")
    name = f"tk{uuid.uuid4().hex[:8]}"
    subprocess.run([ip, "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], check=True)
    yield name
    subprocess.run([ip, "link", "del", name], check=False)


def pair(interface: str = "eth0", **vrrp) -> dict:
    return {
        "vrrp": {"vip": "192.0.2.100/24", "interface": interface, **vrrp},
        "gateways": {"gw-a": {"address": "192.0.2.10", "priority": 150},
                     "gw-b": {"address": "192.0.2.9", "priority": 100}},
    }


def test_render_is_a_nopreempt_unicast_pair_with_hooks(link):
    config = parse(pair(link))
    text = keepalived.render(config, "gw-a", ttsha_bin=TTSHA, config_path=Path("/etc/ttsha/ttsha.toml"))
    keepalived.validate(text)  # the real keepalived accepts it
    assert "state BACKUP" in text and "nopreempt" in text  # a recovered gateway never takes the address back
    assert "unicast_src_ip 192.0.2.10" in text and "        192.0.2.9\n" in text
    assert "vrrp_check_unicast_src" in text and "vrrp_version 3" in text and "advert_int 0.2" in text
    assert f"192.0.2.100/24 dev {link}" in text and "priority 150" in text
    selfcheck = Path(keepalived.selfcheck.__file__).resolve()
    assert f'script "{sys.executable} -I -S {selfcheck} 127.0.0.1:8080 {config.monitor.control_socket}"' in text
    assert "fall 2" in text and "timeout 2" in text  # a slow check once is not a fault
    for state in ("MASTER", "BACKUP", "FAULT", "STOP"):
        notify = f"{TTSHA} --config /etc/ttsha/ttsha.toml keepalived notify --gateway gw-a {state}"
        assert f'notify_{state.lower()} "{notify}"' in text
    other = keepalived.render(config, "gw-b", ttsha_bin=TTSHA)
    assert "unicast_src_ip 192.0.2.9" in other and "        192.0.2.10\n" in other and "priority 100" in other


def test_keepalived_refuses_what_it_cannot_run(link):
    text = keepalived.render(parse(pair(link)), "gw-a", ttsha_bin=TTSHA)
    with pytest.raises(ConfigError, match="keepalived -t refused"):
        keepalived.validate(text.replace(f"dev {link}", "dev no-such-if0"))


def test_version_2_uses_a_private_pass_secret(link, tmp_path):
    secret = tmp_path / "vrrp.pass"
    secret.write_text("s3cretPASSword\n")
    secret.chmod(0o644)
    config = parse(pair(link, version=2, advert_interval="1s", auth_file=str(secret)))
    with pytest.raises(ConfigError, match="chmod 600"):
        keepalived.render(config, "gw-a", ttsha_bin=TTSHA)
    secret.chmod(0o600)
    text = keepalived.render(config, "gw-a", ttsha_bin=TTSHA)
    keepalived.validate(text)
    assert "auth_type PASS" in text and "auth_pass s3cretPA\n" in text and "advert_int 1\n" in text


@pytest.mark.parametrize("change, message", [
    ({"vrrp": {"vip": "192.0.2.100/24", "interface": "eth0; x"}}, "vrrp.interface"),
    ({"vrrp": {"vip": "192.0.2.300/24"}}, "vrrp.vip"),
    ({"vrrp": {"vip": "192.0.2.100/24", "version": 2, "advert_interval": "200ms"}}, "whole seconds"),
    ({"gateways": {"gw-a": {"address": "gw.example; }"}, "gw-b": {"address": "192.0.2.9"}}}, "gateways.gw-a.address"),
    ({"gateways": {"gw-a": {"address": "192.0.2.9"}, "gw-b": {"address": "192.0.2.9"}}}, "named twice"),
    ({"gateways": {"gw-a": {"address": "192.0.2.9"}}}, "at least two"),
    ({"gateways": {"gw a": {"address": "192.0.2.9"}, "gw-b": {"address": "192.0.2.8"}}}, "gateway names"),
])
def test_values_that_reach_keepalived_conf_are_checked_at_load(change, message):
    data = pair()
    for section, values in change.items():
        data[section] = values if section == "gateways" else {**data[section], **values}
    with pytest.raises(ConfigError, match=message):
        parse(data)


def test_which_gateway_is_this_host():
    config = parse({**pair(), "gateways": {"gw-a": {"address": "127.0.0.1"}, "gw-b": {"address": "192.0.2.9"}}})
    assert keepalived.this_gateway(config, None)[0] == "gw-a"  # 127.0.0.1 is on lo
    assert keepalived.this_gateway(config, "gw-b")[0] == "gw-b"
    with pytest.raises(ConfigError, match="not one of"):
        keepalived.this_gateway(config, "gw-c")


class _Generation(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ttsha_generation" else 404)
        self.end_headers()
        self.wfile.write(b"7\n")

    def log_message(self, *args):
        pass


def test_check_needs_nginx_and_the_monitor(tmp_path):
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Generation)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    sock = tmp_path / "monitor.sock"
    config = parse({"nginx": {"listen": f"127.0.0.1:{web.server_address[1]}"},
                    "monitor": {"control_socket": str(sock)}})
    monitor = ControlServer(sock, lambda request: {"ok": True, "pong": True})
    monitor.start()
    # As keepalived runs it: the module as a file, isolated (-I) and without site-packages (-S).
    as_keepalived = [sys.executable, "-I", "-S", str(Path(keepalived.selfcheck.__file__)), config.nginx.listen,
                     str(sock)]
    try:
        assert keepalived.check(config) == []
        assert subprocess.run(as_keepalived, capture_output=True, timeout=30).returncode == 0
        monitor.close()
        failed = subprocess.run(as_keepalived, capture_output=True, text=True, timeout=30)
        assert failed.returncode == 1 and "monitor does not answer" in failed.stderr
        assert [p for p in keepalived.check(config) if p.startswith("monitor does not answer")]
    finally:
        web.shutdown()
        web.server_close()
    problems = keepalived.check(config)
    assert any(p.startswith("nginx on") for p in problems) and len(problems) == 2


def test_notify_raises_an_alert(tmp_path):
    hook = Hook()
    try:
        cfg = tmp_path / "t.toml"
        cfg.write_text(f'[alert]\nwebhook_url = "{hook.url}"\n')
        assert main(["--config", str(cfg), "keepalived", "notify", "--gateway", "gw-b", "MASTER"]) == 0
        assert wait(lambda: hook.received)
        body = hook.received[0]
        assert body["kind"] == "vrrp_master" and body["data"]["gateway"] == "gw-b"
        assert main(["--config", str(cfg), "keepalived", "notify", "--gateway", "gw-b", "SPLIT"]) == 2
    finally:
        hook.close()

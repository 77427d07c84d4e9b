"""Config values that reach Nginx, a command line or a URL (issue 16, item 2).

Every injection from the issue is refused at load with the key named, the
renderer refuses it even when a Config is built without loading, and a real
``nginx -t`` accepts what the renderer does produce.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from ttsha import config as config_mod
from ttsha.cli import main
from ttsha.config import Config, MonitorConfig, NginxConfig, NodeConfig
from ttsha.errors import ConfigError
from ttsha.monitor.daemon import Monitor, probe
from ttsha.nginx import NginxError, render_main, render_site, render_upstream

from ..monitor.conftest import free_port, need

ADDRESS_INJECTION = ("127.0.0.2:18900; } server { listen 127.0.0.1:18081; location / { return 200 x; } } "
                     "upstream d { server 127.0.0.1:1")
LISTEN_INJECTION = "127.0.0.1:8080; location /pwn { return 200 pwned; } #"

BAD = [
    ("nodes.a.address", f'[nodes.a]\naddress = "{ADDRESS_INJECTION}"\n'),
    ("nginx.listen", f'[nginx]\nlisten = "{LISTEN_INJECTION}"\n'),
    ("nodes.a.url", '[nodes.a]\nurl = "http://a;b:80"\n'),
    ("nodes.a.url", '[nodes.a]\nurl = "http://127.0.0.1:99999"\n'),
    ("nodes.a.url", '[nodes.a]\nurl = "http://127.0.0.1:0"\n'),
    ("nodes.a.url", '[nodes.a]\nurl = "ftp://127.0.0.1:21"\n'),
    ("nodes.a.url", '[nodes.a]\nurl = "http://127.0.0.1:8900\\n"\n'),
    ("nodes.a.address", '[nodes.a]\naddress = "127.0.0.1:70000"\n'),
    ("nodes.a.address", '[nodes.a]\naddress = "127.0.0.1"\n'),
    ("nodes.'a\\n'", '[nodes."a\\n"]\nurl = "http://127.0.0.1:8900"\n'),
    ("nodes.a.ssh_host", '[nodes.a]\nssh_host = "-oProxyCommand=x"\n'),
    ("nodes.a.ssh_user", '[nodes.a]\nssh_user = "-l root"\n'),
    ("nginx.listen", '[nginx]\nlisten = "127.0.0.1:0"\n'),
    ("nginx.upstream_file", '[nginx]\nupstream_file = "/tmp/x; include /etc/shadow"\n'),
    ("serve.host", '[serve]\nhost = "127.0.0.1 evil"\n'),
    ("alert.webhook_url", '[alert]\nwebhook_url = "file:///etc/passwd"\n'),
]


@pytest.mark.parametrize(("key", "text"), BAD, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD)])
def test_config_check_refuses_with_exit_3_naming_the_key(tmp_path, capsys, key, text):
    path = tmp_path / "ttsha.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("'", "'?").replace("\\n", "(\\\\n)")):
        config_mod.load(path)
    assert main(["config", "check", str(path)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


@pytest.mark.parametrize("text", [
    '[nodes.a]\nurl = "http://[::1]:8900"\n',
    '[nodes.a]\nurl = "https://node-a.example.com/"\naddress = "10.0.0.2:443"\n',
    '[nginx]\nlisten = "8080"\n',
    '[nginx]\nlisten = "*:8080"\n',
    '[nginx]\nlisten = "[::]:8080"\n',
    '[serve]\nhost = "::"\n',
    '[alert]\nwebhook_url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc"\n',
])
def test_ordinary_values_still_load(tmp_path, text):
    path = tmp_path / "ttsha.toml"
    path.write_text(text, encoding="utf-8")
    config_mod.load(path)


def _unchecked(address: str = "", listen: str = "127.0.0.1:8080", url: str = "http://127.0.0.2:8900") -> Config:
    """A Config built directly, as code (not the loader) could: the renderer's own defence."""
    return Config(nodes={"a": NodeConfig(url=url, address=address)}, nginx=NginxConfig(listen=listen))


@pytest.mark.parametrize("config", [
    _unchecked(address=ADDRESS_INJECTION),
    _unchecked(listen=LISTEN_INJECTION),
    _unchecked(url="http://a;b:80"),
    _unchecked(url="http://127.0.0.1:99999"),
], ids=["address", "listen", "url-semicolon", "url-port"])
def test_renderer_refuses_what_could_render_a_directive(config):
    with pytest.raises(NginxError):
        render_upstream(config.nodes, {"a": "primary"})
        render_site(config)


def test_nginx_render_cli_fails_cleanly_on_bad_port(tmp_path, capsys):
    path = tmp_path / "ttsha.toml"
    path.write_text('[nodes.a]\nurl = "http://127.0.0.1:99999"\n', encoding="utf-8")
    assert main(["--config", str(path), "nginx", "render", "--stdout"]) == 3
    assert "Traceback" not in capsys.readouterr().err


def test_rendered_config_passes_real_nginx_t(tmp_path):
    """What the renderer produces from checked values is one valid configuration."""
    binary = need("nginx", "nginx")
    prefix = tmp_path / "gw"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True)
    path = tmp_path / "ttsha.toml"
    path.write_text(
        f'[nodes.a]\nurl = "http://127.0.0.2:{free_port()}"\n'
        f'[nodes.b]\nurl = "http://[::1]:8900"\naddress = "127.0.0.3:8901"\n'
        f'[nginx]\nlisten = "127.0.0.1:{free_port()}"\nupstream_file = "{prefix}/ttsha-upstream.conf"\n',
        encoding="utf-8",
    )
    cfg = config_mod.load(path)
    (prefix / "nginx.conf").write_text(render_main(cfg, prefix))
    (prefix / "ttsha-site.conf").write_text(render_site(cfg))
    (prefix / "ttsha-upstream.conf").write_text(render_upstream(cfg.nodes, {"a": "primary", "b": "backup"}))
    proc = subprocess.run([binary, "-t", "-q", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    site = (prefix / "ttsha-site.conf").read_text()
    assert site.count("server {") == 1 and "location /pwn" not in site


def test_probe_of_an_invalid_url_is_a_failed_probe_not_an_exception():
    ok, body, reason = probe("http://127.0.0.1:99999", 0.2, 0.2)
    assert not ok and body is None and "invalid url" in reason


def test_probe_thread_survives_an_unexpected_error(tmp_path, monkeypatch):
    cfg = Config(
        nodes={"a": NodeConfig(url=f"http://127.0.0.1:{free_port()}")},
        monitor=MonitorConfig(interval=0.01, fast_interval=0.01, state_file=tmp_path / "m.json",
                              control_socket=tmp_path / "m.sock"),
        nginx=NginxConfig(upstream_file=tmp_path / "up.conf"),
    )
    monitor = Monitor(cfg)
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr("ttsha.monitor.daemon.probe", broken)
    thread = threading.Thread(target=monitor._probe_loop, args=("a",), daemon=True)
    thread.start()
    results = []
    deadline = time.monotonic() + 5
    while len(results) < 3 and time.monotonic() < deadline:
        results.append(monitor.inbox.get(timeout=5))
    monitor.stop()
    thread.join(5)
    assert len(results) == 3 and all(not r.ok and "boom" in r.error for r in results)

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ttsha.config import Config, MonitorConfig, NginxConfig, NodeConfig
from ttsha.nginx import PrivateGateway
from ttsha.protocol import generate_secret

ROOT = Path(__file__).resolve().parent.parent.parent


def need(binary: str, package: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        message = f"{binary} not found: apt-get install -y {package}"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing component is a failure, never a skip
        pytest.skip(message)
    return path


def need_root(why: str) -> None:
    """Skip a test that needs root (``why``) when not root; in CI, where .ci/run runs as root, fail."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI runs as root")  # never a silent skip in CI
        pytest.skip(why)


class BackgroundLoop:
    """A bounded loop on a thread of its own for the length of a ``with`` block;
    a subclass's ``_run`` ends when ``_stop`` is set."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)


def reply_json(handler, document) -> None:
    """A 200 JSON answer from an ``http.server`` handler (the tests' stand-in nodes)."""
    body = json.dumps(document).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NodeProcess:
    """A fake-engine ``serve`` process that can be killed for real."""

    def __init__(self, host: str, port: int, store: Path, secret: Path | None = None, name: str = "") -> None:
        self.host, self.port, self.store = host, port, store
        self.secret, self.name = secret, name
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.server.fake_node", self.host, str(self.port), str(self.store),
             *([str(self.secret), self.name] if self.secret else [])],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(10)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


def cluster(tmp_path, nodes: dict[str, tuple[str, int, int]], mode: str = "active-standby"):
    """Fake-engine node processes (name -> (host, priority, weight)), a real Nginx in front, and the config."""
    binary = need("nginx", "nginx")
    secret = tmp_path / "monitor.secret"
    generate_secret(secret)
    nodes_live = {name: NodeProcess(host, free_port(host), tmp_path / f"store-{name}", secret, name)
                  for name, (host, _, _) in nodes.items()}
    for node in nodes_live.values():
        node.start()
    prefix = tmp_path / "gw"
    prefix.mkdir()
    gw_port = free_port()
    test = [binary, "-t", "-q", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    reload = [binary, "-s", "reload", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    config = Config(
        nodes={name: NodeConfig(url=node.url, priority=nodes[name][1], weight=nodes[name][2])
               for name, node in nodes_live.items()},
        monitor=MonitorConfig(mode=mode, interval=0.1, fast_interval=0.05, fall=2, rise=2,
                              state_file=tmp_path / "monitor.json", control_socket=tmp_path / "monitor.sock",
                              secret_file=secret),
        nginx=NginxConfig(
            listen=f"127.0.0.1:{gw_port}",
            upstream_file=prefix / "ttsha-upstream.conf",
            site_file=prefix / "ttsha-site.conf",
            test_command=test,
            reload_command=reload,
        ),
    )
    from ttsha.nginx import initial_roles, render_upstream

    (prefix / "ttsha-upstream.conf").write_text(render_upstream(config.nodes, initial_roles(config.nodes)))
    gateway = PrivateGateway(config, prefix, binary)
    gateway.start()
    try:
        yield config, nodes_live, gateway
    finally:
        gateway.stop()
        for node in nodes_live.values():
            node.close()


@pytest.fixture
def pair(tmp_path):
    """Two fake-engine node processes on 127.0.0.2 and 127.0.0.3, a real Nginx in front, and the config."""
    yield from cluster(tmp_path, {"a": ("127.0.0.2", 200, 1), "b": ("127.0.0.3", 100, 1)})


@pytest.fixture
def trio_active(tmp_path):
    """Three nodes (127.0.0.2-4, weights 1, 2, 1) in active-active mode behind a real Nginx."""
    yield from cluster(tmp_path, {"a": ("127.0.0.2", 300, 1), "b": ("127.0.0.3", 200, 2), "c": ("127.0.0.4", 100, 1)},
                       mode="active-active")


@pytest.fixture
def trio_standby(tmp_path):
    """Three nodes (priorities 300, 200, 100) in active-standby mode behind a real Nginx."""
    yield from cluster(tmp_path, {"a": ("127.0.0.2", 300, 1), "b": ("127.0.0.3", 200, 1), "c": ("127.0.0.4", 100, 1)})

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
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


@pytest.fixture
def pair(tmp_path):
    """Two fake-engine node processes on 127.0.0.2 and 127.0.0.3, a real Nginx in front, and the config."""
    binary = need("nginx", "nginx")
    secret = tmp_path / "monitor.secret"
    generate_secret(secret)
    nodes_live = {
        "a": NodeProcess("127.0.0.2", free_port("127.0.0.2"), tmp_path / "store-a", secret, "a"),
        "b": NodeProcess("127.0.0.3", free_port("127.0.0.3"), tmp_path / "store-b", secret, "b"),
    }
    for node in nodes_live.values():
        node.start()
    prefix = tmp_path / "gw"
    prefix.mkdir()
    gw_port = free_port()
    test = [binary, "-t", "-q", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    reload = [binary, "-s", "reload", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    config = Config(
        nodes={
            name: NodeConfig(url=node.url, priority=200 if name == "a" else 100)
            for name, node in nodes_live.items()
        },
        monitor=MonitorConfig(interval=0.1, fast_interval=0.05, fall=2, rise=2, state_file=tmp_path / "monitor.json",
                              control_socket=tmp_path / "monitor.sock", secret_file=secret),
        nginx=NginxConfig(
            listen=f"127.0.0.1:{gw_port}",
            upstream_file=prefix / "ttsha-upstream.conf",
            site_file=prefix / "ttsha-site.conf",
            test_command=test,
            reload_command=reload,
        ),
    )
    from ttsha.nginx import render_upstream

    (prefix / "ttsha-upstream.conf").write_text(render_upstream(config.nodes, {"a": "primary", "b": "backup"}))
    gateway = PrivateGateway(config, prefix, binary)
    gateway.start()
    yield config, nodes_live, gateway
    gateway.stop()
    for node in nodes_live.values():
        node.close()

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ttsha.config import Config, NodeConfig, ReplicateConfig, StoreConfig
from ttsha.lab import descendants, render_sshd_config, wait_port
from ttsha.lab.sshd import known_hosts, sshd_command, write_keys

from ..monitor.conftest import free_port, need


class Sshd:
    """A real OpenSSH server on loopback with a temp host key and authorized key."""

    def __init__(self, root: Path) -> None:
        self.binary = need("sshd", "openssh-server")
        keygen = need("ssh-keygen", "openssh-client")
        self.root = root
        self.port = free_port()
        write_keys(root, keygen, comment="ttsha-test")
        self.host_key = root / "host_ed25519"
        self.client_key = root / "id_ed25519"
        self.config = root / "sshd_config"
        self.config.write_text(render_sshd_config("127.0.0.1", self.port, root, "test"))
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(sshd_command(self.binary, self.config, self.root / "sshd.log"))
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        """Stop the server and every session it spawned: the standby is gone."""
        if self.proc and self.proc.poll() is None:
            victims = descendants(self.proc.pid)
            self.proc.kill()
            self.proc.wait(10)
            for pid in victims:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass

    def known_hosts_line(self) -> str:
        return known_hosts(self.root, [("127.0.0.1", self.port)])


@pytest.fixture
def rep_config(tmp_path, sshd_running):
    known = tmp_path / "known_hosts"
    known.write_text(sshd_running.known_hosts_line())
    for d in ("src-models", "dst-models", "src-audio", "dst-audio"):
        (tmp_path / d).mkdir()
    return Config(
        nodes={
            "primary": NodeConfig(url="http://127.0.0.2:8900"),
            "standby": NodeConfig(url="http://127.0.0.3:8900", ssh_host="127.0.0.1", ssh_port=sshd_running.port,
                                  ssh_user=os.environ.get("USER", "root") if os.geteuid() else "root"),
        },
        store=StoreConfig(path=tmp_path / "src-audio"),
        replicate=ReplicateConfig(
            peers=["standby"],
            known_hosts=known,
            key_file=sshd_running.client_key,
            remote_store=tmp_path / "dst-audio",
            remote_models=tmp_path / "dst-models",
            local_models=tmp_path / "src-models",
            queue_file=tmp_path / "queue.sqlite",
            exclude=[],
        ),
    )

"""Where the lab puts everything, and the two configurations it writes."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import parse as parse_config
from ..config import to_toml
from ..errors import TTSHAError
from ..nginx import prefix_commands

NODE_HOSTS = {"primary": "127.0.0.2", "standby": "127.0.0.3"}


def node_cpus(name: str) -> list[str]:
    """``taskset`` prefix giving each node a CPU of its own, as separate hosts would have.

    Without it, a node restarting after a drill's fault (torch import, model
    load, warm-up) takes CPU from the standby that is carrying all the
    traffic, which no real pair sees. With a single CPU nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if len(cpus) < 2 or taskset is None:
        return []
    return [taskset, "-c", str(cpus[list(NODE_HOSTS).index(name) % len(cpus)])]


GATEWAY_HOST = "127.0.0.1"


class LabError(TTSHAError):
    """The lab could not be started or is not running."""


@dataclass
class LabLayout:
    root: Path
    node_ports: dict[str, int]
    gateway_port: int
    ssh_port: int = 0
    #: Each store on a filesystem of its own (a tmpfs: ``lab up`` as root), which disk-full needs.
    store_mounts: tuple[str, ...] = ()

    @property
    def ssh(self) -> Path:
        return self.root / "ssh"

    @property
    def config(self) -> Path:
        return self.root / "ttsha.toml"

    @property
    def gateway(self) -> Path:
        return self.root / "gateway"

    def node_dir(self, name: str) -> Path:
        return self.root / name

    def url(self, name: str) -> str:
        return f"http://{NODE_HOSTS[name]}:{self.node_ports[name]}"

    @property
    def gateway_url(self) -> str:
        return f"http://{GATEWAY_HOST}:{self.gateway_port}"


def lab_settings(layout: LabLayout, nginx_binary: str, user: str) -> dict[str, dict[str, Any]]:
    """The primary's configuration, as the TOML tables it is read from: everything under
    ``layout.root``, all on loopback."""
    gw, root = layout.gateway, layout.root

    def start(name: str, command: str = "start-node") -> list[str]:
        # Drills restart a node over SSH with this, as systemctl would on a real node;
        # after a crash, power-on runs here (the node's sshd is gone) and starts all of it.
        return [sys.executable, "-m", "ttsha", "lab", command, name, "--dir", str(root)]

    test_command, reload_command = prefix_commands(nginx_binary, gw)
    return {
        # This node's address: its replicator asks it for its role (see [replicate] models).
        "serve": {"host": NODE_HOSTS["primary"], "port": layout.node_ports["primary"], "workers": 2,
                  "canary_interval": "30s", "drain_timeout": "10s"},
        "store": {"path": f"{root}/primary/audio"},
        "nodes": {name: {"url": layout.url(name), "priority": 200 if name == "primary" else 100,
                         "ssh_host": NODE_HOSTS[name], "ssh_port": layout.ssh_port, "ssh_user": user,
                         "start_command": start(name), "power_on_command": start(name, "power-on"),
                         "store": f"{layout.node_dir(name)}/audio"}
                  for name in NODE_HOSTS},
        "monitor": {"interval": "500ms", "fast_interval": "100ms", "connect_timeout": "200ms",
                    "read_timeout": "500ms",
                    # Every node is on this machine: /health answers in a few ms, so 100 ms is slow.
                    "slow_probe": "100ms", "fall": 2, "rise": 3,
                    "state_file": f"{root}/monitor.json", "control_socket": f"{root}/monitor.sock",
                    # Signs the roles the monitor gives the nodes (written by `ttsha lab up`, mode 0600).
                    "secret_file": f"{root}/monitor.secret"},
        "nginx": {"listen": f"{GATEWAY_HOST}:{layout.gateway_port}",
                  # The lab's texts are short: a request stuck on a frozen node is retried
                  # on the standby after 10 s instead of 60.
                  "proxy_read_timeout": "10s",
                  "upstream_file": f"{gw}/ttsha-upstream.conf", "site_file": f"{gw}/ttsha-site.conf",
                  "test_command": test_command, "reload_command": reload_command},
        "replicate": {"peer": "standby", "known_hosts": f"{layout.ssh}/known_hosts",
                      "key_file": f"{layout.ssh}/id_ed25519", "remote_store": f"{root}/standby/audio",
                      "remote_models": f"{root}/standby/models", "local_models": f"{root}/primary/models",
                      "queue_file": f"{root}/primary/replicate.sqlite", "interval": "1m"},
        # 80 % of what the primary is measured to synthesize: a shared lab machine has no fixed capacity.
        "drill": {"duration": "20s", "load": 0.8},
    }


def standby_settings(layout: LabLayout, primary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The standby's tables: the primary's, with its own address and the replication turned round.

    The standby replicates back to the primary: results are immutable and
    content-addressed, so whichever node serves, its audio reaches the other.
    Audio flows both ways; models from whichever node the monitor made the
    primary (models = "primary", the default).
    """
    root = layout.root
    back = {table: dict(values) for table, values in primary.items()}
    back["serve"].update(host=NODE_HOSTS["standby"], port=layout.node_ports["standby"])
    back["replicate"].update(peer="primary", remote_store=f"{root}/primary/audio",
                             remote_models=f"{root}/primary/models", local_models=f"{root}/standby/models",
                             queue_file=f"{root}/standby/replicate.sqlite")
    return back


def write_config(layout: LabLayout, nginx_binary: str) -> None:
    """The lab's ttsha.toml and ttsha-standby.toml, checked by the config loader and written by its one TOML writer."""
    import getpass

    primary = lab_settings(layout, nginx_binary, getpass.getuser())
    header = "# Written by `ttsha lab up` (see ttsha.lab.lab_settings for why each setting).\n"
    for path, tables in ((layout.config, primary),
                         (layout.root / "ttsha-standby.toml", standby_settings(layout, primary))):
        path.write_text(header + to_toml(parse_config(tables, path)), encoding="utf-8")


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
    #: 1: one gateway on loopback; 2: a gateway pair in network namespaces (:mod:`.pair`).
    gateways: int = 1

    @property
    def hosts(self) -> dict[str, str]:
        """Each node's address: on loopback, or on the pair's LAN bridge (the gateways' namespaces reach it)."""
        if self.gateways == 1:
            return NODE_HOSTS
        from .pair import LAB_NET

        return {name: LAB_NET.node_address(i) for i, name in enumerate(NODE_HOSTS)}

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
        return f"http://{self.hosts[name]}:{self.node_ports[name]}"

    @property
    def gateway_url(self) -> str:
        """Where clients call: the one gateway, or the pair's virtual IP."""
        if self.gateways == 1:
            return f"http://{GATEWAY_HOST}:{self.gateway_port}"
        from .pair import LAB_NET

        return f"http://{LAB_NET.vip}:{self.gateway_port}"

    def gateway_dir(self, name: str) -> Path:
        """A gateway of the pair: its config, Nginx prefix, monitor state, keepalived files."""
        return self.root / name


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
        "serve": {"host": layout.hosts["primary"], "port": layout.node_ports["primary"], "workers": 2,
                  "canary_interval": "30s", "drain_timeout": "10s"},
        "store": {"path": f"{root}/primary/audio"},
        "nodes": {name: {"url": layout.url(name), "priority": 200 if name == "primary" else 100,
                         "ssh_host": layout.hosts[name], "ssh_port": layout.ssh_port, "ssh_user": user,
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
    back["serve"].update(host=layout.hosts["standby"], port=layout.node_ports["standby"])
    back["replicate"].update(peer="primary", remote_store=f"{root}/primary/audio",
                             remote_models=f"{root}/primary/models", local_models=f"{root}/standby/models",
                             queue_file=f"{root}/standby/replicate.sqlite")
    return back


def gateway_settings(layout: LabLayout, primary: dict[str, dict[str, Any]], name: str,
                     nginx_binary: str) -> dict[str, dict[str, Any]]:
    """Gateway ``name`` of the pair: the primary's tables with its own Nginx, monitor and VRRP settings.

    Nginx listens on every address of the gateway's namespace, so it serves
    the virtual IP wherever keepalived puts it; the monitor's state, socket
    and name are its own; the secret that signs roles is shared.
    """
    from .pair import GATEWAYS, INTERFACE, LAB_NET

    home = layout.gateway_dir(name)
    prefix = home / "gateway"
    test_command, reload_command = prefix_commands(nginx_binary, prefix)
    tables = {table: dict(values) for table, values in primary.items()}
    tables["nginx"].update(listen=f"0.0.0.0:{layout.gateway_port}", upstream_file=f"{prefix}/ttsha-upstream.conf",
                           site_file=f"{prefix}/ttsha-site.conf", test_command=test_command,
                           reload_command=reload_command)
    tables["monitor"].update(state_file=f"{home}/monitor.json", control_socket=f"{home}/monitor.sock",
                             gateway_id=name)
    # Adverts every 200 ms: keepalived's takeover floor is 3 adverts + skew (~0.7 s), within the 1.5 s target.
    # The track script runs each second and fails after two misses: a frozen Nginx loses the VIP in ~2-3 s.
    tables["vrrp"] = {"vip": f"{LAB_NET.vip}/24", "interface": INTERFACE, "advert_interval": "200ms",
                      "router_id": 79, "check_interval": "1s"}
    tables["gateways"] = {g: {"address": LAB_NET.address(g), "priority": 150 - 50 * i}
                          for i, g in enumerate(GATEWAYS)}
    return tables


def write_config(layout: LabLayout, nginx_binary: str) -> None:
    """The lab's ttsha.toml and ttsha-standby.toml (and, for a pair, each gateway's), checked by the
    config loader and written by its one TOML writer."""
    import getpass

    primary = lab_settings(layout, nginx_binary, getpass.getuser())
    header = "# Written by `ttsha lab up` (see ttsha.lab.lab_settings for why each setting).\n"
    files = [(layout.config, primary), (layout.root / "ttsha-standby.toml", standby_settings(layout, primary))]
    if layout.gateways == 2:
        from .pair import GATEWAYS

        for name in GATEWAYS:
            layout.gateway_dir(name).mkdir(parents=True, exist_ok=True)
            files.append((layout.gateway_dir(name) / "ttsha.toml", gateway_settings(layout, primary, name,
                                                                                    nginx_binary)))
    for path, tables in files:
        path.write_text(header + to_toml(parse_config(tables, path)), encoding="utf-8")


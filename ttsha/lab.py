"""``ttsha lab``: the whole HA pair on one machine, on 127.0.0.0/8.

Two ``ttsha serve`` nodes (127.0.0.2 and 127.0.0.3, each with its own store),
a real Nginx gateway rendered by ttsha's renderer on a private prefix, and
``ttsha monitor``. Every process is started from a config written into the
lab directory and recorded by pid there, so ``down`` stops exactly what
``up`` started. The end-to-end tests and benchmarks stand the system up
through this module too: there is one way to do it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import PeerUnreachable, TTSHAError

NODE_HOSTS = {"primary": "127.0.0.2", "standby": "127.0.0.3"}
GATEWAY_HOST = "127.0.0.1"


HOST_AND_CLIENT_KEYS = ("host_ed25519", "id_ed25519")


class LabError(TTSHAError):
    """The lab could not be started or is not running."""


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _pick_port(host: str, preferred: int) -> int:
    if _port_free(host, preferred):
        return preferred
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def render_sshd_config(host: str, port: int, ssh_dir: Path, name: str) -> str:
    """An sshd_config for a loopback test endpoint: key authentication only, SFTP."""
    return f"""# Written by ttsha: {name}'s SSH endpoint, loopback only.
Port {port}
ListenAddress {host}
HostKey {ssh_dir}/host_ed25519
PidFile {ssh_dir}/sshd-{name}.pid
AuthorizedKeysFile {ssh_dir}/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise LabError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
    if path is None:
        raise LabError(f"{name} not found: install it with 'apt-get install -y {package}'")
    return path


@dataclass
class LabLayout:
    root: Path
    node_ports: dict[str, int]
    gateway_port: int
    ssh_port: int = 0

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


def write_config(layout: LabLayout, nginx_binary: str) -> None:
    """The lab's ttsha.toml: everything under ``layout.root``, all on loopback."""
    import getpass

    gw = layout.gateway
    user = getpass.getuser()
    def start(name: str) -> str:
        # Drills restart a node over SSH with this, as systemctl would on a real node.
        argv = [sys.executable, "-m", "ttsha", "lab", "start-node", name, "--dir", str(layout.root)]
        return "[" + ", ".join(json.dumps(a) for a in argv) + "]"

    nodes = "\n".join(
        f'[nodes.{name}]\nurl = "{layout.url(name)}"\npriority = {200 if name == "primary" else 100}\n'
        f'ssh_host = "{NODE_HOSTS[name]}"\nssh_port = {layout.ssh_port}\nssh_user = "{user}"\n'
        f"start_command = {start(name)}\n"
        for name in NODE_HOSTS
    )
    text = f"""# Written by `ttsha lab up`.
[serve]
# This node's address: its replicator asks it for its role (see [replicate] models).
host = "{NODE_HOSTS['primary']}"
port = {layout.node_ports['primary']}
workers = 2
canary_interval = "30s"
drain_timeout = "10s"

[store]
path = "{layout.root}/primary/audio"

{nodes}
[monitor]
interval = "500ms"
fast_interval = "100ms"
connect_timeout = "200ms"
read_timeout = "500ms"
fall = 2
rise = 3
state_file = "{layout.root}/monitor.json"
control_socket = "{layout.root}/monitor.sock"
# Signs the roles the monitor gives the nodes (written by `ttsha lab up`, mode 0600).
secret_file = "{layout.root}/monitor.secret"

[nginx]
listen = "{GATEWAY_HOST}:{layout.gateway_port}"
# The lab's texts are short: a request stuck on a frozen node is retried
# on the standby after 10 s instead of 60.
proxy_read_timeout = "10s"
upstream_file = "{gw}/ttsha-upstream.conf"
site_file = "{gw}/ttsha-site.conf"
test_command = ["{nginx_binary}", "-t", "-q", "-p", "{gw}", "-c", "{gw}/nginx.conf"]
reload_command = ["{nginx_binary}", "-s", "reload", "-p", "{gw}", "-c", "{gw}/nginx.conf"]

[replicate]
peer = "standby"
known_hosts = "{layout.ssh}/known_hosts"
key_file = "{layout.ssh}/id_ed25519"
remote_store = "{layout.root}/standby/audio"
remote_models = "{layout.root}/standby/models"
local_models = "{layout.root}/primary/models"
queue_file = "{layout.root}/primary/replicate.sqlite"
interval = "1m"

[drill]
duration = "20s"
rate = 10.0
"""
    layout.config.write_text(text, encoding="utf-8")
    # The standby replicates back to the primary: results are immutable and
    # content-addressed, so whichever node serves, its audio reaches the other.
    # Audio flows both ways; models from whichever node the monitor made the
    # primary (models = "primary", the default).
    back = text.replace('peer = "standby"', 'peer = "primary"')
    back = back.replace(f'host = "{NODE_HOSTS["primary"]}"\nport = {layout.node_ports["primary"]}\n',
                        f'host = "{NODE_HOSTS["standby"]}"\nport = {layout.node_ports["standby"]}\n')
    back = back.replace(f'remote_store = "{layout.root}/standby/audio"', f'remote_store = "{layout.root}/primary/audio"')
    back = back.replace(f'remote_models = "{layout.root}/standby/models"', f'remote_models = "{layout.root}/primary/models"')
    back = back.replace(f'local_models = "{layout.root}/primary/models"', f'local_models = "{layout.root}/standby/models"')
    back = back.replace(f'queue_file = "{layout.root}/primary/replicate.sqlite"', f'queue_file = "{layout.root}/standby/replicate.sqlite"')
    (layout.root / "ttsha-standby.toml").write_text(back, encoding="utf-8")


class Lab:
    """Start, inspect and stop the lab in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.pids = self.root / "pids.json"

    # -- state -----------------------------------------------------------
    def layout(self) -> LabLayout:
        try:
            data = json.loads((self.root / "lab.json").read_text())
        except (OSError, ValueError):
            raise LabError(f"no lab in {self.root}: run 'ttsha lab up --dir {self.root}'") from None
        return LabLayout(self.root, data["node_ports"], data["gateway_port"], data.get("ssh_port", 0))

    def _pids(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self.pids.read_text()).items()}
        except (OSError, ValueError):
            return {}

    def _save_pids(self, pids: dict[str, int]) -> None:
        self.pids.write_text(json.dumps(pids, indent=1))

    def pid(self, name: str) -> int | None:
        return self._pids().get(name)

    # -- processes -------------------------------------------------------
    def _ttsha(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ttsha", "--config", str(self.root / "ttsha.toml"), *args]

    def _spawn(self, name: str, command: list[str]) -> int:
        log = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        pids = self._pids()
        pids[name] = proc.pid
        self._save_pids(pids)
        return proc.pid

    def node_config(self, name: str) -> Path:
        """Each node's view: the standby's replicates back to the primary."""
        return self.root / ("ttsha.toml" if name == "primary" else "ttsha-standby.toml")

    def start_node(self, name: str) -> int:
        """Start a node's serve unless it already runs (like ``systemctl start``)."""
        running = self.pid(name)
        if running is not None and _alive(running):
            return running
        layout = self.layout()
        store = layout.node_dir(name) / "audio"
        store.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "ttsha", "--config", str(self.node_config(name)), "serve",
                   "--host", NODE_HOSTS[name], "--port", str(layout.node_ports[name]), "--store", str(store)]
        return self._spawn(name, command)

    def start_sshd(self, name: str) -> int:
        """Start a node's SSH endpoint (the replicator's and the drills' way in)."""
        layout = self.layout()
        sshd = find_binary("sshd", "openssh-server")
        pid = self._spawn(f"sshd-{name}", [sshd, "-D", "-f", str(layout.ssh / f"sshd_config-{name}"),
                                           "-E", str(self.root / f"sshd-{name}.log")])
        wait_port(NODE_HOSTS[name], layout.ssh_port)
        return pid

    def stop_sshd(self, name: str) -> None:
        """Take a node's SSH endpoint away, open sessions included (a standby outage)."""
        pid = self.pid(f"sshd-{name}")
        if pid is None:
            return
        for victim in [*descendants(pid), pid]:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def up(self, node_ports: dict[str, int] | None = None, gateway_port: int | None = None, monitor: bool = True,
           timeout: float = 120.0) -> LabLayout:
        """Write configs, start everything, wait until healthy.

        If any step fails, whatever was already started is stopped again.
        """
        if self._pids():
            raise LabError(f"a lab already runs in {self.root} (ttsha lab down --dir {self.root})")
        try:
            return self._up(node_ports, gateway_port, monitor, timeout)
        except BaseException:
            self.down()
            raise

    def _up(self, node_ports: dict[str, int] | None, gateway_port: int | None, monitor: bool,
            timeout: float) -> LabLayout:
        nginx = find_binary("nginx", "nginx")
        self.root.mkdir(parents=True, exist_ok=True)
        find_binary("sshd", "openssh-server")
        keygen = find_binary("ssh-keygen", "openssh-client")
        ports = node_ports or {name: _pick_port(host, 8900) for name, host in NODE_HOSTS.items()}
        ssh_port = next((p for p in range(2222, 2300) if all(_port_free(h, p) for h in NODE_HOSTS.values())), 0)
        if not ssh_port:
            raise LabError("no free SSH port for the lab between 2222 and 2299 on 127.0.0.2/3")
        layout = LabLayout(self.root, ports, gateway_port or _pick_port(GATEWAY_HOST, 8080), ssh_port)
        (self.root / "lab.json").write_text(
            json.dumps({"node_ports": ports, "gateway_port": layout.gateway_port, "ssh_port": layout.ssh_port})
        )
        if not (self.root / "monitor.secret").exists():
            from .protocol import generate_secret

            generate_secret(self.root / "monitor.secret")
        write_config(layout, nginx)
        self._write_ssh(layout, keygen)
        subprocess.run(self._ttsha("nginx", "render", "--prefix", str(layout.gateway), "--force"), check=True,
                       capture_output=True)
        for name in NODE_HOSTS:
            self.start_node(name)
            (layout.node_dir(name) / "models").mkdir(parents=True, exist_ok=True)
        # Each node's SSH endpoint, then each node's replicator towards the other.
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)
        for name in NODE_HOSTS:
            self.start_sshd(name)
        for name in NODE_HOSTS:
            self._spawn(f"replicate-{name}", [sys.executable, "-m", "ttsha", "--config", str(self.node_config(name)),
                                              "replicate", "--store", str(layout.node_dir(name) / "audio")])
        proc = subprocess.run([nginx, "-p", str(layout.gateway), "-c", str(layout.gateway / "nginx.conf")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"nginx did not start: {proc.stderr.strip()}")
        pids = self._pids()
        pids["nginx"] = int((layout.gateway / "nginx.pid").read_text())
        self._save_pids(pids)
        self.wait_healthy(layout, timeout)
        if monitor:
            self._spawn("monitor", self._ttsha("monitor"))
            self.wait_monitor(timeout=30)
        return layout

    def _write_ssh(self, layout: LabLayout, keygen: str) -> None:
        """Host key, client key, authorized_keys and known_hosts for the standby's sshd."""
        ssh = layout.ssh
        ssh.mkdir(parents=True, exist_ok=True)
        for key in HOST_AND_CLIENT_KEYS:
            if not (ssh / key).exists():
                subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"ttsha-lab-{key}", "-f", str(ssh / key)],
                               check=True)
        os.chmod(ssh / "id_ed25519", 0o600)
        (ssh / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
        host_key = (ssh / "host_ed25519.pub").read_text().split()
        (ssh / "known_hosts").write_text(
            "".join(f"[{host}]:{layout.ssh_port} {host_key[0]} {host_key[1]}\n" for host in NODE_HOSTS.values())
        )
        for name, host in NODE_HOSTS.items():
            (ssh / f"sshd_config-{name}").write_text(render_sshd_config(host, layout.ssh_port, ssh, name))

    def wait_healthy(self, layout: LabLayout, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(NODE_HOSTS)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                if health(layout.url(name)) == "ready":
                    pending.discard(name)
                elif (pid := self.pid(name)) is not None and not _alive(pid):
                    # No point waiting out the timeout for a node that exited (a bad config, say).
                    log_file = self.root / f"{name}.log"
                    lines = log_file.read_text(errors="replace").strip().splitlines() if log_file.exists() else []
                    raise PeerUnreachable(f"lab node {name} exited: {lines[-1] if lines else 'no output'} "
                                          f"(see {log_file})")
            time.sleep(0.2)
        if pending:
            raise PeerUnreachable(f"lab nodes not ready after {timeout:.0f} s: {', '.join(sorted(pending))} "
                                  f"(see {self.root}/*.log)")

    def wait_monitor(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.monitor_state()
            if state and state.get("primary") and state.get("nginx", {}).get("ok"):
                return state
            time.sleep(0.1)
        raise LabError(f"the monitor did not take control within {timeout:.0f} s (see {self.root}/monitor.log)")

    def monitor_state(self) -> dict | None:
        try:
            return json.loads((self.root / "monitor.json").read_text())
        except (OSError, ValueError):
            return None

    def status(self) -> dict[str, dict]:
        layout = self.layout()
        out = {}
        for name, pid in self._pids().items():
            alive = _alive(pid)
            entry = {"pid": pid, "running": alive, "log": str(self.root / f"{name}.log")}
            if name.startswith("sshd-"):
                entry["endpoint"] = f"ssh://{NODE_HOSTS[name[5:]]}:{layout.ssh_port}"
            if name in NODE_HOSTS:
                entry["endpoint"] = layout.url(name)
                entry["health"] = health(layout.url(name)) if alive else "-"
            elif name == "nginx":
                entry["endpoint"] = layout.gateway_url
                entry["log"] = str(layout.gateway / "error.log")
            out[name] = entry
        return out

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stop every process this lab started (by recorded pid), and nothing else."""
        stopped = []
        pids = self._pids()
        order = ("monitor", "replicate-primary", "replicate-standby", "nginx", "sshd-primary", "sshd-standby")
        for name in (*order, *NODE_HOSTS):
            pid = pids.get(name)
            if pid is None or not _alive(pid):
                continue
            try:
                os.kill(pid, signal.SIGCONT)  # a drill may have frozen it
                os.kill(pid, signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
        self.pids.unlink(missing_ok=True)
        return stopped


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def health(url: str, timeout: float = 1.0) -> str:
    """The node's /health status word, or "unreachable"."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            return json.loads(resp.read()).get("status", "?")
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read()).get("status", str(exc.code))
        except ValueError:
            return str(exc.code)
    except OSError:
        return "unreachable"

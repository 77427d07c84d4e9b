"""``ttsha lab``: the whole HA pair on one machine, on 127.0.0.0/8.

Two ``ttsha serve`` nodes (127.0.0.2 and 127.0.0.3, each with its own store),
a real Nginx gateway rendered by ttsha's renderer on a private prefix, and
``ttsha monitor``. Every process is started from a config written into the
lab directory and recorded by pid there, so ``down`` stops exactly what
``up`` started. The end-to-end tests and benchmarks stand the system up
through this module too: there is one way to do it.

The lab trusts nothing it did not write: it refuses a directory another user
owns or others can write (``/tmp`` is shared), records each process with its
start time and signals it only if that and its command line (which names the
lab directory) still match, and opens logs without following symlinks. Run
as root, each node's store is a size-limited tmpfs of its own, so that the
``disk-full`` fault fills that and nothing else.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import httpclient
from .config import load as load_config
from .config import parse as parse_config
from .config import to_toml
from .errors import PeerUnreachable, TTSHAError
from .fsutil import atomic_write
from .monitor import statefile
from .nginx import PrivateGateway, prefix_commands
from .protocol import Health

log = logging.getLogger(__name__)

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


HOST_AND_CLIENT_KEYS = ("host_ed25519", "id_ed25519")
#: Size of each node's store filesystem when the lab runs as root (tmpfs: RAM, used only as filled).
STORE_FS_SIZE = "256m"
STORE_FS_SOURCE = "ttsha-lab-store"


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


class Lab:
    """Start, inspect and stop the lab in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.pids = self.root / "pids.json"
        self.starts = self.root / "starts.json"  # start time of each recorded pid (/proc/PID/stat field 22)
        check_dir(self.root)

    # -- state -----------------------------------------------------------
    def layout(self) -> LabLayout:
        try:
            data = json.loads((self.root / "lab.json").read_text())
        except (OSError, ValueError):
            raise LabError(f"no lab in {self.root}: run 'ttsha lab up --dir {self.root}'") from None
        return LabLayout(self.root, data["node_ports"], data["gateway_port"], data.get("ssh_port", 0),
                         tuple(data.get("store_mounts", ())))

    def _records(self) -> dict[str, dict]:
        """name -> {"pid", "start"}: pids.json (name -> pid) and, beside it, each start time."""
        def read(path: Path) -> dict:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}

        starts = read(self.starts)
        return {name: {"pid": pid, "start": starts.get(name) if isinstance(starts.get(name), int) else None}
                for name, pid in read(self.pids).items() if isinstance(pid, int)}

    def _pids(self) -> dict[str, int]:
        return {name: record["pid"] for name, record in self._records().items()}

    def _save_pids(self, pids: dict[str, int]) -> None:
        records = self._records()
        starts = {}
        for name, pid in pids.items():
            old = records.get(name)
            starts[name] = old["start"] if old and old["pid"] == pid else _start_time(pid)
        # Start times first: a pid is never recorded without the start time that vouches for it.
        atomic_write(self.starts, json.dumps(starts, indent=1), sync_dir=False)
        atomic_write(self.pids, json.dumps(pids, indent=1), sync_dir=False)

    def pid(self, name: str) -> int | None:
        return self._pids().get(name)

    def _pidfd(self, name: str) -> int | None:
        """A pidfd for the recorded process ``name`` if it is still the one the lab started, else None.

        The same pid, the same start time, and a command line that names the
        lab directory (every process the lab starts has it in its argv).
        """
        record = self._records().get(name)
        if record is None:
            return None
        pid, start = record["pid"], record["start"]
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace")
            same = start is not None and _start_time(pid) == start and str(self.root) in argv
        except OSError:
            same = False
        if not same:
            os.close(fd)
            log.warning("not signalling pid %s recorded as lab process %s: it is not the process the lab started",
                        pid, name)
            return None
        return fd

    def _signal(self, name: str, sig: signal.Signals) -> bool:
        """Signal a recorded process only if it is still the one the lab started."""
        fd = self._pidfd(name)
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)

    # -- processes -------------------------------------------------------
    def _ttsha(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ttsha", "--config", str(self.root / "ttsha.toml"), *args]

    def _spawn(self, name: str, command: list[str]) -> int:
        log_file = open_log(self.root / f"{name}.log")
        try:
            proc = subprocess.Popen(command, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            os.close(log_file)
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
        command = [*node_cpus(name), sys.executable, "-m", "ttsha", "--config", str(self.node_config(name)), "serve",
                   "--host", NODE_HOSTS[name], "--port", str(layout.node_ports[name]), "--store", str(store)]
        return self._spawn(name, command)

    def start_replicate(self, name: str) -> int:
        """Start a node's replicator towards the other node unless it already runs."""
        running = self.pid(f"replicate-{name}")
        if running is not None and _alive(running):
            return running
        layout = self.layout()
        return self._spawn(f"replicate-{name}", [*node_cpus(name), sys.executable, "-m", "ttsha", "--config",
                                                 str(self.node_config(name)),
                                                 "replicate", "--store", str(layout.node_dir(name) / "audio")])

    def power_on(self, name: str) -> int:
        """After a crash: the node's sshd, replicator and serve, as a booting node starts them."""
        running = self.pid(f"sshd-{name}")
        if running is None or not _alive(running):
            self.start_sshd(name)
        self.start_replicate(name)
        return self.start_node(name)

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
        fd = self._pidfd(f"sshd-{name}")
        if pid is None or fd is None:
            return
        try:
            # Sessions first, then the listener, through its pidfd (it cannot be a reused pid).
            for victim in descendants(pid):
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        finally:
            os.close(fd)
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
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_dir(self.root)
        find_binary("sshd", "openssh-server")
        keygen = find_binary("ssh-keygen", "openssh-client")
        ports = node_ports or {name: _pick_port(host, 8900) for name, host in NODE_HOSTS.items()}
        ssh_port = next((p for p in range(2222, 2300) if all(_port_free(h, p) for h in NODE_HOSTS.values())), 0)
        if not ssh_port:
            raise LabError("no free SSH port for the lab between 2222 and 2299 on 127.0.0.2/3")
        layout = LabLayout(self.root, ports, gateway_port or _pick_port(GATEWAY_HOST, 8080), ssh_port)
        layout.store_mounts = self._mount_stores(layout)
        atomic_write(self.root / "lab.json", json.dumps({
            "node_ports": ports, "gateway_port": layout.gateway_port, "ssh_port": layout.ssh_port,
            "store_mounts": list(layout.store_mounts)}), sync_dir=False)
        if not (self.root / "monitor.secret").exists():
            from .protocol import generate_secret

            generate_secret(self.root / "monitor.secret")
        write_config(layout, nginx)
        self._write_ssh(layout, keygen)
        gateway = PrivateGateway(load_config(self.root / "ttsha.toml"), layout.gateway, nginx)
        gateway.write(force=True)
        for name in NODE_HOSTS:
            self.start_node(name)
            (layout.node_dir(name) / "models").mkdir(parents=True, exist_ok=True)
        # Each node's SSH endpoint, then each node's replicator towards the other.
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)
        for name in NODE_HOSTS:
            self.start_sshd(name)
        for name in NODE_HOSTS:
            self.start_replicate(name)
        try:
            nginx_pid = gateway.start()
        except TTSHAError as exc:
            raise LabError(str(exc)) from None
        pids = self._pids()
        pids["nginx"] = nginx_pid
        self._save_pids(pids)
        self.wait_healthy(layout, timeout)
        if monitor:
            self._spawn("monitor", self._ttsha("monitor"))
            self.wait_monitor(timeout=30)
        return layout

    def _mount_stores(self, layout: LabLayout) -> tuple[str, ...]:
        """As root, each node's store on a tmpfs of its own (disk-full fills it); else plain directories."""
        if os.geteuid() != 0:
            log.warning("not root: the lab's stores share a filesystem with everything else, so the disk-full "
                        "fault will refuse (run 'ttsha lab up' as root for a filesystem per store)")
            return ()
        mounted: list[str] = []
        for name in NODE_HOSTS:
            store = layout.node_dir(name) / "audio"
            store.mkdir(parents=True, exist_ok=True)
            if _mount_source(store) is None:
                proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={STORE_FS_SIZE},mode=0755",
                                       STORE_FS_SOURCE, str(store)], capture_output=True, text=True)
                if proc.returncode != 0:
                    for path in mounted:  # lab.json does not exist yet: down() would not know them
                        subprocess.run(["umount", path], capture_output=True)
                    raise LabError(f"could not mount a tmpfs for {name}'s store: {proc.stderr.strip()}")
            mounted.append(str(store))
        return tuple(mounted)

    def _unmount_stores(self) -> None:
        try:
            mounts = self.layout().store_mounts
        except LabError:
            return
        for path in mounts:
            # Only what `up` mounted: a tmpfs of ours at exactly that path.
            if _mount_source(Path(path)) == STORE_FS_SOURCE:
                if subprocess.run(["umount", path], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", path], capture_output=True)

    def _write_ssh(self, layout: LabLayout, keygen: str) -> None:
        """Host key, client key, authorized_keys and known_hosts for the standby's sshd."""
        ssh = layout.ssh
        ssh.mkdir(parents=True, exist_ok=True)
        for key in HOST_AND_CLIENT_KEYS:
            if not (ssh / key).exists():
                subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"ttsha-lab-{key}",
                                "-f", str(ssh / key)],
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
            state = statefile.read(self.root / "monitor.json")
            if state and state.primary and state.nginx_ok:
                return state.raw
            time.sleep(0.1)
        raise LabError(f"the monitor did not take control within {timeout:.0f} s (see {self.root}/monitor.log)")

    def monitor_state(self) -> dict | None:
        """The monitor's state document (raw: tests and the bench index it), or None."""
        state = statefile.read(self.root / "monitor.json")
        return state.raw if state else None

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
            # Each signal only to the process the lab started (pid, start time, argv).
            if not self._signal(name, signal.SIGCONT):  # a drill may have frozen it
                continue
            self._signal(name, signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                self._signal(name, signal.SIGKILL)
            stopped.append(name)
        self.pids.unlink(missing_ok=True)
        self.starts.unlink(missing_ok=True)
        self._unmount_stores()
        return stopped


def check_dir(root: Path) -> None:
    """Refuse a lab directory another user owns or others may write (``/tmp`` is shared)."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return
    if st.st_uid != os.geteuid():
        raise LabError(f"{root} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): refusing to use it as a "
                       f"lab directory; remove it or choose another --dir")
    if st.st_mode & 0o022:
        raise LabError(f"{root} can be written by others (mode {st.st_mode & 0o7777:04o}): refusing to use it as a "
                       f"lab directory; run 'chmod go-w {root}' or choose another --dir")


def open_log(path: Path) -> int:
    """A log file descriptor for appending; a symlink in its place is refused, not followed."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LabError(f"{path} is a symbolic link: refusing to write a log through it") from None
        raise LabError(f"cannot open {path}: {exc.strerror}") from None


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _mount_source(path: Path) -> str | None:
    """The source of the filesystem mounted exactly at ``path``, or None (from /proc/self/mountinfo)."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            rows = f.read().splitlines()
    except OSError:
        return None
    source = None
    for row in rows:
        fields = row.split()
        sep = fields.index("-")
        mount_point = fields[4].encode().decode("unicode_escape")
        if mount_point == target:
            source = fields[sep + 2]  # the last mount on a path is the visible one
    return source


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
    reply = httpclient.get(url.rstrip("/") + "/health", timeout=timeout)
    if not reply.status:
        return "unreachable"
    health = None if reply.error else Health.parse(reply.json())  # a body cut short (a node restarting)
    return health.status if health else str(reply.status)  # still tells the code

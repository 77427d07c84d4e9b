"""The lab itself (``ttsha lab``): the whole HA pair on one machine, on 127.0.0.0/8.

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

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import history
from ..config import load as load_config
from ..errors import PeerUnreachable, Refused, TTSHAError
from ..faults import GATEWAY_FAULTS, GatewayFault
from ..fsutil import atomic_write
from ..monitor import statefile
from ..nginx import PrivateGateway
from .layout import GATEWAY_HOST, NODE_HOSTS, LabError, LabLayout, node_cpus, write_config
from .pair import GATEWAYS, LAB_NET, keepalived_command
from .procs import (
    alive,
    check_dir,
    descendants,
    find_binary,
    health,
    open_log,
    pick_port,
    port_free,
    start_time,
    wait_port,
)
from .sshd import known_hosts, render_sshd_config, sshd_command, write_keys

if TYPE_CHECKING:
    from ..drill import DrillOptions, DrillReport, GatewayReport

log = logging.getLogger(__name__)


#: Size of each node's store filesystem when the lab runs as root (tmpfs: RAM, used only as filled).
STORE_FS_SIZE = "256m"
STORE_FS_SOURCE = "ttsha-lab-store"


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
                         tuple(data.get("store_mounts", ())), data.get("gateways", 1))

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
            starts[name] = old["start"] if old and old["pid"] == pid else start_time(pid)
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
            same = start is not None and start_time(pid) == start and str(self.root) in argv
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
        if running is not None and alive(running):
            return running
        layout = self.layout()
        store = layout.node_dir(name) / "audio"
        store.mkdir(parents=True, exist_ok=True)
        command = [*node_cpus(name), sys.executable, "-m", "ttsha", "--config", str(self.node_config(name)), "serve",
                   "--host", layout.hosts[name], "--port", str(layout.node_ports[name]), "--store", str(store)]
        return self._spawn(name, command)

    def start_replicate(self, name: str) -> int:
        """Start a node's replicator towards the other node unless it already runs."""
        running = self.pid(f"replicate-{name}")
        if running is not None and alive(running):
            return running
        layout = self.layout()
        return self._spawn(f"replicate-{name}", [*node_cpus(name), sys.executable, "-m", "ttsha", "--config",
                                                 str(self.node_config(name)),
                                                 "replicate", "--store", str(layout.node_dir(name) / "audio")])

    def power_on(self, name: str) -> int:
        """After a crash: the node's sshd, replicator and serve, as a booting node starts them."""
        running = self.pid(f"sshd-{name}")
        if running is None or not alive(running):
            self.start_sshd(name)
        self.start_replicate(name)
        return self.start_node(name)

    def start_sshd(self, name: str) -> int:
        """Start a node's SSH endpoint (the replicator's and the drills' way in)."""
        layout = self.layout()
        sshd = find_binary("sshd", "openssh-server")
        pid = self._spawn(f"sshd-{name}", sshd_command(sshd, layout.ssh / f"sshd_config-{name}",
                                                       self.root / f"sshd-{name}.log"))
        wait_port(layout.hosts[name], layout.ssh_port)
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
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def up(self, node_ports: dict[str, int] | None = None, gateway_port: int | None = None, monitor: bool = True,
           timeout: float = 120.0, gateways: int = 1) -> LabLayout:
        """Write configs, start everything, wait until healthy.

        ``gateways=2``: a gateway pair with keepalived, each in a network
        namespace (:mod:`.pair`; root only). If any step fails, whatever was
        already started or created is stopped or removed again.
        """
        if gateways not in (1, 2):
            raise LabError(f"--gateways must be 1 or 2, not {gateways}")
        if gateways == 2:
            if os.geteuid() != 0:
                raise LabError("a gateway pair needs root (network namespaces, veth links, keepalived): "
                               "run 'sudo ttsha lab up --gateways 2'")
            find_binary("keepalived", "keepalived")
            if LAB_NET.leftovers():
                raise LabError(f"the lab's gateway network already exists ({', '.join(LAB_NET.leftovers())}): "
                               "another lab runs a pair; 'ttsha lab down --dir DIR' it first")
        if self._pids():
            raise LabError(f"a lab already runs in {self.root} (ttsha lab down --dir {self.root})")
        try:
            return self._up(node_ports, gateway_port, monitor, timeout, gateways)
        except BaseException:
            self.down()
            raise

    def _up(self, node_ports: dict[str, int] | None, gateway_port: int | None, monitor: bool,
            timeout: float, gateways: int) -> LabLayout:
        nginx = find_binary("nginx", "nginx")
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_dir(self.root)
        find_binary("sshd", "openssh-server")
        keygen = find_binary("ssh-keygen", "openssh-client")
        if gateways == 2:
            # Recorded before anything is created, so that down() removes whatever part of it exists.
            atomic_write(self.root / "lab.json", json.dumps({"node_ports": {}, "gateway_port": 0,
                                                             "gateways": 2}), sync_dir=False)
            LAB_NET.up()
        hosts = LabLayout(self.root, {}, 0, gateways=gateways).hosts
        for host in hosts.values() if gateways == 2 else ():
            LAB_NET.add_address(host)
        ports = node_ports or {name: pick_port(host, 8900) for name, host in hosts.items()}
        ssh_port = next((p for p in range(2222, 2300) if all(port_free(h, p) for h in hosts.values())), 0)
        if not ssh_port:
            raise LabError(f"no free SSH port for the lab between 2222 and 2299 on {', '.join(hosts.values())}")
        # A pair's gateways listen in namespaces of their own, where 8080 is always free.
        port = gateway_port or (pick_port(GATEWAY_HOST, 8080) if gateways == 1 else 8080)
        layout = LabLayout(self.root, ports, port, ssh_port, gateways=gateways)
        layout.store_mounts = self._mount_stores(layout)
        atomic_write(self.root / "lab.json", json.dumps({
            "node_ports": ports, "gateway_port": layout.gateway_port, "ssh_port": layout.ssh_port,
            "store_mounts": list(layout.store_mounts), "gateways": gateways}), sync_dir=False)
        if not (self.root / "monitor.secret").exists():
            from ..protocol import generate_secret

            generate_secret(self.root / "monitor.secret")
        write_config(layout, nginx)
        self._write_ssh(layout, keygen)
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
        if gateways == 2:
            for name in GATEWAYS:
                PrivateGateway(load_config(self.gateway_config(name)), layout.gateway_dir(name) / "gateway",
                               nginx).write(force=True)
                self._start_gateway_nginx(name)
            self.wait_healthy(layout, timeout)
            if monitor:
                self._start_pair(timeout)
            return layout
        gateway = PrivateGateway(load_config(self.root / "ttsha.toml"), layout.gateway, nginx)
        gateway.write(force=True)
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

    # -- the gateway pair (``up --gateways 2``) ------------------------------
    def gateway_config(self, name: str) -> Path:
        return self.root / name / "ttsha.toml"

    def _start_pair(self, timeout: float) -> None:
        """Each gateway's monitor, then keepalived: gw-a first, so that it takes the VIP, then gw-b."""
        for name in GATEWAYS:
            self._start_gateway_monitor(name)
        for name in GATEWAYS:
            self._start_keepalived(name)
            if name == GATEWAYS[0]:
                self.wait_vip(name, timeout=30)
        for name in GATEWAYS:
            self.wait_monitor(timeout=30, state_file=self.root / name / "monitor.json")

    def _start_gateway_nginx(self, name: str) -> int:
        running = self.pid(f"nginx-{name}")
        if running is not None and alive(running):
            return running
        prefix = self.root / name / "gateway"
        (prefix / "nginx.pid").unlink(missing_ok=True)
        nginx = find_binary("nginx", "nginx")
        proc = subprocess.run([*LAB_NET.exec(name), nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                              capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise LabError(f"nginx of {name} did not start: {proc.stderr.strip()}")
        # Nginx forks into the background: its master's pid is in its pid file.
        deadline = time.monotonic() + 10
        while not (prefix / "nginx.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            pid = int((prefix / "nginx.pid").read_text())
        except (OSError, ValueError):
            raise LabError(f"nginx of {name} wrote no {prefix}/nginx.pid") from None
        pids = self._pids()
        pids[f"nginx-{name}"] = pid
        self._save_pids(pids)
        wait_port(LAB_NET.address(name), self.layout().gateway_port)
        return pid

    def _start_gateway_monitor(self, name: str) -> int:
        running = self.pid(f"monitor-{name}")
        if running is not None and alive(running):
            return running
        return self._spawn(f"monitor-{name}", [*LAB_NET.exec(name), sys.executable, "-m", "ttsha", "--config",
                                               str(self.gateway_config(name)), "monitor"])

    def _start_keepalived(self, name: str) -> int:
        from .. import keepalived

        running = self.pid(f"keepalived-{name}")
        if running is not None and alive(running):
            return running
        home = self.root / name
        for pid_file in home.glob("keepalived*.pid"):
            pid_file.unlink()  # a restarted keepalived must not take a recycled pid for its own
        entry = Path(sys.executable).with_name("ttsha")
        text = keepalived.render(load_config(self.gateway_config(name)), name,
                                 ttsha_bin=str(entry) if entry.exists() else "ttsha",
                                 config_path=self.gateway_config(name))
        atomic_write(home / "keepalived.conf", text, sync_dir=False)
        return self._spawn(f"keepalived-{name}", [*LAB_NET.exec(name), *keepalived_command(
            find_binary("keepalived", "keepalived"), home / "keepalived.conf", home)])

    def wait_vip(self, name: str, timeout: float) -> float:
        """Seconds until ``name`` alone holds the virtual IP."""
        start = time.monotonic()
        while LAB_NET.holders() != [name]:
            if time.monotonic() - start > timeout:
                raise LabError(f"{name} did not take the virtual IP {LAB_NET.vip} within {timeout:.0f} s "
                               f"(holders: {LAB_NET.holders() or 'none'}; see {self.root}/keepalived-{name}.log)")
            time.sleep(0.02)
        return time.monotonic() - start

    def vip_holders(self) -> list[str]:
        """The gateways holding the virtual IP (empty for a one-gateway lab)."""
        return LAB_NET.holders() if self.layout().gateways == 2 else []

    def gateway_processes(self, name: str) -> dict[str, int]:
        """Gateway ``name``'s recorded processes (nginx, monitor, keepalived) by role."""
        pids = self._pids()
        return {role: pids[f"{role}-{name}"] for role in ("nginx", "monitor", "keepalived")
                if f"{role}-{name}" in pids}

    def signal_gateway(self, name: str, roles: tuple[str, ...], sig: signal.Signals) -> list[int]:
        """Send ``sig`` to gateway ``name``'s processes of ``roles`` and everything below them
        (Nginx's workers, keepalived's VRRP child); the pids signalled."""
        signalled = []
        for role in roles:
            record = f"{role}-{name}"
            pid = self.pid(record)
            if pid is None:
                continue
            below = descendants(pid)  # before the parent: a killed parent's children are reparented
            if self._signal(record, sig):
                signalled.append(pid)
                for child in below:
                    try:
                        os.kill(child, sig)
                        signalled.append(child)
                    except ProcessLookupError:
                        pass
        return signalled

    def kill_gateway(self, name: str) -> list[int]:
        """A power loss of gateway ``name``: Nginx, monitor and keepalived SIGKILLed at once, its link down."""
        killed = self.signal_gateway(name, ("keepalived", "nginx", "monitor"), signal.SIGKILL)
        LAB_NET.power_off(name)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in killed) and time.monotonic() < deadline:
            time.sleep(0.02)
        return killed

    def start_gateway(self, name: str) -> None:
        """Power gateway ``name`` on again: link, Nginx, monitor, keepalived (each unless it runs)."""
        LAB_NET.power_on(name)
        self._start_gateway_nginx(name)
        self._start_gateway_monitor(name)
        self._start_keepalived(name)

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
        write_keys(ssh, keygen)
        (ssh / "known_hosts").write_text(known_hosts(ssh, [(host, layout.ssh_port) for host in layout.hosts.values()]))
        for name, host in layout.hosts.items():
            (ssh / f"sshd_config-{name}").write_text(render_sshd_config(host, layout.ssh_port, ssh, name))

    def wait_healthy(self, layout: LabLayout, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(NODE_HOSTS)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                if health(layout.url(name)) == "ready":
                    pending.discard(name)
                elif (pid := self.pid(name)) is not None and not alive(pid):
                    # No point waiting out the timeout for a node that exited (a bad config, say).
                    log_file = self.root / f"{name}.log"
                    lines = log_file.read_text(errors="replace").strip().splitlines() if log_file.exists() else []
                    raise PeerUnreachable(f"lab node {name} exited: {lines[-1] if lines else 'no output'} "
                                          f"(see {log_file})")
            time.sleep(0.2)
        if pending:
            raise PeerUnreachable(f"lab nodes not ready after {timeout:.0f} s: {', '.join(sorted(pending))} "
                                  f"(see {self.root}/*.log)")

    def wait_monitor(self, timeout: float, state_file: Path | None = None) -> dict:
        state_file = state_file or self.root / "monitor.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = statefile.read(state_file)
            if state and state.primary and state.nginx_ok:
                return state.raw
            time.sleep(0.1)
        raise LabError(f"the monitor did not take control within {timeout:.0f} s (see {state_file.parent}/*.log)")

    def monitor_state(self) -> dict | None:
        """The monitor's state document (raw: tests and the bench index it), or None."""
        state = statefile.read(self.root / "monitor.json")
        return state.raw if state else None

    # -- drills ----------------------------------------------------------
    def drill_config(self) -> Path:
        """The config a drill runs with: the gateway's (for a pair, the VIP holder's, whose monitor leads)."""
        layout = self.layout()
        if layout.gateways == 1:
            return layout.config
        holders = LAB_NET.holders()
        if len(holders) != 1:
            raise Refused(f"refusing to drill: {len(holders)} gateways hold the virtual IP "
                          f"({', '.join(holders) or 'none'}); see 'ttsha lab status'")
        return self.gateway_config(holders[0])

    def drill_plan(self, options: DrillOptions) -> list[str]:
        """What :meth:`drill` would do, changing nothing."""
        from .. import drill

        if options.fault in GATEWAY_FAULTS:
            return self._gateway_fault(options.fault).describe()
        return drill.prepare(load_config(self.drill_config()), options, self.layout().gateway_url).describe()

    def drill(self, options: DrillOptions) -> DrillReport | GatewayReport:
        """A drill against the lab: of the primary node (faults over SSH, as on a real pair), or,
        for a pair, of the gateway holding the virtual IP."""
        from .. import drill

        config = load_config(self.drill_config())
        if options.fault not in GATEWAY_FAULTS:
            return drill.run(config, options, self.layout().gateway_url)
        fault = self._gateway_fault(options.fault)
        settings, traffic = drill.resolve(config.drill, options)
        traffic = drill.with_capacity(traffic, self.layout().gateway_url, drill.CLIENT_TIMEOUT_S)
        with drill.sigterm_unwinds():
            report = drill.run_gateway_drill(self.layout().gateway_url, fault, LAB_NET.holders, self.primary_node,
                                             traffic, float(config.vrrp.check_interval))
        history.record(config, {"kind": "drill", "fault": report.fault, "target": report.target,
                                 "seed": traffic.seed, "rate": round(traffic.rate, 3), "requests": report.requests,
                                 "failed": report.failed, "vip_moved_s": report.vip_moved_s,
                                 "failed_after_move": report.failed_after_move, "missed": report.missed})
        return report

    def _gateway_fault(self, kind: str) -> GatewayFault:
        if self.layout().gateways != 2:
            raise LabError(f"{kind} needs a gateway pair: 'ttsha lab up --gateways 2'")
        holders = LAB_NET.holders()
        if len(holders) != 1:
            raise Refused(f"refusing to drill: {len(holders)} gateways hold the virtual IP")
        return GatewayFault(self, holders[0], kind)

    def primary_node(self) -> str | None:
        """The node whose /health says it is the primary (None: none, or more than one)."""
        from ..failover import node_state

        config = load_config(self.layout().config)
        primaries = [name for name in config.nodes
                     if (state := node_state(config, name, timeout=1.0)) is not None and state.role == "primary"]
        return primaries[0] if len(primaries) == 1 else None

    def status(self) -> dict[str, dict]:
        layout = self.layout()
        out = {}
        for name, pid in self._pids().items():
            running = alive(pid)
            entry = {"pid": pid, "running": running, "log": str(self.root / f"{name}.log")}
            if name.startswith("sshd-"):
                entry["endpoint"] = f"ssh://{layout.hosts[name[5:]]}:{layout.ssh_port}"
            if name in NODE_HOSTS:
                entry["endpoint"] = layout.url(name)
                entry["health"] = health(layout.url(name)) if running else "-"
            elif name == "nginx":
                entry["endpoint"] = layout.gateway_url
                entry["log"] = str(layout.gateway / "error.log")
            elif name.startswith("nginx-"):
                gateway = name[len("nginx-"):]
                entry["endpoint"] = f"http://{LAB_NET.address(gateway)}:{layout.gateway_port}"
                entry["log"] = str(layout.gateway_dir(gateway) / "gateway" / "error.log")
            out[name] = entry
        return out

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stop every process this lab started (by recorded pid), and nothing else."""
        stopped = []
        pids = self._pids()
        pair = [f"{role}-{g}" for role in ("keepalived", "monitor") for g in GATEWAYS]
        order = (*pair, "monitor", "replicate-primary", "replicate-standby", "nginx",
                 *(f"nginx-{g}" for g in GATEWAYS), "sshd-primary", "sshd-standby")
        for name in (*order, *NODE_HOSTS):
            pid = pids.get(name)
            if pid is None or not alive(pid):
                continue
            # Each signal only to the process the lab started (pid, start time, argv).
            if not self._signal(name, signal.SIGCONT):  # a drill may have frozen it
                continue
            for child in descendants(pid):  # and Nginx's workers with it
                try:
                    os.kill(child, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self._signal(name, signal.SIGQUIT if name.startswith("nginx") else signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid):
                self._signal(name, signal.SIGKILL)
            stopped.append(name)
        self.pids.unlink(missing_ok=True)
        self.starts.unlink(missing_ok=True)
        self._unmount_stores()
        try:
            two = self.layout().gateways == 2
        except LabError:
            two = False
        if two:
            stopped += LAB_NET.down()
        return stopped


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



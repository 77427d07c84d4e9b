"""Faults a drill injects into a node, and how it undoes them.

========= ============================================ =================================
fault     inject                                       restore
========= ============================================ =================================
kill      SIGKILL to the serve process                 ``start_command``
stop      SIGTERM (serve drains, then exits)           ``start_command``
freeze    SIGSTOP (a hung process)                     SIGCONT
isolate   nftables drops packets to its port           delete the nftables table
crash     SIGKILL, at once, to serve, its replicators  ``power_on_command`` (drill host),
          and the node's sshd with its sessions        then ``start_command`` over SSH
          (a power loss)
disk-full a filler file takes every free byte of the   delete the filler
          store's filesystem (a filesystem of its own)
slow      serve stopped/continued on a duty cycle      end the cycle, SIGCONT
          (runs 100 ms of every 500 ms: 5x slower)
========= ============================================ =================================

Two more faults hit the gateway pair instead of a node (:class:`GatewayFault`;
the lab's pair, ``ttsha lab up --gateways 2``, is where they run):

============== ======================================== =================================
fault          inject                                   restore
============== ======================================== =================================
gateway-kill   SIGKILL, at once, to the VIP holder's    its link up, then Nginx, monitor
               Nginx, monitor and keepalived; its link  and keepalived started again
               down (a power loss)                      (nopreempt: it stays backup)
gateway-freeze SIGSTOP to the VIP holder's Nginx        SIGCONT
               (keepalived's track script must notice)
============== ======================================== =================================

The serve process is the one that owns the node's listening socket *and*
whose command line is exactly a ttsha ``serve`` command; its start time is
checked again, through a pidfd, just before any signal (:mod:`ttsha.nodeproc`
does all of this on the node). The pid a node reports in ``/health`` is only
compared with it. Commands run locally, or over SSH when ``[nodes.NAME]
ssh_host`` is set, with the same host-key rules as the replicator; arguments
are always passed as a list and quoted for the remote shell, never
interpreted.

``slow`` is a duty cycle rather than a CPU cap: a cgroup v2 ``cpu.max`` needs
the cpu controller delegated to a cgroup the drill may write, which hybrid
cgroup v1 hosts (such as the lab's CI machine) and unprivileged drill users do
not have; SIGSTOP/SIGCONT works wherever the drill may signal the process,
and slows ``/health`` as much as synthesis, as a starved or swapping node does.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from .errors import PeerUnreachable, Refused, TTSHAError, UsageError

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

#: Faults of the primary node.
NODE_FAULTS = ("kill", "stop", "freeze", "isolate", "crash", "disk-full", "slow")
#: Faults of the gateway that holds the virtual IP (a gateway pair).
GATEWAY_FAULTS = ("gateway-kill", "gateway-freeze")
#: Every fault, in one place: the CLI's choices and the config's validation use it.
FAULTS = NODE_FAULTS + GATEWAY_FAULTS
NFT_TABLE = "ttsha_drill"
_SIGNALS = {"kill": "SIGKILL", "stop": "SIGTERM", "freeze": "SIGSTOP"}
#: ``slow``: the serve runs SLOW_RUN seconds of every SLOW_RUN + SLOW_STOP. A
#: stop shorter than the monitor's default probe read timeout (0.5 s) keeps
#: /health answering: the node is slow, not dead (a gray failure).
SLOW_RUN, SLOW_STOP = 0.1, 0.4
#: The duty cycle ends by itself after this long even if nobody restores it.
SLOW_MAX = 1800.0
#: How long a crash's restore waits for the node's SSH endpoint to come back.
POWER_ON_WAIT = 120.0


def _helper_source() -> str:
    from . import nodeproc

    return inspect.getsource(nodeproc)


class NodeShell:
    """Runs commands on one node: here, or over verified SSH."""

    def __init__(self, config: Config, name: str) -> None:
        self.config, self.name = config, name
        self.node = config.nodes[name]
        self._client: Any = None

    @property
    def remote(self) -> bool:
        return bool(self.node.ssh_host)

    @property
    def where(self) -> str:
        if not self.remote:
            return "locally"
        return f"over SSH {self.node.ssh_user}@{self.node.ssh_host}:{self.node.ssh_port}"

    def run(self, argv: list[str], stdin: bytes = b"", timeout: float = 60.0) -> tuple[int, str]:
        """(exit status, stdout + stderr) of ``argv`` on the node."""
        if self.remote:
            from . import ssh

            if self._client is None:
                rc = self.config.replicate
                self._client = ssh.connect(self.node.ssh_host, self.node.ssh_port, self.node.ssh_user, rc.key_file,
                                           rc.known_hosts)
            status, out, err = ssh.run(self._client, argv, stdin, timeout)
            return status, (out + err).decode(errors="replace")
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, check=False)
        except FileNotFoundError:
            return 127, f"{argv[0]}: not found"
        except subprocess.TimeoutExpired:
            return 124, f"{argv[0]}: timed out after {timeout:.0f} s"
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")

    def check(self, argv: list[str], what: str, stdin: bytes = b"", timeout: float = 60.0) -> str:
        status, output = self.run(argv, stdin, timeout)
        if status != 0:
            last = output.strip().splitlines()[-1] if output.strip() else f"exit {status}"
            raise TTSHAError(f"{what} on {self.name} ({self.where}) failed: {last}")
        return output

    def helper(self, *args: str, privileged: bool = False) -> dict[str, Any]:
        """Run a :mod:`ttsha.nodeproc` command on the node; its JSON answer.

        Exit 3 (the node could not be sure of the process) is :class:`Refused`.
        """
        python = "python3" if self.remote else sys.executable
        argv = [python, "-c", _helper_source(), *args]
        if privileged:
            argv = _sudo(self.config, self.name, argv)
        status, output = self.run(argv, timeout=60)
        lines = output.strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if lines else {}
        except ValueError:
            answer = {}
        if status == 3 and "refused" in answer:
            raise Refused(f"{answer['refused']} (on {self.name}, {self.where}); not touching it")
        if status != 0 or not isinstance(answer, dict):
            raise TTSHAError(f"{args[0]} on {self.name} ({self.where}) failed: "
                             f"{lines[-1] if lines else f'exit {status}'}")
        return answer

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _sudo(config: Config, name: str, argv: list[str]) -> list[str]:
    return ["sudo", "-n", *argv] if config.nodes[name].sudo else list(argv)


def nft_ruleset(url: str) -> str:
    """An nftables table that drops every packet to the node's serve address and port."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    match = ""
    try:
        addr = ipaddress.ip_address(parts.hostname or "")
        match = f"{'ip' if addr.version == 4 else 'ip6'} daddr {addr} "
    except ValueError:
        pass  # a host name: drop the port on every address of the node
    return (f"table inet {NFT_TABLE} {{\n"
            f"    chain input {{\n"
            f"        type filter hook input priority -10; policy accept;\n"
            f"        {match}tcp dport {port} drop\n"
            f"    }}\n"
            f"}}\n")


def _serve_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


class Fault:
    """One fault on one node: :meth:`describe`, :meth:`preflight`, :meth:`inject`, :meth:`restore`.

    ``pid`` is what the node's ``/health`` reported, if anything: only
    compared with the process found on the node, never signalled on its own.
    """

    def __init__(self, config: Config, node: str, kind: str, pid: int | None = None) -> None:
        if kind in GATEWAY_FAULTS:
            raise UsageError(f"{kind} is a fault of a gateway pair, not of a node: drill it in a lab with two "
                             f"gateways ('ttsha lab up --gateways 2', then 'ttsha lab drill --fault {kind}')")
        if kind not in NODE_FAULTS:
            raise TTSHAError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        self.config, self.node, self.kind, self.pid = config, node, kind, pid
        self.shell = NodeShell(config, node)
        self.injected = False
        self.target: dict[str, Any] | None = None  # pid, start, argv of the serve process
        self._slow: dict[str, Any] | None = None

    @property
    def store(self) -> str:
        return str(self.config.nodes[self.node].store or self.config.store.path)

    def describe(self) -> list[str]:
        node = self.config.nodes[self.node]
        where = self.shell.where
        start = " ".join(_sudo(self.config, self.node, list(node.start_command)))
        serve = f"the serve process listening on {urlsplit(node.url).netloc}"
        if self.kind == "isolate":
            return [f"inject: load nftables table inet {NFT_TABLE} {where} on {self.node}, dropping "
                    f"packets to {urlsplit(node.url).netloc}",
                    f"restore: nft delete table inet {NFT_TABLE}"]
        if self.kind == "crash":
            power = (f"run '{' '.join(node.power_on_command)}' here, then " if node.power_on_command
                     else "wait for its sshd to come back (systemd restarts it), then ")
            ssh_part = f", sshd on {node.ssh_host}:{node.ssh_port} and its sessions" if self.shell.remote else ""
            return [f"inject: SIGKILL at once to {serve}, its replicators{ssh_part} on {self.node} ({where})",
                    f"restore: {power}run '{start}' {where}"]
        if self.kind == "disk-full":
            return [f"inject: fill the filesystem of {self.node}'s store {self.store} with a filler file ({where})",
                    "restore: delete the filler file"]
        if self.kind == "slow":
            return [f"inject: SIGSTOP/SIGCONT {serve} on {self.node} ({where}): it runs {SLOW_RUN * 1000:.0f} ms of "
                    f"every {(SLOW_RUN + SLOW_STOP) * 1000:.0f} ms",
                    "restore: end the duty cycle, SIGCONT"]
        pid = f" (pid {self.pid} by /health)" if self.pid else ""
        restore = "SIGCONT to the same process" if self.kind == "freeze" else f"run '{start}' {where}"
        return [f"inject: {_SIGNALS[self.kind]} to {serve}{pid} on {self.node} ({where})", f"restore: {restore}"]

    def preflight(self) -> None:
        """Refuse early: find the node's own serve process; clean up what an earlier drill left."""
        if self.kind == "isolate":
            status, _ = self.shell.run(_sudo(self.config, self.node, ["nft", "list", "table", "inet", NFT_TABLE]))
            if status == 0:
                log.warning("removing nftables table %s left by an earlier drill on %s", NFT_TABLE, self.node)
                self._delete_table()
            return
        if self.kind == "disk-full":
            state = self.shell.helper("check-store", self.store)
            if state.get("filler"):
                log.warning("removing the filler file left by an earlier drill in %s on %s", self.store, self.node)
                self.shell.helper("unfill", self.store)
            return
        host, port = _serve_address(self.config.nodes[self.node].url)
        self.target = self.shell.helper("find", host, str(port))
        if self.pid is not None and self.pid != self.target["pid"]:
            raise Refused(f"{self.node}'s /health reports pid {self.pid}, but pid {self.target['pid']} listens on "
                          f"{host}:{port} {self.shell.where} (another pid namespace or host?); not signalling either")

    def inject(self) -> None:
        node = self.config.nodes[self.node]
        if self.kind not in ("isolate", "disk-full") and self.target is None:
            self.preflight()
        # Marked before the command runs: a drill interrupted while it runs (Ctrl-C,
        # SIGTERM) must still restore, and every restore step tolerates a fault
        # that never took effect.
        self.injected = True
        if self.kind == "isolate":
            self.shell.check(_sudo(self.config, self.node, ["nft", "-f", "-"]), "nft (isolate)",
                             stdin=nft_ruleset(node.url).encode())
        elif self.kind == "disk-full":
            filled = self.shell.helper("fill", self.store)
            log.info("filled %s on %s with %d bytes", self.store, self.node, filled.get("bytes", 0))
        else:
            assert self.target is not None
            pid, start = str(self.target["pid"]), str(self.target["start"])
            if self.kind == "crash":
                host, port = _serve_address(node.url)
                ssh_host = node.ssh_host if self.shell.remote else ""
                # Through sudo when configured: the node's sshd belongs to root.
                killed = self.shell.helper("crash", host, str(port), ssh_host, str(node.ssh_port), privileged=True)
                log.info("crash on %s: %s", self.node, killed.get("killed"))
                self.shell.close()  # its sshd is gone; the session we used ends with this
            elif self.kind == "slow":
                self._slow = self.shell.helper("slow", pid, start, str(SLOW_RUN), str(SLOW_STOP), str(SLOW_MAX))
            else:
                self.shell.helper("signal", pid, start, _SIGNALS[self.kind])

    def _delete_table(self) -> None:
        self.shell.check(_sudo(self.config, self.node, ["nft", "delete", "table", "inet", NFT_TABLE]),
                         "nft delete table")

    def _start(self) -> None:
        command = _sudo(self.config, self.node, list(self.config.nodes[self.node].start_command))
        self.shell.check(command, "start_command", timeout=120)

    def _power_on(self) -> None:
        node = self.config.nodes[self.node]
        if node.power_on_command:
            # Runs here, on the drill's host: the node has no sshd until it is powered on.
            # Output to a file, not a pipe: what it starts may keep a pipe open for its life.
            with tempfile.TemporaryFile() as output:
                proc = subprocess.run(list(node.power_on_command), stdin=subprocess.DEVNULL, stdout=output,
                                      stderr=output, timeout=120, check=False)
                output.seek(0)
                out = output.read().decode(errors="replace").strip().splitlines()
            if proc.returncode != 0:
                raise TTSHAError(f"power_on_command for {self.node} failed: {out[-1] if out else proc.returncode}")
        if self.shell.remote:
            deadline = time.monotonic() + POWER_ON_WAIT
            while not _reachable(node.ssh_host, node.ssh_port):
                if time.monotonic() > deadline:
                    raise PeerUnreachable(f"{self.node}'s sshd ({node.ssh_host}:{node.ssh_port}) did not come back "
                                          f"within {POWER_ON_WAIT:.0f} s of the crash; power it on by hand")
                time.sleep(0.2)

    def restore(self) -> None:
        """Undo the fault (idempotent: a node systemd already restarted is left alone)."""
        if not self.injected:
            return
        if self.kind == "isolate":
            listed, _ = self.shell.run(_sudo(self.config, self.node, ["nft", "list", "table", "inet", NFT_TABLE]))
            if listed == 0:  # absent when an interrupted inject never created it
                self._delete_table()
        elif self.kind == "disk-full":
            self.shell.helper("unfill", self.store)
        elif self.kind == "freeze":
            assert self.target is not None
            self.shell.helper("signal", str(self.target["pid"]), str(self.target["start"]), "SIGCONT")
        elif self.kind == "slow" and self._slow is None:  # interrupted before the cycle began
            assert self.target is not None
            self.shell.helper("signal", str(self.target["pid"]), str(self.target["start"]), "SIGCONT")
        elif self.kind == "slow":
            assert self.target is not None and self._slow is not None  # the None case is the branch above
            self.shell.helper("unslow", str(self._slow["helper"]), str(self._slow["helper_start"]),
                              str(self.target["pid"]), str(self.target["start"]))
        elif self.kind == "crash":
            self._power_on()
            self._start()
        else:
            self._start()
        self.injected = False

    def close(self) -> None:
        try:
            self.shell.close()
        except (OSError, PeerUnreachable):
            pass



class GatewayHosts(Protocol):
    """What a gateway fault needs of the gateway hosts (the lab's pair provides it)."""

    def kill_gateway(self, name: str) -> list[int]: ...

    def signal_gateway(self, name: str, roles: tuple[str, ...], sig: signal.Signals) -> list[int]: ...

    def start_gateway(self, name: str) -> None: ...


class GatewayFault:
    """One fault of gateway ``gateway`` (the VIP holder): :meth:`describe`, :meth:`inject`, :meth:`restore`."""

    def __init__(self, hosts: GatewayHosts, gateway: str, kind: str) -> None:
        if kind not in GATEWAY_FAULTS:
            raise TTSHAError(f"unknown gateway fault {kind!r}; one of {', '.join(GATEWAY_FAULTS)}")
        self.hosts, self.gateway, self.kind = hosts, gateway, kind
        self.injected = False

    def describe(self) -> list[str]:
        if self.kind == "gateway-kill":
            return [f"inject: SIGKILL at once to Nginx, monitor and keepalived of {self.gateway} (the VIP holder), "
                    "its link down (a power loss)",
                    f"restore: {self.gateway}'s link up, Nginx, monitor and keepalived started again (it stays backup)"]
        return [f"inject: SIGSTOP to Nginx (master and workers) of {self.gateway} (the VIP holder); keepalived's "
                "track script must give the VIP up", "restore: SIGCONT to the same processes"]

    def inject(self) -> None:
        self.injected = True  # before the signals: an interrupted inject is still restored
        if self.kind == "gateway-kill":
            killed = self.hosts.kill_gateway(self.gateway)
        else:
            killed = self.hosts.signal_gateway(self.gateway, ("nginx",), signal.SIGSTOP)
        if not killed:
            raise Refused(f"{self.kind}: none of {self.gateway}'s processes is the one the lab started; "
                          "not signalling anything")
        log.info("%s on %s: pids %s", self.kind, self.gateway, killed)

    def restore(self) -> None:
        if not self.injected:
            return
        if self.kind == "gateway-kill":
            self.hosts.start_gateway(self.gateway)
        else:
            self.hosts.signal_gateway(self.gateway, ("nginx",), signal.SIGCONT)
        self.injected = False

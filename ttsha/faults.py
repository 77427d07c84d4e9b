"""Faults a drill injects into a node, and how it undoes them.

======== ======================================== ==============================
fault    inject                                   restore
======== ======================================== ==============================
kill     SIGKILL to the serve process             ``start_command``
stop     SIGTERM (serve drains, then exits)       ``start_command``
freeze   SIGSTOP (a hung process)                 SIGCONT
isolate  nftables drops packets to its port       delete the nftables table
======== ======================================== ==============================

The serve process is the one that answers the node's ``/health`` (it reports
its pid), checked to be a ttsha process before it is signalled. Commands run
locally, or over SSH when ``[nodes.NAME] ssh_host`` is set, with the same
host-key rules as the replicator; arguments are always passed as a list and
quoted for the remote shell, never interpreted.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import subprocess
from urllib.parse import urlsplit

from . import ssh
from .config import Config
from .errors import PeerUnreachable, Refused, TTSHAError

log = logging.getLogger(__name__)

FAULTS = ("kill", "stop", "freeze", "isolate")
NFT_TABLE = "ttsha_drill"
_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGTERM, "freeze": signal.SIGSTOP}


class NodeShell:
    """Runs commands on one node: here, or over verified SSH."""

    def __init__(self, config: Config, name: str) -> None:
        self.config, self.name = config, name
        self.node = config.nodes[name]
        self._client = None

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

    def signal(self, pid: int, sig: signal.Signals) -> None:
        if self.remote:
            # `kill` is a builtin of every POSIX shell sshd runs the command with.
            self.check(["kill", "-s", sig.name.removeprefix("SIG"), str(pid)], f"kill -{sig.name}")
        else:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                raise TTSHAError(f"process {pid} on {self.name} is gone") from None
            except PermissionError:
                raise TTSHAError(f"not allowed to signal process {pid} on {self.name} (run as its user or root)") from None

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


class Fault:
    """One fault on one node: :meth:`describe`, :meth:`inject`, :meth:`restore`."""

    def __init__(self, config: Config, node: str, kind: str, pid: int | None) -> None:
        if kind not in FAULTS:
            raise TTSHAError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        self.config, self.node, self.kind, self.pid = config, node, kind, pid
        self.shell = NodeShell(config, node)
        self.injected = False

    def describe(self) -> list[str]:
        node = self.config.nodes[self.node]
        start = " ".join(_sudo(self.config, self.node, list(node.start_command)))
        if self.kind == "isolate":
            return [f"inject: load nftables table inet {NFT_TABLE} {self.shell.where} on {self.node}, dropping "
                    f"packets to {urlsplit(node.url).netloc}",
                    f"restore: nft delete table inet {NFT_TABLE}"]
        sig = _SIGNALS[self.kind].name
        restore = "SIGCONT to the same process" if self.kind == "freeze" else f"run '{start}' {self.shell.where}"
        return [f"inject: {sig} to serve pid {self.pid} on {self.node} ({self.shell.where})", f"restore: {restore}"]

    def preflight(self) -> None:
        """Refuse early: the pid must be a ttsha process; a leftover drill table is removed."""
        if self.kind == "isolate":
            status, _ = self.shell.run(_sudo(self.config, self.node, ["nft", "list", "table", "inet", NFT_TABLE]))
            if status == 0:
                log.warning("removing nftables table %s left by an earlier drill on %s", NFT_TABLE, self.node)
                self._delete_table()
            return
        if self.pid is None:
            raise Refused(f"{self.node}'s /health reports no pid: is it an older ttsha?")
        status, cmdline = self.shell.run(["cat", f"/proc/{self.pid}/cmdline"])
        if status != 0 or "ttsha" not in cmdline:
            raise Refused(f"pid {self.pid} reported by {self.node}'s /health is not a ttsha process "
                          f"{self.shell.where} (another pid namespace or host?); not signalling it")

    def inject(self) -> None:
        if self.kind == "isolate":
            self.shell.check(_sudo(self.config, self.node, ["nft", "-f", "-"]), "nft (isolate)",
                             stdin=nft_ruleset(self.config.nodes[self.node].url).encode())
        else:
            self.shell.signal(self.pid, _SIGNALS[self.kind])
        self.injected = True

    def _delete_table(self) -> None:
        self.shell.check(_sudo(self.config, self.node, ["nft", "delete", "table", "inet", NFT_TABLE]),
                         "nft delete table")

    def restore(self) -> None:
        """Undo the fault (idempotent: a node systemd already restarted is left alone)."""
        if not self.injected:
            return
        if self.kind == "isolate":
            self._delete_table()
        elif self.kind == "freeze":
            self.shell.signal(self.pid, signal.SIGCONT)
        else:
            command = _sudo(self.config, self.node, list(self.config.nodes[self.node].start_command))
            self.shell.check(command, "start_command", timeout=120)
        self.injected = False

    def close(self) -> None:
        try:
            self.shell.close()
        except (OSError, PeerUnreachable):
            pass

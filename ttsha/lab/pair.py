"""The gateway pair's network and processes (``ttsha lab up --gateways 2``, root only).

Each gateway host is a network namespace with one interface, ``eth0``: one
end of a veth pair whose other end is a port of a bridge in the namespace
the lab runs in (the "LAN"; the end-to-end tests give it a namespace of its
own). The nodes listen on addresses of that bridge, and the drill's clients
reach the virtual IP through it, as clients on a real LAN would. keepalived
runs in each gateway's namespace and moves the virtual IP between the two
``eth0``; Nginx listens on every address there, so it serves the VIP
wherever it lands. :meth:`GatewayNet.down` removes every namespace, link and
address :meth:`GatewayNet.up` made (deleting a namespace deletes its veth
pair; deleting the bridge deletes its addresses), and nothing else.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from .layout import LabError
from .procs import find_binary

#: The two gateway hosts, in VRRP priority order (the first takes the VIP first).
GATEWAYS = ("gw-a", "gw-b")
#: The interface inside each gateway's namespace.
INTERFACE = "eth0"


@dataclass(frozen=True)
class GatewayNet:
    """Names and addresses of one gateway pair's network: ``subnet`` is the first three octets of a /24."""

    bridge: str
    prefix: str  # of the namespace names
    subnet: str
    lan: str | None = None  # the LAN's namespace; None: the one the lab runs in

    def namespace(self, gateway: str) -> str:
        return f"{self.prefix}{gateway}"

    def port(self, gateway: str) -> str:
        """The bridge end of ``gateway``'s veth pair (at most 15 characters, as Linux wants)."""
        return f"{self.bridge}-{gateway[-1]}"

    def address(self, gateway: str) -> str:
        return f"{self.subnet}.{1 + GATEWAYS.index(gateway)}"

    @property
    def vip(self) -> str:
        return f"{self.subnet}.100"

    @property
    def host_address(self) -> str:
        """The LAN side's own address on the bridge (the drill's clients send from it)."""
        return f"{self.subnet}.250"

    def node_address(self, index: int) -> str:
        return f"{self.subnet}.{21 + index}"

    # -- commands ----------------------------------------------------------
    def exec(self, gateway: str) -> list[str]:
        """The prefix that runs a command on ``gateway`` (in its namespace)."""
        return [_ip(), "netns", "exec", self.namespace(gateway)]

    def _run(self, *argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = [_ip(), "netns", "exec", ns] if ns else []
        proc = subprocess.run([*prefix, *argv], capture_output=True, text=True, check=False, timeout=30)
        if check and proc.returncode != 0:
            raise LabError(f"'{' '.join(argv)}' failed{f' in {ns}' if ns else ''}: {proc.stderr.strip()}")
        return proc

    def up(self) -> None:
        """Create the namespaces, the bridge and the veth pairs, and give each its address."""
        ip = _ip()
        if self.lan:
            self._run(ip, "netns", "add", self.lan)
            self._run(ip, "link", "set", "lo", "up", ns=self.lan)
        self._run(ip, "link", "add", self.bridge, "type", "bridge", ns=self.lan)
        self._run(ip, "link", "set", self.bridge, "up", ns=self.lan)
        self._run(ip, "addr", "add", f"{self.host_address}/24", "dev", self.bridge, ns=self.lan)
        for gateway in GATEWAYS:
            ns, port = self.namespace(gateway), self.port(gateway)
            self._run(ip, "netns", "add", ns)
            self._run(ip, "link", "add", INTERFACE, "netns", ns, "type", "veth", "peer", "name", port, ns=self.lan)
            self._run(ip, "link", "set", port, "master", self.bridge, "up", ns=self.lan)
            self._run(ip, "link", "set", "lo", "up", ns=ns)
            self._run(ip, "link", "set", INTERFACE, "up", ns=ns)
            self._run(ip, "addr", "add", f"{self.address(gateway)}/24", "dev", INTERFACE, ns=ns)

    def add_address(self, address: str) -> None:
        """One more address on the LAN's bridge (a node's)."""
        self._run(_ip(), "addr", "add", f"{address}/24", "dev", self.bridge, ns=self.lan)

    def down(self) -> list[str]:
        """Remove what :meth:`up` created, whatever part of it exists; what was removed."""
        ip = _ip()
        removed = []
        namespaces = set(self.namespaces())
        for gateway in GATEWAYS:
            # The veth pair first, explicitly: a namespace outlives its name while the kernel still
            # holds sockets of it (orphaned TCP connections), and its links with it.
            port = self.port(gateway)
            if self._has_link(port) and self._run(ip, "link", "del", port, ns=self.lan, check=False).returncode == 0:
                removed.append(f"link {port}")
            ns = self.namespace(gateway)
            if ns in namespaces and self._run(ip, "netns", "del", ns, check=False).returncode == 0:
                removed.append(f"netns {ns}")
        if self._has_link(self.bridge) and self._run(ip, "link", "del", self.bridge, ns=self.lan,
                                                     check=False).returncode == 0:
            removed.append(f"bridge {self.bridge}")
        if self.lan and self.lan in namespaces:
            self._run(ip, "netns", "del", self.lan, check=False)
            removed.append(f"netns {self.lan}")
        return removed

    def leftovers(self) -> list[str]:
        """Namespaces and links of this network that exist now (empty after :meth:`down`)."""
        found = [f"netns {ns}" for ns in self.namespaces()]
        if self.lan is None or any(ns == self.lan for ns in self.namespaces()):
            found += [f"link {link}" for link in (self.bridge, *map(self.port, GATEWAYS)) if self._has_link(link)]
        return found

    def namespaces(self) -> list[str]:
        out = self._run(_ip(), "netns", "list", check=False).stdout
        ours = {self.namespace(g) for g in GATEWAYS} | ({self.lan} if self.lan else set())
        return [name for name in (line.split()[0] for line in out.splitlines() if line.strip()) if name in ours]

    def _has_link(self, name: str) -> bool:
        return self._run(_ip(), "link", "show", "dev", name, ns=self.lan, check=False).returncode == 0

    # -- the virtual IP ----------------------------------------------------
    def holds_vip(self, gateway: str) -> bool:
        out = self._run(_ip(), "-o", "addr", "show", "dev", INTERFACE, ns=self.namespace(gateway), check=False).stdout
        return f" {self.vip}/" in out

    def holders(self) -> list[str]:
        """The gateways whose ``eth0`` carries the virtual IP now (one, unless they are split or starting)."""
        return [gateway for gateway in GATEWAYS if self.holds_vip(gateway)]

    def power_off(self, gateway: str) -> None:
        """The host's network as after a power loss: its link down, no virtual IP (which a
        killed keepalived leaves configured, and the kernel would go on answering ARP for)."""
        ns = self.namespace(gateway)
        self._run(_ip(), "link", "set", INTERFACE, "down", ns=ns, check=False)
        self._run(_ip(), "addr", "del", f"{self.vip}/24", "dev", INTERFACE, ns=ns, check=False)

    def power_on(self, gateway: str) -> None:
        self._run(_ip(), "link", "set", INTERFACE, "up", ns=self.namespace(gateway))


#: The lab's own pair network (fixed names: labs run one at a time, under a lock).
LAB_NET = GatewayNet(bridge="ttlab0", prefix="ttsha-lab-", subnet="10.217.0")


def keepalived_command(binary: str, conf: Path, run_dir: Path) -> list[str]:
    """keepalived in the foreground (VRRP only, logging to stdout) with its pid files in ``run_dir``."""
    return [binary, "--dont-fork", "--vrrp", "--log-console", "--no-syslog", f"--use-file={conf}",
            f"--pid={run_dir / 'keepalived.pid'}", f"--vrrp_pid={run_dir / 'keepalived-vrrp.pid'}"]


def _ip() -> str:
    return find_binary("ip", "iproute2")

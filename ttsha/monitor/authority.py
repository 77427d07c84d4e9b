"""Which gateway tells the nodes their roles: the one that holds the virtual IP.

With a gateway pair (``[vrrp] vip`` set), both gateways run Nginx and a
monitor and route alike, but only the holder of the virtual IP signs role
claims (:mod:`ttsha.protocol`); the other one probes with role-less claims and
follows the roles the nodes report, so a move of the address never changes
the primary. keepalived decides who holds the address; this module only
looks: is the VIP on one of this host's interfaces.

The epoch every claim carries is the time of this gateway's latest
*takeover* in milliseconds (never lower than the previous one, whatever the
clock does). It stays the same while the gateway holds the address, so two
gateways that both believe they hold it (a partition between them) cannot
take turns: the nodes keep following the one that took over last, and the
other one sees that in their ``/health`` and reports the split. Without a
VIP (one gateway) this gateway always holds, from the moment it starts.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
from collections.abc import Callable

#: How often the monitor's main loop looks at the local addresses.
CHECK_INTERVAL_S = 0.25


def local_addresses(interface: str | None = None) -> set[str]:
    """IP addresses on this host's interfaces (``interface`` alone when given); empty when ``ip`` is missing."""
    ip = shutil.which("ip") or ("/usr/sbin/ip" if shutil.which("/usr/sbin/ip") else None)
    if ip is None:
        return set()
    argv = [ip, "-o", "addr", "show", *(["dev", interface] if interface else [])]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    found = set()
    for fields in (line.split() for line in out.splitlines()):
        if len(fields) > 3 and fields[2] in ("inet", "inet6"):
            found.add(fields[3].split("/")[0])
    return found


def vip_host(vip: str) -> str:
    """``192.0.2.100/24`` -> ``192.0.2.100`` (normalised)."""
    return str(ipaddress.ip_interface(vip).ip)


def _normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


class Authority:
    """Whether this gateway holds the virtual IP, and the epoch of its tenure."""

    def __init__(self, vip: str = "", interface: str | None = None,
                 addresses: Callable[[], set[str]] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.vip = vip_host(vip) if vip else ""
        self._addresses = addresses or (lambda: local_addresses(interface))
        self._clock = clock
        self.epoch = 0
        self.holds = False
        self.since: float | None = None
        self._checked_at = float("-inf")
        if not self.vip:
            self._take_over()

    def _take_over(self) -> None:
        self.holds, self.since = True, self._clock()
        self.epoch = max(self.epoch + 1, int(self.since * 1000))

    def refresh(self, force: bool = False) -> str | None:
        """Look again (at most every :data:`CHECK_INTERVAL_S` unless ``force``):
        ``"takeover"`` or ``"released"`` when that changed, else None."""
        if not self.vip:
            return None
        now = time.monotonic()
        if not force and now - self._checked_at < CHECK_INTERVAL_S:
            return None
        self._checked_at = now
        holds = self.vip in {_normal(a) for a in self._addresses()}
        if holds and not self.holds:
            self._take_over()
            return "takeover"
        if not holds and self.holds:
            self.holds, self.since = False, self._clock()
            return "released"
        return None

    def describe(self) -> dict[str, object]:
        return {"vip": self.vip or None, "holds": self.holds, "epoch": self.epoch, "since": self.since}

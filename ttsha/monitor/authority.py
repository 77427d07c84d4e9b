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

import errno
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Callable

#: How often the monitor's main loop looks at the local addresses when the
#: kernel cannot tell it of changes (no rtnetlink: see :class:`AddressEvents`).
CHECK_INTERVAL_S = 0.25
#: With address events, how often it looks anyway (an event lost to a full socket buffer is also seen at once).
IDLE_CHECK_S = 5.0

# rtnetlink multicast groups (linux/rtnetlink.h): addresses added or removed.
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV6_IFADDR = 0x100


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


class AddressEvents:
    """Says when an address of this host (its network namespace) was added or removed.

    keepalived moves the VIP with rtnetlink; listening to the same kernel
    messages lets the monitor look at the addresses only when they change,
    instead of running ``ip`` several times a second.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except (OSError, AttributeError):  # not Linux, or netlink refused: the caller polls
            return
        try:
            sock.bind((0, _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._sock = sock

    @property
    def available(self) -> bool:
        return self._sock is not None

    def pending(self) -> bool:
        """True when an address changed since the last call (the messages are consumed)."""
        if self._sock is None:
            return True
        changed = False
        while True:
            try:
                if not self._sock.recv(65536):
                    return changed
                changed = True
            except BlockingIOError:
                return changed
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # messages were dropped: something changed
                    changed = True
                    continue
                return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


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
                 addresses: Callable[[], set[str]] | None = None, clock: Callable[[], float] = time.time,
                 events: AddressEvents | None = None) -> None:
        self.vip = vip_host(vip) if vip else ""
        self._addresses = addresses or (lambda: local_addresses(interface))
        self._clock = clock
        #: Address change notices: without them (or when unavailable) :meth:`refresh` polls.
        self._events = events if events is not None and events.available else None
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
        """Look again (unless ``force``: after an address event or :data:`IDLE_CHECK_S`;
        without events, every :data:`CHECK_INTERVAL_S`): ``"takeover"`` or
        ``"released"`` when that changed, else None."""
        if not self.vip:
            return None
        now = time.monotonic()
        if not force:
            if self._events is None:
                if now - self._checked_at < CHECK_INTERVAL_S:
                    return None
            elif not self._events.pending() and now - self._checked_at < IDLE_CHECK_S:
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

    def close(self) -> None:
        if self._events is not None:
            self._events.close()

    def describe(self) -> dict[str, object]:
        return {"vip": self.vip or None, "holds": self.holds, "epoch": self.epoch, "since": self.since}

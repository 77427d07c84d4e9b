"""What the gateway and the nodes say to each other, in one module both import.

The monitor tells each node the role it has in the live upstream in its
``/health`` probes. A node believes a role only from a signed claim::

    X-TTSHA-Role: primary
    X-TTSHA-Role-Claim: v1 node=a gw=gw1 epoch=1764748800123 ts=1764748801.250000 sig=<hex>

``sig`` is HMAC-SHA256, keyed with the shared secret file (``[monitor]
secret_file``, mode 0600, the same file on the gateway and every node), over
the role, the node's name, the gateway's id, the epoch and the timestamp. A
node accepts a claim when

* the signature is valid and names this node,
* ``ts`` is within :data:`CLAIM_WINDOW_S` of the node's clock, and
* ``(epoch, ts)`` is newer than the newest claim it accepted: a claim whose
  epoch is lower than the newest accepted one is stale, one with the same
  epoch and an older or equal ``ts`` is a replay.

The epoch is the time, in milliseconds, at which the claiming gateway took
over the role authority (it holds the virtual IP, or it started, for a
single gateway: :mod:`ttsha.monitor.authority`), and stays the same while it
holds it. A restarted monitor or the other gateway of a pair taking over
presents a higher epoch, which makes it a fencing token: a deposed gateway's
claims are stale, and two gateways that both believe they hold the address
cannot take turns (the nodes follow the later takeover). Within one epoch,
a claim from a different gateway is refused too (the file below keeps the
gateway with the epoch). A probe without a role (the monitor has not routed
yet) is signed too, with an empty role: it authenticates the caller (the
monitor sees ``/health`` details) but changes no role.

A node must not forget across a restart, or a claim captured within the
window could be replayed to a freshly restarted node (the old primary,
killed and back, told "primary" again while the monitor has moved on). So

* a node believes no claim timestamped before its own start (by its
  clock): every claim it could have seen before the restart is older; and
* it records the newest epoch it accepted in a small file
  (``[serve] claims_file``), written and fsynced before the claim that
  raised it is believed, and read at start: a fenced gateway's lower epoch
  stays refused after a restart too.

Why this and not the alternatives: recording every accepted timestamp would
put an fsync in every monitor probe (one a second per node, in the path the
monitor times to 200 ms); a nonce handed out per start would change the
monitor's side of the protocol and cost a probe round before a restarted
node has a role. The epoch changes only when a gateway takes over, so its
file is written a handful of times a year. The price of the start-time rule is one
of clocks, which the window already needs in step (NTP): a monitor whose
clock is behind the node's by *d* has its claims believed *d* seconds after a
restart; one ahead by *d* leaves claims sent in the last *d* seconds before
the restart replayable.

Without a secret nothing is signed and no node believes any role.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError
from .fsutil import atomic_write

log = logging.getLogger(__name__)

PRIMARY, BACKUP, DOWN, ACTIVE = "primary", "backup", "down", "active"
ROLES = frozenset({PRIMARY, BACKUP, DOWN, ACTIVE})

#: The role the monitor gives a node (believed only with a valid claim).
ROLE_HEADER = "X-TTSHA-Role"
#: The signed claim that goes with it.
CLAIM_HEADER = "X-TTSHA-Role-Claim"
#: Set by the gateway on every proxied request (clients cannot remove it):
#: a node shows ``/health`` details only to loopback callers without it.
GATEWAY_HEADER = "X-TTSHA-Gateway"
#: When the gateway first received the client's request, ``t=<seconds since
#: the epoch>`` with milliseconds (Nginx's ``$msec``). Nginx builds the
#: upstream request once, so a request retried on another node after its
#: first node died carries its original arrival: the node serves it before
#: requests that arrived later (:func:`request_arrival`).
ARRIVAL_HEADER = "X-Request-Start"
#: How far a claim's timestamp may be from the node's clock (nodes need NTP).
CLAIM_WINDOW_S = 30.0
#: Shortest secret accepted.
MIN_SECRET_BYTES = 16

_ARRIVAL = re.compile(r"(?:t=)?([0-9]{1,12}(?:\.[0-9]{1,6})?)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_CLAIM = re.compile(
    r"v1 node=(?P<node>[A-Za-z0-9][A-Za-z0-9_.-]{0,62}) gw=(?P<gw>[A-Za-z0-9][A-Za-z0-9_.-]{0,62}) "
    r"epoch=(?P<epoch>[0-9]{1,19}) ts=(?P<ts>[0-9]{1,12}\.[0-9]{6}) sig=(?P<sig>[0-9a-f]{64})"
)


def load_secret(path: Path | None, key: str = "monitor.secret_file") -> bytes | None:
    """The shared secret from ``path`` (None: not configured).

    Refused unless it is a regular file owned by this user or root that
    nobody else can read or write (mode 0600 or 0400).
    """
    if path is None or str(path) == "":
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{key}: {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(f"{key}: {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                              f"others must not read it: chmod 600 {path}")
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(f"{key}: {path} belongs to uid {st.st_uid}, not to this user or root")
        data = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(data) < MIN_SECRET_BYTES:
        raise ConfigError(f"{key}: {path} holds {len(data)} bytes; at least {MIN_SECRET_BYTES} are needed "
                          f"(e.g. openssl rand -hex 32 > {path})")
    return data


def generate_secret(path: Path) -> None:
    """Write a new random secret to ``path`` with mode 0600 (never overwrites)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


def _message(role: str, node: str, gateway: str, epoch: int, ts: str) -> bytes:
    return "\n".join(("ttsha-role/1", role, node, gateway, str(epoch), ts)).encode()


def sign_claim(secret: bytes, role: str, node: str, gateway: str, epoch: int,
               now: float | None = None) -> dict[str, str]:
    """The headers a monitor probe carries (``role`` empty: authenticate only)."""
    ts = f"{time.time() if now is None else now:.6f}"
    sig = hmac.new(secret, _message(role, node, gateway, epoch, ts), hashlib.sha256).hexdigest()
    headers = {CLAIM_HEADER: f"v1 node={node} gw={gateway} epoch={epoch} ts={ts} sig={sig}"}
    if role:
        headers[ROLE_HEADER] = role
    return headers


@dataclass(frozen=True)
class Claim:
    role: str
    node: str
    gateway: str
    epoch: int
    ts: float


@dataclass(frozen=True)
class Verdict:
    """What a probe's headers prove: ``authenticated`` (a valid, fresh
    signature from the monitor) and ``claim`` (a role to adopt), or ``reason``."""

    authenticated: bool = False
    claim: Claim | None = None
    reason: str = ""


class HeaderLookup(Protocol):
    """A request's headers as :meth:`RoleVerifier.verify` reads them: a Mapping or werkzeug's Headers."""

    def get(self, key: str, /) -> str | None: ...


def read_epoch(path: Path, key: str = "serve.claims_file") -> tuple[int, str]:
    """The newest epoch recorded in ``path`` and the gateway that held it ((-1, ""): none yet);
    ConfigError when it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return -1, ""
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc} (if it is lost, "
                          f"remove it: the node then also believes a lower epoch again)") from None
    epoch = data.get("epoch") if isinstance(data, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < -1:
        raise ConfigError(f"{key}: {path} holds no epoch (expected {{\"epoch\": N}})")
    gateway = data.get("gateway")
    return epoch, gateway if isinstance(gateway, str) and valid_name(gateway) else ""


class RoleVerifier:
    """A node's side of the protocol: which claims it believes (thread-safe).

    ``state_file`` (``[serve] claims_file``): where the newest accepted epoch
    is recorded across restarts; None keeps it in memory only (tests).
    """

    def __init__(self, secret: bytes | None, node: str | None, window: float = CLAIM_WINDOW_S,
                 clock=time.time, state_file: Path | None = None) -> None:
        self.secret, self.node, self.window, self.clock = secret, node, window, clock
        self.state_file = state_file
        self._lock = threading.Lock()
        #: Claims signed before this node started cannot be fresh (see the module docstring).
        self.not_before = clock()
        self._recorded, self._newest_gateway = read_epoch(state_file) if state_file is not None else (-1, "")
        self._newest: tuple[int, float] = (self._recorded, 0.0)
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self._logged: dict[str, float] = {}

    def verify(self, headers: HeaderLookup) -> Verdict:
        """Check a request's headers; count and log what is refused."""
        role = headers.get(ROLE_HEADER)
        raw = headers.get(CLAIM_HEADER)
        if role is None and raw is None:
            return Verdict()
        verdict = self._verify(role, raw)
        with self._lock:
            if verdict.claim is not None:
                self.accepted += 1
            elif verdict.reason:
                self.rejected[verdict.reason] = self.rejected.get(verdict.reason, 0) + 1
                # Once a minute per reason: an attacker repeating a forged header must not flood the log.
                now = time.monotonic()
                if now - self._logged.get(verdict.reason, -1e9) >= 60:
                    self._logged[verdict.reason] = now
                    log.warning("role claim ignored: %s (%d so far)", verdict.reason, self.rejected[verdict.reason])
        return verdict

    def _verify(self, role: str | None, raw: str | None) -> Verdict:
        if self.secret is None:
            return Verdict(reason="no shared secret configured: roles are not believed")
        if raw is None:
            return Verdict(reason="unsigned role")
        match = _CLAIM.fullmatch(raw)
        if not match:
            return Verdict(reason="malformed claim")
        role = role or ""
        if role and role not in ROLES:
            return Verdict(reason="unknown role")
        epoch = int(match["epoch"])
        expected = hmac.new(self.secret, _message(role, match["node"], match["gw"], epoch, match["ts"]),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, match["sig"]):
            return Verdict(reason="bad signature")
        if self.node is None:
            return Verdict(reason="this node does not know its name ([serve] node)")
        if match["node"] != self.node:
            return Verdict(reason="claim for another node")
        ts = float(match["ts"])
        if abs(self.clock() - ts) > self.window:
            return Verdict(reason="claim outside the time window (clocks apart or a replay)")
        if not role:
            return Verdict(authenticated=True)
        if ts < self.not_before:
            return Verdict(authenticated=True, reason="claim from before this node started (a replay)")
        with self._lock:
            if epoch < self._newest[0]:
                return Verdict(authenticated=True, reason="stale epoch")
            if epoch == self._newest[0] and match["gw"] != self._newest_gateway:
                return Verdict(authenticated=True, reason="epoch held by another gateway")
            if (epoch, ts) <= self._newest:
                return Verdict(authenticated=True, reason="replayed claim")
            if epoch > self._recorded and self.state_file is not None:
                try:
                    atomic_write(self.state_file, json.dumps({"epoch": epoch, "gateway": match["gw"]}) + "\n",
                                 mode=0o600)
                except OSError as exc:
                    # Unrecorded, a restart would forget it: believe nothing rather than a forgettable epoch.
                    return Verdict(authenticated=True, reason=f"cannot record the epoch in serve.claims_file "
                                   f"{self.state_file}: {exc.strerror or exc}")
                self._recorded = epoch
            self._newest, self._newest_gateway = (epoch, ts), match["gw"]
        return Verdict(authenticated=True, claim=Claim(role, match["node"], match["gw"], epoch, ts))

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {"accepted": self.accepted, "rejected": dict(self.rejected),
                    "epoch": self._newest[0] if self._newest[0] >= 0 else None}


def default_gateway_id() -> str:
    """This host's name as a claim's gateway id (letters, digits, '.', '_', '-')."""
    import socket

    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip(".-_")[:63] or "gateway"


def probe_headers(secret: bytes | None, node: str, gateway: str) -> dict[str, str]:
    """Headers that authenticate a gateway tool's ``/health`` request (no role): its details."""
    return sign_claim(secret, "", node, gateway, 0) if secret else {}


def valid_name(name: str) -> bool:
    """A node or gateway name as claims carry it."""
    return _NAME.fullmatch(name) is not None


def request_arrival(value: str | None, now: float, horizon: float) -> float:
    """When the gateway received a request, from :data:`ARRIVAL_HEADER`, for ordering the queue.

    The header is the gateway's clock, not the node's, and anyone who can reach
    a node directly can send it: a missing or malformed value is ``now``, and a
    valid one is held within ``horizon`` seconds of ``now`` (the node's
    deadline), so a forged stamp can at most put a request ahead of those that
    arrived in the last ``horizon`` seconds, and a gateway whose clock is off
    by more than that is served in arrival order. Within it, skew shifts every
    request from that gateway alike and their order holds.
    """
    match = _ARRIVAL.fullmatch(value.strip()) if value else None
    if match is None:
        return now
    return min(now + horizon, max(now - horizon, float(match.group(1))))


# -- the /health document ----------------------------------------------------

#: ``status`` values a node's ``/health`` answers with (ttsha.server.service).
READY = "ready"


class HealthError(ValueError):
    """A ``/health`` body that is not a health document (the reason names the field)."""


def _optional(doc: dict[str, Any], key: str, kinds: tuple[type, ...]) -> Any:
    value = doc.get(key)
    # bool is an int to isinstance; no field of the document is a bool
    if value is None or (isinstance(value, kinds) and not isinstance(value, bool)):
        return value
    raise HealthError(f"/health field {key!r}: expected {' or '.join(k.__name__ for k in kinds)}, "
                      f"got {type(value).__name__}")


@dataclass(frozen=True)
class Health:
    """A node's ``/health`` answer, checked once where it is read.

    Only ``status`` is always there: a request without the gateway's claim
    (or from another host) gets the status alone. ``raw`` keeps the whole
    document for what reads sub-documents (replication, admission, canary).
    """

    status: str
    reason: str | None = None
    engine: str | None = None
    model_version: str | None = None
    pid: int | None = None
    role: str | None = None
    role_at: float | None = None
    role_epoch: int | None = None
    role_since: float | None = None
    replication: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ready(self) -> bool:
        return self.status == READY

    @classmethod
    def from_json(cls, doc: Any) -> Health:
        """The document, validated; raises :class:`HealthError` naming the bad field."""
        if not isinstance(doc, dict):
            raise HealthError(f"/health body is {type(doc).__name__}, not a JSON object")
        status = doc.get("status")
        if not isinstance(status, str) or not status:
            raise HealthError("/health has no 'status' string")
        role_at = _optional(doc, "role_at", (int, float))
        role_since = _optional(doc, "role_since", (int, float))
        return cls(status=status, reason=_optional(doc, "reason", (str,)),
                   engine=_optional(doc, "engine", (str,)),
                   model_version=_optional(doc, "model_version", (str,)),
                   pid=_optional(doc, "pid", (int,)), role=_optional(doc, "role", (str,)),
                   role_at=None if role_at is None else float(role_at),
                   role_epoch=_optional(doc, "role_epoch", (int,)),
                   role_since=None if role_since is None else float(role_since),
                   replication=_optional(doc, "replication", (dict,)), raw=doc)

    @classmethod
    def parse(cls, doc: Any) -> Health | None:
        """:meth:`from_json`, or None for a body that is not a health document."""
        try:
            return cls.from_json(doc)
        except HealthError:
            return None

    def role_fresh(self, now: float, max_age: float) -> bool:
        """The monitor told this node its role within ``max_age`` s."""
        return self.role is not None and self.role_at is not None and now - self.role_at <= max_age

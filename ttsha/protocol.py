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

The epoch grows every time a monitor changes the roles it applies (it is the
time of that change in milliseconds), so a restarted monitor outranks its
earlier self; a second gateway taking over must present a higher epoch, which
makes it a fencing token. A probe without a role (the monitor has not routed
yet) is signed too, with an empty role: it authenticates the caller (the
monitor sees ``/health`` details) but changes no role.

Without a secret nothing is signed and no node believes any role.
"""

from __future__ import annotations

import hashlib
import hmac
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
#: How far a claim's timestamp may be from the node's clock (nodes need NTP).
CLAIM_WINDOW_S = 30.0
#: Shortest secret accepted.
MIN_SECRET_BYTES = 16

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


class RoleVerifier:
    """A node's side of the protocol: which claims it believes (thread-safe)."""

    def __init__(self, secret: bytes | None, node: str | None, window: float = CLAIM_WINDOW_S,
                 clock=time.time) -> None:
        self.secret, self.node, self.window, self.clock = secret, node, window, clock
        self._lock = threading.Lock()
        self._newest: tuple[int, float] = (-1, 0.0)
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
        with self._lock:
            if epoch < self._newest[0]:
                return Verdict(authenticated=True, reason="stale epoch")
            if (epoch, ts) <= self._newest:
                return Verdict(authenticated=True, reason="replayed claim")
            self._newest = (epoch, ts)
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
        return cls(status=status, reason=_optional(doc, "reason", (str,)),
                   engine=_optional(doc, "engine", (str,)),
                   model_version=_optional(doc, "model_version", (str,)),
                   pid=_optional(doc, "pid", (int,)), role=_optional(doc, "role", (str,)),
                   role_at=None if role_at is None else float(role_at),
                   role_epoch=_optional(doc, "role_epoch", (int,)),
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

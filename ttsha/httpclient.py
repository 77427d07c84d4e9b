"""The one small HTTP client of ttsha's own calls (probes, role reads, webhooks).

One request per connection (``Connection: close``), a bounded body read,
and no exception for a peer that does not answer: :func:`request` returns a
:class:`Reply` with status 0 and the reason, so each caller decides what
"unreachable" means for it (a failed probe, an unknown role, a retry).
Timeouts are split: ``connect_timeout`` bounds reaching the peer,
``timeout`` each read after that (a node that accepts but stalls is told
apart from one that is gone: :attr:`Reply.connected`).
"""

from __future__ import annotations

import http.client
import json as jsonlib
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: Bodies ttsha reads are small JSON documents; a larger one is cut here.
DEFAULT_LIMIT = 1 << 20


@dataclass(frozen=True)
class Reply:
    """What came back. ``error`` says why the exchange failed: with ``status``
    0 no answer arrived; with a status, the body was cut short (``body`` holds
    what came)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    error: str = ""
    #: The connection was made (a status 0 with it: the peer stalled or broke the answer).
    connected: bool = False
    timed_out: bool = False
    #: Seconds from sending the request to the end of the body read.
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """A whole 2xx answer."""
        return not self.error and 200 <= self.status < 300

    @property
    def answered(self) -> int:
        """The status of a whole answer, else 0."""
        return 0 if self.error else self.status

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return jsonlib.loads(self.body)
        except ValueError:
            return None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or {} when it is anything else."""
        body = self.json()
        return body if isinstance(body, dict) else {}


def request(method: str, url: str, *, json: Any = None, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 2.0,
            connect_timeout: float | None = None, limit: int = DEFAULT_LIMIT) -> Reply:
    """One HTTP(S) request to ``url``; never raises for the network or a bad URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port out of range
        return Reply(0, error=f"invalid url {url!r}: {exc}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Reply(0, error=f"invalid url {url!r}: no http(s) host")
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, port,
                    timeout=timeout if connect_timeout is None else connect_timeout)
    sent = {"Connection": "close", **(headers or {})}
    if json is not None:
        body = jsonlib.dumps(json, ensure_ascii=False).encode()
        sent.setdefault("Content-Type", "application/json")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connected, started = False, time.monotonic()
    try:
        conn.connect()
        connected = True
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        started = time.monotonic()
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return Reply(0, error=_reason(exc), connected=connected,
                     timed_out=isinstance(exc, TimeoutError), elapsed=time.monotonic() - started)
    got = {k.lower(): v for k, v in resp.getheaders()}
    try:
        raw = resp.read(limit)
    except (OSError, http.client.HTTPException) as exc:  # the headers came, the body was cut
        partial = exc.partial if isinstance(exc, http.client.IncompleteRead) else b""
        return Reply(resp.status, got, partial, error=_reason(exc), connected=True,
                     timed_out=isinstance(exc, TimeoutError), elapsed=time.monotonic() - started)
    finally:
        conn.close()
    # A bounded read returns short rather than raising when the peer closes early.
    length = got.get("content-length", "")
    if length.isdigit() and len(raw) < min(int(length), limit):
        return Reply(resp.status, got, raw, error=f"IncompleteRead: {len(raw)} of {length} bytes",
                     connected=True, elapsed=time.monotonic() - started)
    return Reply(resp.status, got, raw, connected=True, elapsed=time.monotonic() - started)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def get(url: str, **kwargs: Any) -> Reply:
    return request("GET", url, **kwargs)


def post_json(url: str, document: Any, **kwargs: Any) -> Reply:
    return request("POST", url, json=document, **kwargs)


def host_url(host: str, port: int, path: str = "/", scheme: str = "http") -> str:
    """A URL for ``host`` (a name, IPv4 or bare IPv6 address) and ``port``."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{scheme}://{shown}:{port}{path}"

"""A local request socket: AF_UNIX, mode 0600, one JSON object per line each way, one request per connection.

Two parts of ttsha talk this way on one host: ``ttsha failover`` and
keepalived's check ask the gateway's monitor (:mod:`ttsha.monitor.control`),
and ``serve`` asks its node's replicator for acknowledgements
(:mod:`ttsha.replicate.ack`). Each wraps :class:`LineServer` and :func:`ask`
with its own error type and wording.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import TTSHAError

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024


class NoAnswer(Exception):
    """No reply came: ``absent`` when nothing listens, ``timed_out`` when it did not answer in time."""

    def __init__(self, reason: str, absent: bool = False, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.absent, self.timed_out = reason, absent, timed_out


def read_line(conn: socket.socket) -> bytes:
    """One line (at most :data:`MAX_LINE` bytes), or what came before the peer closed."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_LINE:
            raise ValueError("message too long")
    return data


class LineServer:
    """Accepts requests on ``path`` and answers each with ``handle(request)`` (a thread per connection)."""

    def __init__(self, path: Path, handle: Callable[[dict[str, Any]], dict[str, Any]], *, name: str,
                 backlog: int = 8, conn_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.handle = handle
        self.name, self.backlog, self.conn_timeout = name, backlog, conn_timeout
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Listen; a socket file left at ``path`` is removed first (the owner holds the lock that makes it stale)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # 0600: only this user may ask
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise TTSHAError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        sock.listen(self.backlog)
        sock.settimeout(0.5)
        self._sock = sock
        threading.Thread(target=self._accept_loop, args=(sock,), name=f"{self.name}-accept", daemon=True).start()

    def _accept_loop(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name=self.name, daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.conn_timeout)
            try:
                request = json.loads(read_line(conn))
                if not isinstance(request, dict):
                    raise ValueError("expected a JSON object")
                reply = self.handle(request)
            except (ValueError, OSError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            try:
                conn.sendall(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
            except OSError as exc:  # the client gave up waiting (its own deadline)
                log.debug("%s client went away: %s", self.name, exc)

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)


def ask(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send ``request`` and return the reply, all within ``timeout`` seconds; :class:`NoAnswer` otherwise."""
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(0.001, timeout))
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoAnswer(f"nothing listens on {path}", absent=True) from None
        sock.sendall(json.dumps(request).encode() + b"\n")
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        line = read_line(sock)
    except TimeoutError:
        raise NoAnswer(f"no answer within {1000 * timeout:.0f} ms", timed_out=True) from None
    except (OSError, ValueError) as exc:
        raise NoAnswer(str(getattr(exc, "strerror", None) or exc)) from None
    finally:
        sock.close()
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise NoAnswer("it closed without an answer")
    return reply

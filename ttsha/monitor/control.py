"""Who may change the gateway's routing, and how to ask the one that does.

Exactly one party rewrites the upstream at a time. The running monitor holds
an exclusive lock (``flock`` on ``<control_socket>.lock``) for its whole life
and answers requests on its control socket; ``ttsha failover --to`` asks it
there, so the monitor applies the switchover itself and never fights it.
With no monitor running, ``failover`` takes the same lock for the moment it
rewrites the upstream, and a monitor starting meanwhile waits for it.

Protocol: an AF_UNIX stream socket (mode 0600), one JSON object per line in
each direction, one request per connection.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PeerUnreachable, TTSHAError

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


class GatewayBusy(TTSHAError):
    """Another monitor or failover holds the gateway lock."""


class GatewayLock:
    """An exclusive ``flock`` naming its holder's pid (released when the process dies)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, timeout: float = 0.0, purpose: str = "") -> GatewayLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise TTSHAError(f"cannot lock {self.path}: {exc.strerror}") from None
                    raise GatewayBusy(f"the gateway is controlled by another process ({holder or 'unknown'}, "
                                      f"lock {self.path})") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} {purpose}".strip().encode())
        self._fd = fd
        return self

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> GatewayLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_path(socket_path: Path) -> Path:
    return Path(str(socket_path) + ".lock")


class ControlServer:
    """Accepts requests on ``path`` and answers each with ``handle(request)``."""

    def __init__(self, path: Path, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = Path(path)
        self.handle = handle
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The caller holds the gateway lock, so a socket file left here is stale.
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        threading.Thread(target=self._accept_loop, name="control", daemon=True).start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                line = _read_line(conn)
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("expected a JSON object")
                reply = self.handle(request)
            except (ValueError, OSError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            try:
                conn.sendall(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
            except OSError as exc:
                log.warning("control client went away: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("message too long")
    return data


def call(path: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the monitor; :class:`PeerUnreachable` when none listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise PeerUnreachable(f"no monitor listens on {path}") from None
    except OSError as exc:
        sock.close()
        raise PeerUnreachable(f"cannot reach the monitor on {path}: {exc.strerror or exc}") from None
    with sock:
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = json.loads(_read_line(sock) or b"null")
        except (OSError, ValueError) as exc:
            raise PeerUnreachable(f"the monitor on {path} did not answer: {exc}") from None
    if not isinstance(reply, dict):
        raise PeerUnreachable(f"the monitor on {path} sent no answer")
    return reply


def monitor_running(socket_path: Path) -> bool:
    """True when a monitor holds the gateway lock (whether or not it answers)."""
    try:
        GatewayLock(lock_path(socket_path)).acquire(0).release()
    except GatewayBusy:
        return True
    return False

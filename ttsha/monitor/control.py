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
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import PeerUnreachable, TTSHAError
from ..localsocket import LineServer, NoAnswer, ask

log = logging.getLogger(__name__)



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


class ControlServer(LineServer):
    """The monitor's end: answers each request with ``handle(request)``."""

    def __init__(self, path: Path, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__(path, handle, name="control", backlog=8, conn_timeout=10.0)


def call(path: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the monitor; :class:`PeerUnreachable` when none listens or answers."""
    try:
        return ask(path, request, timeout)
    except NoAnswer as exc:
        if exc.absent:
            raise PeerUnreachable(f"no monitor listens on {path}") from None
        raise PeerUnreachable(f"the monitor on {path} did not answer: {exc.reason}") from None


def monitor_running(socket_path: Path) -> bool:
    """True when a monitor holds the gateway lock (whether or not it answers)."""
    try:
        GatewayLock(lock_path(socket_path)).acquire(0).release()
    except GatewayBusy:
        return True
    return False

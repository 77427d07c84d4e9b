"""The lab's processes: finding binaries, ports, pids from /proc, logs, health."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from pathlib import Path

from .. import httpclient
from ..protocol import Health
from .layout import LabError


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def pick_port(host: str, preferred: int) -> int:
    if port_free(host, preferred):
        return preferred
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until ``host:port`` accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise LabError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def find_binary(name: str, package: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
    if path is None:
        raise LabError(f"{name} not found: install it with 'apt-get install -y {package}'")
    return path


def check_dir(root: Path) -> None:
    """Refuse a lab directory another user owns or others may write (``/tmp`` is shared)."""
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return
    if st.st_uid != os.geteuid():
        raise LabError(f"{root} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): refusing to use it as a "
                       f"lab directory; remove it or choose another --dir")
    if st.st_mode & 0o022:
        raise LabError(f"{root} can be written by others (mode {st.st_mode & 0o7777:04o}): refusing to use it as a "
                       f"lab directory; run 'chmod go-w {root}' or choose another --dir")


def open_log(path: Path) -> int:
    """A log file descriptor for appending; a symlink in its place is refused, not followed."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LabError(f"{path} is a symbolic link: refusing to write a log through it") from None
        raise LabError(f"cannot open {path}: {exc.strerror}") from None


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def health(url: str, timeout: float = 1.0) -> str:
    """The node's /health status word, or "unreachable"."""
    reply = httpclient.get(url.rstrip("/") + "/health", timeout=timeout)
    if not reply.status:
        return "unreachable"
    health = None if reply.error else Health.parse(reply.json())  # a body cut short (a node restarting)
    return health.status if health else str(reply.status)  # still tells the code


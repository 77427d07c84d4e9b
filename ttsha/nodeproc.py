"""Runs on a node: find the node's own ttsha processes and act on them safely.

Standard library only, and nothing imported from ttsha: a drill sends this
file's source to the node as ``python3 -c SOURCE COMMAND ARG...`` (locally
the same with this interpreter), so a fault is chosen, checked and signalled
on the node itself, by one rule, whether the node is here or over SSH.
Arguments arrive as separate argv entries; nothing is ever given to a shell.

A process is the node's ``serve`` only if it owns the node's listening TCP
socket (``/proc/net/tcp*`` inode -> ``/proc/PID/fd``) *and* its command line
is exactly a ttsha ``serve`` command (:func:`ttsha_command`). It is signalled
through a pidfd opened before its start time (``/proc/PID/stat`` field 22)
and command line are checked again, so a pid reused in between is never hit.

Commands (each prints one JSON object; exit 0, or 3 when it refuses):

``find HOST PORT``                      the serve process: pid, start, argv
``signal PID START SIGNAL``             signal the serve process, re-checked
``crash HOST PORT SSH_HOST SSH_PORT``   SIGKILL serve, its replicators, the sshd
``slow PID START RUN_S STOP_S MAX_S``   detach a SIGSTOP/SIGCONT duty cycle
``unslow HELPER HSTART PID START``      end the duty cycle, SIGCONT the serve
``check-store STORE``                   free space; refused unless a filesystem of its own
``fill STORE`` / ``unfill STORE``       take all free space of the store's filesystem
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import sys
import time

REFUSED = 3
FILLER = ".ttsha-drill-filler"
_PYTHON = re.compile(r"python[0-9.]*")
#: Interpreter flags that take no argument and change nothing we rely on.
_PY_FLAGS = {"-u", "-B", "-E", "-s", "-S", "-I", "-O", "-OO", "-q", "-P"}


class Refusal(Exception):
    """The node's process could not be identified for sure: do nothing."""


def ttsha_command(argv: list[str]) -> tuple[str, str | None] | None:
    """``(subcommand, --config value)`` if ``argv`` is exactly a ttsha command line, else None.

    Accepted: ``ttsha [GLOBAL...] SUB ...``, ``python [FLAGS] -m ttsha [GLOBAL...] SUB ...``
    and ``python [FLAGS] /path/to/ttsha [GLOBAL...] SUB ...`` (a console script);
    GLOBAL is ``--config PATH``, ``--config=PATH``, ``-v``... A path that merely
    contains "ttsha" (a checkout, a log file) does not match.
    """
    if not argv:
        return None
    base = os.path.basename(argv[0])
    i = 1
    if _PYTHON.fullmatch(base):
        while i < len(argv) and argv[i] in _PY_FLAGS:
            i += 1
        if argv[i:i + 2] == ["-m", "ttsha"]:
            i += 2
        elif i < len(argv) and os.path.basename(argv[i]) == "ttsha":
            i += 1
        else:
            return None
    elif base != "ttsha":
        return None
    config = None
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            config, i = arg.split("=", 1)[1], i + 1
        elif arg == "--verbose" or re.fullmatch(r"-v+", arg):
            i += 1
        else:
            return None
    if i >= len(argv):
        return None
    return argv[i], config


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]


def start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat: when the process started (clock ticks since boot)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _addresses(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except OSError:
        return set()


def _hex_address(text: str, family: int) -> str:
    raw = bytes.fromhex(text)
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[::-1])
    # /proc/net/tcp6: four 32-bit words, each in host (little-endian) order
    return socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listening_inodes(host: str, port: int) -> set[str]:
    """Inodes of TCP sockets listening on ``host:port`` (or on every address, port ``port``)."""
    wanted = _addresses(host) | {"0.0.0.0", "::"}
    inodes = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            addr, _, hexport = fields[1].partition(":")
            if fields[3] != "0A" or int(hexport, 16) != port:  # 0A: LISTEN
                continue
            address = _hex_address(addr, family)
            if address.startswith("::ffff:"):
                address = address[7:]
            if address in wanted:
                inodes.add(fields[9])
    return inodes


def socket_owners(inodes: set[str]) -> set[int]:
    """Pids holding any of these socket inodes open."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    owners = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    owners.add(int(entry))
                    break
            except OSError:
                continue
    return owners


def _describe(pid: int) -> dict:
    return {"pid": pid, "start": start_time(pid), "argv": cmdline(pid)}


def find_serve(host: str, port: int) -> dict:
    """The one ttsha serve process that listens on ``host:port``; raises :class:`Refusal`."""
    inodes = listening_inodes(host, port)
    if not inodes:
        raise Refusal(f"nothing listens on {host}:{port} here")
    owners = socket_owners(inodes)
    if not owners:
        raise Refusal(f"cannot see which process listens on {host}:{port} (another user's: run as root or sudo)")
    serve = []
    for pid in sorted(owners):
        try:
            command = ttsha_command(cmdline(pid))
        except OSError:
            continue
        if command is not None and command[0] == "serve":
            serve.append(pid)
    if len(serve) != 1:
        found = ", ".join(f"{p} ({' '.join(_safe_cmdline(p))[:80]})" for p in sorted(owners))
        raise Refusal(f"the process listening on {host}:{port} is not exactly one ttsha serve command: {found}")
    info = _describe(serve[0])
    command = ttsha_command(info["argv"])
    if command is None:  # it exited (or its pid was reused) since it was looked at above
        raise Refusal(f"the ttsha serve process {serve[0]} listening on {host}:{port} went away")
    info["config"] = command[1]
    return info


def _safe_cmdline(pid: int) -> list[str]:
    try:
        return cmdline(pid)
    except OSError:
        return ["?"]


def _open_checked(pid: int, start: int, accept) -> int:
    """A pidfd for ``pid`` once its start time and command line are checked again."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise Refusal(f"process {pid} is gone") from None
    try:
        if start_time(pid) != start:
            raise Refusal(f"process {pid} is not the one identified (its start time changed: pid reused)")
        if not accept(cmdline(pid)):
            raise Refusal(f"process {pid} is no longer the expected command: {' '.join(cmdline(pid))[:120]}")
    except OSError:
        os.close(fd)
        raise Refusal(f"process {pid} is gone") from None
    except Refusal:
        os.close(fd)
        raise
    return fd


def _is_serve(argv: list[str]) -> bool:
    command = ttsha_command(argv)
    return command is not None and command[0] == "serve"


def send(pid: int, start: int, sig: signal.Signals, accept=_is_serve) -> None:
    fd = _open_checked(pid, start, accept)
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        raise Refusal(f"process {pid} is gone") from None
    finally:
        os.close(fd)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                tree.setdefault(parent(int(entry)), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return tree


def _ancestors() -> set[int]:
    found, pid = set(), os.getpid()
    while pid > 1:
        found.add(pid)
        try:
            pid = parent(pid)
        except OSError:
            break
    return found


def _is_sshd(pid: int) -> bool:
    """Whether ``pid`` runs OpenSSH's sshd (its executable; sshd rewrites its command line)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) in ("sshd", "sshd-session")
    except OSError:
        return False


def crash(host: str, port: int, ssh_host: str, ssh_port: int) -> dict:
    """SIGKILL, all at once, the serve, every replicator of the same config and the node's sshd."""
    serve = find_serve(host, port)
    victims = {serve["pid"]: "serve"}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = ttsha_command(cmdline(int(entry)))
            except OSError:
                continue
            if command == ("replicate", serve["config"]):
                victims[int(entry)] = "replicate"
    if ssh_host:
        spared = _ancestors()  # our own SSH session ends when the drill disconnects
        owners = socket_owners(listening_inodes(ssh_host, ssh_port))
        sshd = [p for p in owners if _is_sshd(p)]
        if not sshd:
            raise Refusal(f"no sshd listens on {ssh_host}:{ssh_port} here")
        tree = _children()
        for pid in sshd:
            victims[pid] = "sshd"
            stack = list(tree.get(pid, []))
            while stack:
                child = stack.pop()
                if child not in spared:
                    victims.setdefault(child, "ssh session")
                stack.extend(tree.get(child, []))
    # Open every pidfd first (each still the process found: same start time),
    # then send the signals back to back: a power loss.
    starts = {}
    for pid in victims:
        try:
            starts[pid] = start_time(pid)
        except OSError:
            continue
    fds = {}
    for pid, start in starts.items():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            same = start_time(pid) == start
        except OSError:
            same = False
        if same:
            fds[pid] = fd
        else:
            os.close(fd)
    killed = []
    for pid, fd in fds.items():
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            killed.append({"pid": pid, "what": victims[pid]})
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)
    return {"killed": killed}


def _duty_cycle(fd: int, run_s: float, stop_s: float, max_s: float) -> None:
    """Stop and continue the process on a cycle; always ends with SIGCONT."""
    done = []
    signal.signal(signal.SIGTERM, lambda *_: done.append(1))
    deadline = time.monotonic() + max_s
    try:
        while not done and time.monotonic() < deadline:
            signal.pidfd_send_signal(fd, signal.SIGSTOP)
            time.sleep(stop_s)
            signal.pidfd_send_signal(fd, signal.SIGCONT)
            time.sleep(run_s)
    except ProcessLookupError:
        return
    finally:
        try:
            signal.pidfd_send_signal(fd, signal.SIGCONT)
        except ProcessLookupError:
            pass


def slow(pid: int, start: int, run_s: float, stop_s: float, max_s: float) -> dict:
    """Detach a helper that runs the serve process ``run_s`` out of every ``run_s + stop_s``."""
    fd = _open_checked(pid, start, _is_serve)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the detached helper
        os.close(read)
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(devnull, std)
        os.write(write, f"{os.getpid()} {start_time(os.getpid())}".encode())
        os.close(write)
        try:
            _duty_cycle(fd, run_s, stop_s, max_s)
        finally:
            os._exit(0)
    os.close(write)
    os.close(fd)
    os.waitpid(child, 0)
    data = os.read(read, 100).decode().split()
    os.close(read)
    return {"helper": int(data[0]), "helper_start": int(data[1]), "run_s": run_s, "stop_s": stop_s}


def unslow(helper: int, helper_start: int, pid: int, start: int) -> dict:
    """Stop the duty cycle (it sends SIGCONT as it ends), then SIGCONT the serve to be sure."""
    try:
        fd = _open_checked(helper, helper_start, lambda argv: True)
    except Refusal:
        fd = None  # already ended (bounded, or the serve died)
    if fd is not None:
        try:
            signal.pidfd_send_signal(fd, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    if start_time(helper) != helper_start:
                        break
                except OSError:
                    break
                time.sleep(0.02)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)
    try:
        send(pid, start, signal.SIGCONT)
    except Refusal as exc:
        return {"continued": False, "why": str(exc)}
    return {"continued": True}


def _store_dir(store: str) -> int:
    """An fd of the store directory, refused when a symlink or on the root filesystem."""
    try:
        fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise Refusal(f"store {store}: {exc.strerror}") from None
    if os.fstat(fd).st_dev == os.stat("/").st_dev:
        os.close(fd)
        raise Refusal(f"store {store} is on the root filesystem; disk-full fills only a filesystem of the store's "
                      f"own (in the lab: run 'ttsha lab up' as root)")
    return fd


def check_store(store: str) -> dict:
    """Free space of the store's filesystem, refused unless it is a filesystem of its own."""
    fd = _store_dir(store)
    try:
        st = os.fstatvfs(fd)
        filler = _exists(FILLER, fd)
    finally:
        os.close(fd)
    return {"free_bytes": st.f_bavail * st.f_frsize, "size_bytes": st.f_blocks * st.f_frsize, "filler": filler}


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def fill(store: str) -> dict:
    """Take every free byte of the store's filesystem with one filler file."""
    dir_fd = _store_dir(store)
    try:
        fd = os.open(FILLER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        raise Refusal(f"{store}/{FILLER} exists (an earlier drill's): remove it first") from None
    finally:
        os.close(dir_fd)
    written = 0
    try:
        st = os.fstatvfs(fd)
        size = st.f_bfree * st.f_frsize
        try:
            os.posix_fallocate(fd, 0, size)
            written = size
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        # Whatever fallocate left (metadata rounding, a filesystem without it): write until ENOSPC.
        block = b"\0" * 65536
        os.lseek(fd, written, os.SEEK_SET)
        for _ in range(1 << 20):
            try:
                written += os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 512:
                    break
                block = block[: len(block) // 2]
        try:
            os.fsync(fd)
        except OSError:
            pass
        free = os.fstatvfs(fd)
    finally:
        os.close(fd)
    return {"filler": f"{store}/{FILLER}", "bytes": written, "free_bytes": free.f_bavail * free.f_frsize}


def unfill(store: str) -> dict:
    dir_fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.unlink(FILLER, dir_fd=dir_fd)
        removed = True
    except FileNotFoundError:
        removed = False
    finally:
        os.close(dir_fd)
    return {"removed": removed}


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    try:
        if command == "find":
            result = find_serve(args[0], int(args[1]))
        elif command == "signal":
            send(int(args[0]), int(args[1]), signal.Signals[args[2]])
            result = {"signalled": int(args[0]), "signal": args[2]}
        elif command == "crash":
            result = crash(args[0], int(args[1]), args[2], int(args[3]))
        elif command == "slow":
            result = slow(int(args[0]), int(args[1]), float(args[2]), float(args[3]), float(args[4]))
        elif command == "unslow":
            result = unslow(int(args[0]), int(args[1]), int(args[2]), int(args[3]))
        elif command == "check-store":
            result = check_store(args[0])
        elif command == "fill":
            result = fill(args[0])
        elif command == "unfill":
            result = unfill(args[0])
        else:
            raise Refusal(f"unknown command {command!r}")
    except Refusal as exc:
        print(json.dumps({"refused": str(exc)}))
        return REFUSED
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One verified SSH connection and the SFTP operations replication needs.

The connection itself is :func:`ttsha.ssh.connect` (verified host key, key
authentication only).
Every remote path is built from a relative path that has been checked, under
the configured remote root: nothing is ever written outside it.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol, cast

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_REMOVE,
    CMD_SETSTAT,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTPError,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

from .. import ssh
from ..errors import PeerUnreachable, TTSHAError
from ..ssh import HostKeyRefused, check_key_file  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

#: Temp names are ``.<name>.ttsha-<pid>.tmp``: a crashed sender's leftovers are recognisable.
TEMP_MARK = ".ttsha-"

#: SFTP window and packet sizes: large windows keep a fast link busy.
WINDOW = 64 * 1024 * 1024
CHUNK = 256 * 1024
#: Files up to this size go in one pipelined burst of requests (most audio results).
SMALL_FILE = 4 * 1024 * 1024
#: The largest SFTP write paramiko itself sends.
WRITE_SIZE = 32768


class _Requests(Protocol):
    """The private request helpers of paramiko's SFTPClient (see :data:`FSYNC`); its stubs leave them out."""

    def _request(self, t: int, *args: object) -> tuple[int, paramiko.Message]: ...

    def _async_request(self, fileobj: object, t: int, *args: object) -> int: ...

    # With ``waitfor`` given, paramiko returns only that request's reply (never (None, None)).
    def _read_response(self, waitfor: int) -> tuple[int, paramiko.Message]: ...


def _requests(sftp: paramiko.SFTPClient) -> _Requests:
    """``sftp`` seen through its private request helpers."""
    # cast: the helpers exist on every SFTPClient of the pinned major versions
    # (setup.cfg), but types-paramiko only describes the public API.
    return cast(_Requests, sftp)


def _mode(attr: SFTPAttributes, path: str) -> int:
    """The mode of a remote file; OpenSSH always sends it, a server that omits it is refused."""
    if attr.st_mode is None:
        raise TTSHAError(f"the peer's SFTP server sent no mode for {path}")
    return attr.st_mode


def _entry(attr: SFTPAttributes, path: str) -> RemoteEntry:
    if attr.st_size is None or attr.st_mtime is None:
        raise TTSHAError(f"the peer's SFTP server sent no size or mtime for {path}")
    return RemoteEntry(attr.st_size, int(attr.st_mtime), stat.S_IMODE(_mode(attr, path)))


class UnsafePath(TTSHAError):
    """A path would leave the replication root."""


def safe_relative(rel: str) -> str:
    """Normalize a relative path and refuse anything that climbs out or is absolute."""
    if not rel or "\0" in rel:
        raise UnsafePath(f"invalid path {rel!r}")
    path = PurePosixPath(rel)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts):
        raise UnsafePath(f"path {rel!r} leaves the replication root")
    return str(path)


@dataclass(frozen=True)
class RemoteEntry:
    size: int
    mtime: int
    mode: int


@dataclass
class _OpenFile:
    lane: Peer
    temp: str | None  # None: the file is there already, opened to be fsynced in place
    target: str
    handle: bytes
    closed: bool = False


@dataclass
class Opened:
    """What :meth:`Peer.open_durable` opened on the peer: files by relative path, directories to sync."""

    peer: Peer  # the channel its directories were opened on
    directories: list[str]  # every directory to sync (dirs holds their open handles)
    files: dict[str, _OpenFile] = field(default_factory=dict)
    dirs: list[bytes] = field(default_factory=list)
    sent: int = 0  # bytes written by finish_durable


class Peer:
    """An SFTP session to ``user@host:port`` rooted at ``root``."""

    def __init__(self, host: str, port: int, user: str, key_file: Path, known_hosts: Path, root: str,
                 bwlimit_kib: int = 0, timeout: float = 10.0) -> None:
        self.host, self.port, self.user = host, port, user
        self.key_file, self.known_hosts = Path(key_file), Path(known_hosts)
        self.root = root.rstrip("/") or "/"
        self.bwlimit = bwlimit_kib * 1024
        self.timeout = timeout
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._dirs: set[str] = set()  # remote directories known to exist
        self._fresh_dirs: set[str] = set()  # created here, their names not yet synced in their parents

    # -- connection ------------------------------------------------------
    def connect(self) -> Peer:
        client = ssh.connect(self.host, self.port, self.user, self.key_file, self.known_hosts, self.timeout)
        transport = client.get_transport()
        if transport is None:  # a connected client always has one
            client.close()
            raise PeerUnreachable(f"no SSH transport to {self.host}:{self.port}")
        transport.default_window_size = WINDOW
        self._client = client
        self._sftp = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW, max_packet_size=32768)
        return self

    def channel(self) -> Peer:
        """Another SFTP channel over the same SSH connection (for concurrent transfers)."""
        twin = Peer(self.host, self.port, self.user, self.key_file, self.known_hosts, self.root,
                    self.bwlimit // 1024, self.timeout)
        twin._client = self._client
        twin._dirs = self._dirs  # directories known to exist, shared by the channels
        twin._fresh_dirs = self._fresh_dirs
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None:
            raise PeerUnreachable(f"not connected to {self.host}:{self.port}")
        twin._sftp = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW, max_packet_size=32768)
        twin._owner = False
        return twin

    _owner = True

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            raise PeerUnreachable(f"not connected to {self.host}:{self.port}")
        return self._sftp

    @property
    def alive(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return bool(transport and transport.is_active())

    def close(self) -> None:
        if self._sftp is not None and not self._owner:
            self._sftp.close()
        elif self._client is not None:
            self._client.close()
        self._client = self._sftp = None

    # -- paths -----------------------------------------------------------
    def remote(self, rel: str) -> str:
        return posixpath.join(self.root, safe_relative(rel))

    def makedirs(self, rel_dir: str) -> None:
        if rel_dir in ("", "."):
            return
        path = self.root
        for part in PurePosixPath(safe_relative(rel_dir)).parts:
            path = posixpath.join(path, part)
            if path in self._dirs:
                continue
            # Try mkdir first: one round trip for a new directory (a burst
            # of results opens many shards); only a refusal needs a stat.
            try:
                self.sftp.mkdir(path)
                self._fresh_dirs.add(path)
            except OSError:
                # lstat: a symlink on the peer is not followed out of the root.
                if not stat.S_ISDIR(_mode(self.sftp.lstat(path), path)):
                    raise UnsafePath(f"{path} exists on the peer and is not a directory") from None
            self._dirs.add(path)

    # -- operations ------------------------------------------------------
    def stale_temps(self, entries: dict[str, RemoteEntry]) -> list[str]:
        """Temp files left on the peer by a sender that died mid-transfer."""
        mine = (f"{TEMP_MARK}{os.getpid()}.tmp", f"{TEMP_MARK}{os.getpid()}-")  # untagged, tagged (open_durable)
        return [
            rel for rel in entries
            if posixpath.basename(rel).startswith(".") and TEMP_MARK in rel and rel.endswith(".tmp")
            and not (rel.endswith(mine[0]) or mine[1] in posixpath.basename(rel))
        ]

    def walk(self, progress: Callable[[], None] | None = None) -> dict[str, RemoteEntry]:
        """Every regular file under the root: relative path -> size, mtime, mode
        (``progress`` is called after each directory: a long walk is work, not a hang)."""
        found: dict[str, RemoteEntry] = {}
        try:
            self.sftp.stat(self.root)
        except FileNotFoundError:
            return found
        pending = [""]
        self._dirs.add(self.root)
        while pending:
            rel_dir = pending.pop()
            if progress is not None:
                progress()
            for attr in self.sftp.listdir_attr(posixpath.join(self.root, rel_dir) if rel_dir else self.root):
                rel = posixpath.join(rel_dir, attr.filename) if rel_dir else attr.filename
                mode = _mode(attr, rel)
                if stat.S_ISDIR(mode):
                    pending.append(rel)
                    self._dirs.add(posixpath.join(self.root, rel))
                elif stat.S_ISREG(mode):
                    found[rel] = _entry(attr, rel)
        return found

    def stat(self, rel: str) -> RemoteEntry | None:
        try:
            attr = self.sftp.stat(self.remote(rel))
        except FileNotFoundError:
            return None
        return _entry(attr, rel)

    def put(self, root: Path, rel: str) -> int:
        """Copy ``root/rel`` to ``rel`` atomically: dot-temp name, mode and mtime set, then rename.

        Only a regular file inside ``root`` is read (:mod:`.local`: no
        symlink followed). A reader on the peer sees the old file or the
        whole new one, never a partial one. Returns the bytes sent.
        """
        from .local import open_inside

        target = self.remote(rel)
        directory, name = posixpath.split(target)
        source, st = open_inside(root, rel)
        with source:
            self.makedirs(posixpath.dirname(safe_relative(rel)))
            temp = posixpath.join(directory, f".{name}{TEMP_MARK}{os.getpid()}.tmp")
            try:
                if st.st_size <= SMALL_FILE and not self.bwlimit:
                    return self._put_small(source, temp, target, st)
                return self._put_large(source, temp, target, st)
            except BaseException:  # nothing half-written stays behind on the peer
                try:
                    self.sftp.remove(temp)
                except OSError:
                    pass
                raise

    def _put_large(self, src, temp: str, target: str, st: os.stat_result) -> int:
        sent = 0
        started = time.monotonic()
        with self.sftp.open(temp, "wb") as dst:
            dst.set_pipelined(True)
            while True:
                block = src.read(CHUNK)
                if not block:
                    break
                dst.write(block)
                sent += len(block)
                if self.bwlimit:
                    ahead = sent / self.bwlimit - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        self.sftp.chmod(temp, stat.S_IMODE(st.st_mode))
        self.sftp.utime(temp, (st.st_atime, st.st_mtime))
        self.sftp.posix_rename(temp, target)
        return sent

    def _put_small(self, src, temp: str, target: str, st: os.stat_result) -> int:
        """:meth:`put` for a small file in three round trips instead of six.

        paramiko's file object waits for each request in turn (open, write,
        close, chmod, utime, rename), and a small file is all round trips.
        Here the writes, one SETSTAT (mode and times) and the close go out
        back to back: sftp-server handles a channel's requests in order. Every
        status is checked before the rename, so a failed write is never
        renamed into place. (paramiko's request helpers are private but are
        what its own SFTPFile uses; tests/replicate checks the result with rsync.)
        """
        data = src.read()
        sftp = _requests(self.sftp)
        attrs = SFTPAttributes()
        kind, msg = sftp._request(CMD_OPEN, temp, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC, attrs)
        if kind != CMD_HANDLE:
            raise SFTPError(f"open {temp}: expected a handle")
        handle = msg.get_binary()
        attrs.st_mode = stat.S_IMODE(st.st_mode)
        attrs.st_atime, attrs.st_mtime = int(st.st_atime), int(st.st_mtime)
        pending = [
            sftp._async_request(type(None), CMD_WRITE, handle, int64(offset), data[offset:offset + WRITE_SIZE])
            for offset in range(0, len(data), WRITE_SIZE)
        ]
        pending.append(sftp._async_request(type(None), CMD_FSETSTAT, handle, attrs))
        pending.append(sftp._async_request(type(None), CMD_CLOSE, handle))
        for num in pending:
            sftp._read_response(num)  # raises on an error status
        self.sftp.posix_rename(temp, target)
        return len(data)

    def put_durable(self, files: list[tuple[Path, str]], channels: list[Peer] | None = None,
                    present: frozenset[str] = frozenset()) -> int:
        """Make ``files`` (local root, path relative to it) survive a crash of the peer.

        Each goes to a dot-temp name, mode and times set, ``fsync@openssh.com``,
        closed; only once every one of them is on the peer's disk are they
        renamed into place, in the order given (sidecars first), and then every
        directory that holds a new name is fsynced too, or a power cut on the
        peer could lose the renames. Relative paths in ``present`` were copied
        already (by :meth:`put`): those are only fsynced where they are, with
        their directory. Files are spread over ``channels`` (twins of this
        Peer) so their fsyncs run at once; renames and directories go over this
        one, in order. Three round trips (:meth:`open_durable`, then
        :meth:`finish_durable`), two when nothing is renamed. Returns the bytes sent.
        """
        return self.finish_durable(files, self.open_durable([rel for _, rel in files], channels, present))

    def open_durable(self, rels: list[str], channels: list[Peer] | None = None,
                     present: frozenset[str] = frozenset(), tag: str = "") -> Opened:
        """The first round trip of :meth:`put_durable`: directories made, each
        temp file (or file in ``present``) and each directory to sync opened.

        It needs no data, so it can run before the files exist (the
        acknowledgement path does it while serve synthesizes). ``tag`` marks
        the temp names (``.<name>.ttsha-<pid>-<tag>.tmp``): files opened ahead
        never share a temp name with :meth:`put`, which may copy the same file
        meanwhile. Hand the result to :meth:`finish_durable` or :meth:`discard`.
        """
        lanes = [self, *(channels or [])]
        directories: list[str] = []
        for rel in rels:
            if rel not in present:
                self.makedirs(posixpath.dirname(safe_relative(rel)))
            directory = posixpath.dirname(self.remote(rel))
            directories.append(directory)
            # A directory created without a sync (here or by put) lives in its parent.
            while directory != self.root and directory in self._fresh_dirs:
                directory = posixpath.dirname(directory)
                directories.append(directory)
        directories = list(dict.fromkeys(directories))
        mark = f"{TEMP_MARK}{os.getpid()}-{tag}.tmp" if tag else f"{TEMP_MARK}{os.getpid()}.tmp"
        planned: list[tuple[str, Peer, str | None, str]] = []  # rel, lane, temp or None when present, target
        for i, rel in enumerate(rels):
            target = self.remote(rel)
            directory, name = posixpath.split(target)
            temp = None if rel in present else posixpath.join(directory, f".{name}{mark}")
            planned.append((rel, lanes[i % len(lanes)], temp, target))
        # Temp files write-only, on their lanes; files already there and every
        # directory read-only (sftp-server opens it with open(2), and an fsync
        # of that descriptor is how a directory is synced).
        opens = [(lane, _requests(lane.sftp)._async_request(
                    type(None), CMD_OPEN, temp or target,
                    SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC if temp else SFTP_FLAG_READ, SFTPAttributes()))
                 for _, lane, temp, target in planned]
        dir_opens = [_requests(self.sftp)._async_request(type(None), CMD_OPEN, d, SFTP_FLAG_READ, SFTPAttributes())
                     for d in directories]
        opened = Opened(self, directories)
        failure: BaseException | None = None
        # Every reply is read, even after a failure: the handles that did open are closed by discard.
        for (rel, lane, temp, target), (_, num) in zip(planned, opens, strict=True):
            try:
                opened.files[rel] = _OpenFile(lane, temp, target, _handle(lane.sftp, num, temp or target))
            except Exception as exc:
                failure = failure or exc
        for d, num in zip(directories, dir_opens, strict=True):
            try:
                opened.dirs.append(_handle(self.sftp, num, d))
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            self.discard(opened)
            raise failure
        return opened

    def finish_durable(self, files: list[tuple[Path, str]], opened: Opened) -> int:
        """Round trips two and three of :meth:`put_durable` on what :meth:`open_durable`
        opened for ``files`` (any order: renames follow ``files``). Every handle
        of ``opened`` is closed; on an error its temp files are removed."""
        from .local import open_inside

        missing = [rel for _, rel in files if rel not in opened.files]
        if missing:
            self.discard(opened)
            raise TTSHAError(f"not opened on the peer: {', '.join(missing)}")
        renames: list[tuple[str, str]] = []
        try:
            # 2. Write, set mode and times, fsync, close: one burst per lane.
            pending: list[tuple[_Requests, int]] = []
            for root, rel in files:
                f = opened.files[rel]
                sftp = _requests(f.lane.sftp)
                if f.temp is not None:
                    source, st = open_inside(root, rel)  # the one rule (.local): regular files inside the root
                    with source:
                        data = source.read()
                    opened.sent += len(data)
                    attrs = SFTPAttributes()
                    attrs.st_mode = stat.S_IMODE(st.st_mode)
                    attrs.st_atime, attrs.st_mtime = int(st.st_atime), int(st.st_mtime)
                    pending += [(sftp, sftp._async_request(type(None), CMD_WRITE, f.handle, int64(offset),
                                                           data[offset:offset + WRITE_SIZE]))
                                for offset in range(0, len(data), WRITE_SIZE)]
                    pending.append((sftp, sftp._async_request(type(None), CMD_FSETSTAT, f.handle, attrs)))
                    renames.append((f.temp, f.target))
                pending.append((sftp, sftp._async_request(type(None), CMD_EXTENDED, FSYNC, f.handle)))
                pending.append((sftp, sftp._async_request(type(None), CMD_CLOSE, f.handle)))
                f.closed = True
            # A file of ``opened`` not among ``files`` is closed too (and its temp removed below).
            for f in opened.files.values():
                if not f.closed:
                    sftp = _requests(f.lane.sftp)
                    pending.append((sftp, sftp._async_request(type(None), CMD_CLOSE, f.handle)))
                    f.closed = True
            if renames:
                _read_all(pending)
                pending = []
            # 3. Every file is on the peer's disk: rename in order, then sync the directories.
            sftp = _requests(opened.peer.sftp)  # where its directories were opened
            pending += [(sftp, sftp._async_request(type(None), CMD_EXTENDED, POSIX_RENAME, temp, target))
                        for temp, target in renames]
            for handle in opened.dirs:
                pending.append((sftp, sftp._async_request(type(None), CMD_EXTENDED, FSYNC, handle)))
                pending.append((sftp, sftp._async_request(type(None), CMD_CLOSE, handle)))
            opened.dirs.clear()
            _read_all(pending)
        except BaseException:
            self.discard(opened)
            raise
        leftovers = [f.temp for rel, f in opened.files.items() if f.temp is not None
                     and rel not in {r for _, r in files}]
        for temp in leftovers:
            try:
                opened.peer.sftp.remove(temp)
            except OSError:
                pass
        self._fresh_dirs.difference_update(opened.directories)
        return opened.sent

    def discard(self, opened: Opened) -> None:
        """Close what :meth:`open_durable` opened and remove its temp files, best effort
        (the connection may be gone: a later catch-up removes temp files of other processes)."""
        pending: list[tuple[_Requests, int]] = []
        try:
            for f in opened.files.values():
                if not f.closed:
                    sftp = _requests(f.lane.sftp)
                    pending.append((sftp, sftp._async_request(type(None), CMD_CLOSE, f.handle)))
                    f.closed = True
            for handle in opened.dirs:
                main = _requests(opened.peer.sftp)
                pending.append((main, main._async_request(type(None), CMD_CLOSE, handle)))
            opened.dirs.clear()
            sftp = _requests(opened.peer.sftp)
            pending += [(sftp, sftp._async_request(type(None), CMD_REMOVE, f.temp))
                        for f in opened.files.values() if f.temp is not None]
        except Exception:
            return
        for lane, num in pending:
            try:
                lane._read_response(num)
            except Exception:
                pass

    def set_dir_mtimes(self, times: list[tuple[str, float]]) -> None:
        """Set directory mtimes, in order, as one pipelined burst of SETSTAT requests."""
        pending = []
        for rel_dir, mtime in times:
            path = self.root if rel_dir in ("", ".") else self.remote(rel_dir)
            attrs = SFTPAttributes()
            attrs.st_atime = attrs.st_mtime = int(mtime)
            pending.append(_requests(self.sftp)._async_request(type(None), CMD_SETSTAT, path, attrs))
        for num in pending:
            _requests(self.sftp)._read_response(num)

    def remove(self, rel: str) -> None:
        try:
            self.sftp.remove(self.remote(rel))
        except FileNotFoundError:
            pass

    def checksum(self, rel: str) -> str:
        """SHA-256 of a remote file, read over SFTP (for ``checksum = true``)."""
        import hashlib

        digest = hashlib.sha256()
        with self.sftp.open(self.remote(rel), "rb") as f:
            f.prefetch()
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
        return digest.hexdigest()


#: OpenSSH's SFTP extensions (sftp-server has both since 6.5). paramiko has
#: no call for fsync, so it goes out through the same request helpers its own
#: SFTPFile uses (private; setup.cfg bounds paramiko's major version for them).
FSYNC = "fsync@openssh.com"
POSIX_RENAME = "posix-rename@openssh.com"


def _handle(sftp: paramiko.SFTPClient, num: int, path: str) -> bytes:
    kind, msg = _requests(sftp)._read_response(num)  # raises on an error status
    if kind != CMD_HANDLE:
        raise SFTPError(f"open {path}: expected a handle")
    return msg.get_binary()


def _read_all(pending: list[tuple[_Requests, int]]) -> None:
    """Wait for every reply, in order; the first error status raises.

    paramiko drops a reply it was not waiting for, so each is awaited by
    number (a channel answers in order, so none is skipped).
    """
    for sftp, num in pending:
        try:
            sftp._read_response(num)
        except OSError as exc:
            if "unsupported" in str(exc).lower():
                raise TTSHAError(f"the peer's SFTP server lacks {FSYNC} or {POSIX_RENAME} "
                                 "(OpenSSH >= 6.5 has both): acknowledgements need them") from None
            raise


def fetch_host_key(host: str, port: int, timeout: float = 10.0) -> paramiko.PKey:
    """The key a host presents (for trust-host, which shows it before recording it)."""
    import socket

    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def record_host_key(known_hosts: Path, host: str, port: int, key: paramiko.PKey) -> None:
    entry = host if port == 22 else f"[{host}]:{port}"
    known = paramiko.HostKeys()
    if known_hosts.exists():
        known.load(str(known_hosts))
    known.add(entry, key.get_name(), key)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    known.save(str(known_hosts))
    os.chmod(known_hosts, 0o644)

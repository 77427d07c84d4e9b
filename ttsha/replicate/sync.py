"""rsync semantics over SFTP: quick check, whole-file atomic transfer, delete.

A file is sent when it is missing on the peer or differs in size or mtime
(or in content, with ``checksum``). Mode and mtime are preserved, so the
next quick check finds nothing to do. ``delete`` removes files the source no
longer has. Symlinks are never followed out of the source root.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import paramiko

from .local import NotSendable, stat_inside
from .transport import Peer, RemoteEntry, safe_relative

log = logging.getLogger(__name__)

SEND, DELETE = "send", "delete"


@dataclass(frozen=True)
class LocalEntry:
    path: Path
    size: int
    mtime: int
    mode: int


@dataclass(frozen=True)
class Change:
    op: str
    rel: str
    reason: str  # new, size, time, checksum, extraneous
    size: int = 0

    def itemize(self) -> str:
        """rsync ``--itemize-changes`` style: ``>f+++++++++ path``, ``>f.st...... path``, ``*deleting path``."""
        if self.op == DELETE:
            return f"*deleting   {self.rel}"
        flags = {"new": "+++++++++", "size": ".st......", "time": "..t......", "checksum": "c........"}[self.reason]
        return f">f{flags} {self.rel}"


@dataclass
class SyncResult:
    changes: list[Change] = field(default_factory=list)
    files_sent: int = 0
    bytes_sent: int = 0
    deleted: int = 0
    seconds: float = 0.0


def selected(rel: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """rsync-like filters on the relative path and on each path component."""
    parts = rel.split("/")

    def match(pattern: str) -> bool:
        return fnmatch.fnmatchcase(rel, pattern) or any(fnmatch.fnmatchcase(p, pattern) for p in parts)

    include = list(include)
    if any(match(p) for p in exclude):
        return False
    return not include or any(match(p) for p in include)


def scan_local(root: Path, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> dict[str, LocalEntry]:
    """Regular files under ``root``; temp files of writers in progress are left out."""
    root = Path(root)
    found: dict[str, LocalEntry] = {}
    include, exclude = list(include), list(exclude)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in filenames:
            if name.startswith(".") and name.endswith(".tmp"):
                continue  # an atomic write in progress: its rename brings the real name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not selected(rel, include, exclude):
                continue
            path = Path(dirpath) / name
            try:
                st = stat_inside(root, rel)  # the one rule (.local): regular files inside the root
            except FileNotFoundError:
                continue
            except NotSendable:
                log.warning("skipping %s: only regular files inside %s are sent", rel, root)
                continue
            if stat.S_ISREG(st.st_mode):
                found[safe_relative(rel)] = LocalEntry(path, st.st_size, int(st.st_mtime), stat.S_IMODE(st.st_mode))
    return found


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_first(rel: str) -> tuple[str, int]:
    """Sort key: a result's JSON sidecar goes before its audio."""
    base, _, ext = rel.rpartition(".")
    return (base or rel, 0 if ext == "json" else 1)


def plan(
    local: dict[str, LocalEntry],
    remote: dict[str, RemoteEntry],
    *,
    delete: bool = False,
    checksum: bool = False,
    peer: Peer | None = None,
) -> list[Change]:
    changes: list[Change] = []
    for rel in sorted(local, key=sidecar_first):
        entry, other = local[rel], remote.get(rel)
        if other is None:
            changes.append(Change(SEND, rel, "new", entry.size))
        elif other.size != entry.size:
            changes.append(Change(SEND, rel, "size", entry.size))
        elif checksum:
            if peer is None or peer.checksum(rel) != file_sha256(entry.path):
                changes.append(Change(SEND, rel, "checksum", entry.size))
        elif other.mtime != entry.mtime:
            changes.append(Change(SEND, rel, "time", entry.size))
    if delete:
        changes += [Change(DELETE, rel, "extraneous") for rel in sorted(set(remote) - set(local))]
    return changes


def sync(
    root: Path,
    peer: Peer,
    *,
    delete: bool = False,
    checksum: bool = False,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    dry_run: bool = False,
    progress: Callable[[Change, int], None] | None = None,
    concurrency: int = 1,
) -> SyncResult:
    """Make the peer's root match ``root`` (one way), ``concurrency`` files at a time.

    A result's sidecar and audio travel together, sidecar first.
    """
    started = time.monotonic()
    local = scan_local(root, include, exclude)
    walked = peer.walk()
    if not dry_run:
        for rel in peer.stale_temps(walked):
            peer.remove(rel)
    remote = {rel: e for rel, e in walked.items()
              if selected(rel, include, exclude) and not rel.split("/")[-1].startswith(".")}
    result = SyncResult(changes=plan(local, remote, delete=delete, checksum=checksum, peer=peer))
    if dry_run:
        result.seconds = time.monotonic() - started
        return result
    lock = threading.Lock()

    def apply(channel: Peer, change: Change) -> None:
        if change.op == SEND:
            try:
                sent = channel.put(root, change.rel)
            except FileNotFoundError:
                log.info("%s vanished before it could be sent", change.rel)
                return
            except NotSendable as exc:
                log.warning("not sending %s", exc)
                return
            with lock:
                result.bytes_sent += sent
                result.files_sent += 1
        else:
            channel.remove(change.rel)
            with lock:
                result.deleted += 1
        if progress is not None:
            progress(change, result.bytes_sent)

    apply_phased(peer, result.changes, lambda change: change.rel, apply, concurrency)
    if result.changes:
        _copy_dir_times(Path(root), peer, {os.path.dirname(rel) for rel in local})
    result.seconds = time.monotonic() - started
    return result


def _copy_dir_times(root: Path, peer: Peer, dirs: set[str]) -> None:
    """Directory mtimes as on the source (rsync -a does the same), deepest first."""
    every = set()
    for rel_dir in dirs:
        while rel_dir:
            every.add(rel_dir)
            rel_dir = os.path.dirname(rel_dir)
    ordered = sorted(every, key=lambda d: -d.count("/"))
    peer.set_dir_mtimes([(rel_dir, (root / rel_dir).stat().st_mtime) for rel_dir in ordered]
                        + [("", root.stat().st_mtime)])


T = TypeVar("T")


def apply_phased(peer: Peer, items: list[T], rel: Callable[[T], str], apply: Callable[[Peer, T], None],
                 concurrency: int) -> None:
    """``apply(channel, item)`` to each item, sidecars first, then everything else,
    each phase over up to ``concurrency`` SFTP channels: whoever sees an audio
    file on the peer can also read the request that made it."""
    sidecars = [item for item in items if rel(item).endswith(".json")]
    others = [item for item in items if not rel(item).endswith(".json")]
    for phase in (sidecars, others):
        if concurrency <= 1 or len(phase) < 2:
            for item in phase:
                apply(peer, item)
        else:
            run_groups(peer, [[item] for item in phase], lambda channel, group: apply(channel, group[0]), concurrency)


def run_groups(peer: Peer, groups: list, apply: Callable, concurrency: int) -> None:
    """Apply groups over ``concurrency`` SFTP channels of one SSH connection."""
    import queue as queue_module

    work: queue_module.Queue = queue_module.Queue()
    for group in groups:
        work.put(group)
    errors: list[BaseException] = []
    channels = [peer]
    for _ in range(min(concurrency, len(groups)) - 1):
        try:
            channels.append(peer.channel())
        except paramiko.ChannelException as exc:
            # sshd's MaxSessions (10 by default) caps channels per connection.
            log.warning("the peer refused SFTP channel %d (%s); continuing with %d", len(channels) + 1, exc,
                        len(channels))
            break

    def worker(channel: Peer) -> None:
        while not errors:
            try:
                group = work.get_nowait()
            except queue_module.Empty:
                return
            try:
                apply(channel, group)
            except BaseException as exc:  # re-raised in the caller
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in channels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for channel in channels[1:]:
        channel.close()
    if errors:
        raise errors[0]

"""One peer of a node's replicator: its durable queue, its SSH link, its acknowledgements.

The replicator keeps one :class:`PeerLink` per peer (``[replicate] peers``),
each with a queue of its own and a thread of its own, so a peer that is down,
cut off or slow only ever delays its own copies. Every finished file goes into
each link's queue; each link drains its queue over one SFTP session to its
peer, reconnecting with exponential backoff, and a catch-up scan when it
(re)connects queues whatever that peer lacks: a node that joins or returns
gets every result from every other node.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import Config
from .durable import IO_TIMEOUT_S, AckSender, OnPeer, PathLocks
from .local import NotSendable, stat_inside
from .queue import DurableQueue, Pending
from .sync import SyncResult, apply_phased, scan_local, sidecar_first, sync
from .transport import HostKeyRefused, Peer

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
LAG_SAMPLES = 2000
#: The link's loop waits at most this long at a time (and beats, see :attr:`PeerLink.beat`).
WAIT_SLICE_S = 1.0


def peer_for(config: Config, name: str, root: str) -> Peer:
    """A Peer for node ``name`` of [nodes], rooted at ``root`` on that node."""
    node = config.nodes[name]
    host = node.ssh_host or urlsplit(node.url).hostname or ""
    return Peer(host, node.ssh_port, node.ssh_user, config.replicate.key_file, config.replicate.known_hosts, root,
                bwlimit_kib=config.replicate.bwlimit)


def remote_store(config: Config, name: str) -> Path:
    """Node ``name``'s audio store: its ``[nodes.NAME] store``, else ``[replicate] remote_store``."""
    return Path(config.nodes[name].store or config.replicate.remote_store)


class PeerLink:
    """The copies to one peer: queue, sender loop, acknowledgement sender, statistics."""

    def __init__(self, config: Config, name: str, store: Path, queue: DurableQueue,
                 holdback: Callable[[PeerLink], float], stop: threading.Event) -> None:
        self.config = config
        self.name = name
        self.store = store
        self.queue = queue
        self._holdback = holdback
        self._stop = stop
        self._wake = threading.Event()
        self._scan = threading.Event()
        self._scan.set()  # catch-up at start
        self._due_in: float | None = None  # seconds until a held-back file is due
        self.lags: list[float] = []
        self._stats_lock = threading.Lock()
        self.stats: dict[str, Any] = {"files_sent": 0, "bytes_sent": 0, "last_error": "", "connected": False}
        #: Monotonic time the link's loop last made progress: the replicator's
        #: watchdog ping needs every link's beat to be fresh (a hung SFTP write stops it).
        self.beat = time.monotonic()
        #: The live connection of the link's loop, shared with its acknowledgement sender.
        self.peer: Peer | None = None
        self.locks = PathLocks()
        self.on_peer = OnPeer()
        self.acks = AckSender(store, lambda: self.peer, self.locks, self.on_peer, self._delivered)

    # -- producer (the replicator's inotify thread) ----------------------
    def offer(self, rel: str, st: os.stat_result) -> None:
        """A finished file: queue it unless the acknowledgement path already put it on the peer."""
        if self.on_peer.has(rel, st):
            return
        self.queue.put(rel, time.time())
        self._wake.set()

    def request_scan(self) -> None:
        self._scan.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def scanning(self) -> bool:
        """A catch-up scan is due (at start, after a reconnection or an inotify overflow)."""
        return self._scan.is_set()

    @property
    def connected(self) -> bool:
        peer = self.peer
        return peer is not None and peer.alive

    # -- sender ----------------------------------------------------------
    def connect(self, root: str | None = None) -> Peer:
        """A new connection to this peer, rooted at its audio store (or ``root``).

        Each SFTP operation on it waits at most ``IO_TIMEOUT_S`` for the peer: a
        peer that hangs mid-write fails this link (which reconnects), rather than
        holding its thread, and with it the watchdog, forever.
        """
        peer = peer_for(self.config, self.name, root or str(remote_store(self.config, self.name))).connect()
        channel = peer.sftp.get_channel()
        if channel is not None:
            channel.settimeout(IO_TIMEOUT_S)
        return peer

    def _working(self) -> None:
        self.beat = time.monotonic()

    def catch_up(self, peer: Peer) -> None:
        """Queue every local file the peer lacks or has in another version."""
        rc = self.config.replicate
        local = scan_local(self.store, rc.include, rc.exclude)
        self._working()
        remote = peer.walk(progress=self._working)  # a big store's walk is long, and alive
        for rel in peer.stale_temps(remote):
            peer.remove(rel)  # left by a sender killed mid-transfer
        missing = [
            rel for rel, e in local.items()
            if rel not in remote or remote[rel].size != e.size or remote[rel].mtime != e.mtime
        ]
        if missing:
            self.queue.put_many(sorted(missing, key=sidecar_first))
            log.info("catch-up of %s: %d files to send", self.name, len(missing))

    def drain(self, peer: Peer) -> int:
        """Send what is queued, in order (sidecars first, as :func:`~.sync.sync` does); returns files sent."""
        sent = 0
        while not self._stop.is_set():
            self.beat = time.monotonic()
            if self._scan.is_set():
                self._scan.clear()
                self.catch_up(peer)
            batch = self.queue.peek(256)
            hold = self._holdback(self)
            if hold:
                # serve is about to ask for its new results on the acknowledgement
                # path, which sends them fsynced; sending them here first would
                # make it wait behind this path and then sync them again.
                now = time.time()
                young = [item.closed_at + hold - now for item in batch if item.closed_at + hold > now]
                batch = [item for item in batch if item.closed_at + hold <= now]
                self._due_in = min(young, default=None)
            if not batch:
                return sent
            before = self.stats["files_sent"]
            apply_phased(peer, batch, lambda item: item.rel, self._send_one, self.config.replicate.concurrency)
            sent += self.stats["files_sent"] - before
            with self._stats_lock:
                del self.lags[:-LAG_SAMPLES]
        return sent

    def _send_one(self, peer: Peer, item: Pending) -> None:
        """Send one queued file (or find it on the peer already), counting what was sent."""
        try:
            # Results are immutable and content-addressed, so nodes can
            # replicate to each other: a file that came from the peer is
            # already there (same size and mtime) and is not sent back.
            with self.locks.hold([item.rel]):  # never beside the acknowledgement path on one file
                st = stat_inside(self.store, item.rel)
                there = peer.stat(item.rel)
                if there is not None and there.size == st.st_size and there.mtime == int(st.st_mtime):
                    self.on_peer.add(item.rel, st)
                    self.queue.done(item)
                    return
                nbytes = peer.put(self.store, item.rel)
                self.on_peer.add(item.rel, st)
        except FileNotFoundError:
            self.queue.done(item)  # removed locally (gc) before it could be sent
            return
        except NotSendable as exc:  # a symlink renamed into the store, say: never followed
            log.warning("not sending %s", exc)
            self.queue.done(item)
            return
        except Exception:
            self.queue.failed(item)
            raise
        self.queue.done(item)
        self.beat = time.monotonic()
        with self._stats_lock:  # the channels' threads count here
            self.lags.append(time.time() - item.closed_at)
            self.stats["files_sent"] += 1
            self.stats["bytes_sent"] += nbytes

    def loop(self, ack_enabled: bool, changed: Callable[[], None]) -> None:
        """The link's thread: connect, drain, wait for news; back off while the peer is away.

        ``changed`` is called after each drain and failure (the replicator writes its state).
        """
        backoff = 0.5
        peer: Peer | None = None
        while not self._stop.is_set():
            self.beat = time.monotonic()
            try:
                if peer is None or not peer.alive:
                    self.peer = None
                    peer = self.connect()
                    self.peer = peer
                    if ack_enabled:
                        try:  # reserve the acknowledgement channels before a burst takes them all
                            self.acks.lanes()
                        except Exception as exc:  # the sender tries again per batch
                            log.warning("cannot open the acknowledgement channels to %s yet: %s", self.name, exc)
                    self.stats["connected"] = True
                    self._scan.set()
                    log.info("connected to %s (%s@%s:%d)", self.name, peer.user, peer.host, peer.port)
                self._due_in = None
                self.drain(peer)
                backoff = 0.5
                changed()
                self._wake.wait(WAIT_SLICE_S if self._due_in is None else min(WAIT_SLICE_S, max(0.01, self._due_in)))
                self._wake.clear()
            except HostKeyRefused as exc:
                self._failure(peer, exc, alert=True)
                changed()
                peer = None
                self._pause(MAX_BACKOFF_S)
            except Exception as exc:  # paramiko raises many kinds; all mean "retry later"
                self._failure(peer, exc)
                changed()
                peer = None
                self._pause(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` (or until stopped), beating: waiting out a backoff is the loop working."""
        until = time.monotonic() + seconds
        while not self._stop.is_set() and (left := until - time.monotonic()) > 0:
            self.beat = time.monotonic()
            self._stop.wait(min(WAIT_SLICE_S, left))

    def _failure(self, peer: Peer | None, exc: Exception, alert: bool = False) -> None:
        self.peer = None
        self.acks.close()
        self.on_peer.clear()  # the peer may have changed while away: send in full
        if peer is not None:
            peer.close()
        self.stats["connected"] = False
        self.stats["last_error"] = f"{type(exc).__name__}: {exc}"
        (log.error if alert else log.warning)("replication to %s paused: %s (queue depth %d)", self.name, exc,
                                              self.queue.depth())

    def _delivered(self, rels: list[str], since: float) -> None:
        """The acknowledgement path put ``rels`` on the peer: the queue forgets them."""
        self.queue.discard(rels, since)
        self._wake.set()

    # -- one-off jobs ------------------------------------------------------
    def sync_root(self, local: Path, root: str, *, delete: bool, dry_run: bool = False,
                  progress: Callable[..., None] | None = None) -> SyncResult:
        """Make ``root`` on the peer match ``local`` (``ttsha replicate --once``, the models job)."""
        rc = self.config.replicate
        peer = self.connect(root)
        try:
            return sync(local, peer, delete=delete, checksum=rc.checksum, include=rc.include, exclude=rc.exclude,
                        dry_run=dry_run, progress=progress, concurrency=rc.concurrency)
        finally:
            peer.close()

    # -- observability ---------------------------------------------------
    def lag_percentiles(self) -> dict[str, float | None]:
        ordered = sorted(self.lags)
        if not ordered:
            return {"p50": None, "p99": None}
        return {"p50": ordered[len(ordered) // 2], "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}

    def state(self, now: float) -> dict[str, Any]:
        oldest = self.queue.oldest_closed_at()
        # An age, not a timestamp: a gateway on another host compares it with
        # its own elapsed time, so the two clocks never need to agree.
        return {"queue_depth": self.queue.depth(),
                "oldest_pending_s": None if oldest is None else round(max(0.0, now - oldest), 3),
                "lag_s": self.lag_percentiles(), **self.stats, "connected": self.connected,
                "acks": dict(self.acks.stats)}

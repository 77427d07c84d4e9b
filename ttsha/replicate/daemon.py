"""``ttsha replicate``: models on a schedule, audio in real time, over one SSH link.

The audio store is watched with pyinotify (``IN_CLOSE_WRITE`` and
``IN_MOVED_TO``: the store writes by rename). Every finished file goes into
the durable queue first; a sender drains the queue in order over SFTP,
reconnecting with exponential backoff when the peer is away. A catch-up scan
at start and after an inotify queue overflow finds anything missed. With
``ack = "standby"``, ``serve`` asks on a local socket for each new result and
:mod:`.durable` sends it at once, fsynced, over the same connection.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyinotify

from .. import httpclient, systemd
from ..config import Config, replication_peer
from ..errors import TTSHAError
from ..fsutil import atomic_write
from ..protocol import ACTIVE, PRIMARY, Health
from . import ack
from .durable import AckSender, OnPeer, PathLocks
from .local import NotSendable, stat_inside
from .queue import DurableQueue
from .sync import SyncResult, run_groups, scan_local, selected, sidecar_first, sync
from .transport import HostKeyRefused, Peer

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
LAG_SAMPLES = 2000
#: How often the models job asks the local node for its role.
ROLE_CHECK_S = 5.0
#: A role the monitor has not repeated for this long is unknown: a node cut
#: off from the gateway must not go on sending models as a primary while the
#: monitor has made the other node primary (the monitor probes every second).
ROLE_FRESH_S = 30.0
#: serve counts as asking for acknowledgements this long after its last request.
ACK_ACTIVE_S = 10.0
#: Beyond ack_timeout, how long a new file is left to the acknowledgement path.
ACK_MARGIN_S = 0.2


def peer_for(config: Config, root: str) -> Peer:
    """A Peer for the replication peer (:func:`~ttsha.config.replication_peer`) rooted at ``root`` on that node."""
    name = replication_peer(config)
    if not name:
        raise TTSHAError("no replication peer: set replicate.peer, or name this node ([serve] node, or a [nodes] "
                         "url with [serve] host and port) among exactly two [nodes] tables")
    node = config.nodes[name]
    host = node.ssh_host or urlsplit(node.url).hostname or ""
    return Peer(host, node.ssh_port, node.ssh_user, config.replicate.key_file, config.replicate.known_hosts, root,
                bwlimit_kib=config.replicate.bwlimit)


def local_health_url(config: Config) -> tuple[str, int]:
    """(host, port) of this node's own ``ttsha serve``."""
    host = config.serve.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, config.serve.port


def local_role(config: Config, timeout: float = 2.0) -> str | None:
    """This node's role as the gateway's monitor last told its ``ttsha serve``
    (in signed probes), or None when unknown (serve down, no valid probe for
    :data:`ROLE_FRESH_S`)."""
    return local_claim(config, timeout)[0]


def local_claim(config: Config, timeout: float = 2.0) -> tuple[str | None, float | None]:
    """(role, since when) as :func:`local_role`: the second changes whenever the
    node's role does, even when it flips back between two reads."""
    host, port = local_health_url(config)
    reply = httpclient.get(httpclient.host_url(host, port, "/health"), timeout=timeout, limit=65536)
    health = Health.parse(reply.json()) if not reply.error else None
    if health is None or not health.role_fresh(time.time(), ROLE_FRESH_S):
        return None, None
    return health.role, health.role_since


class _Handler(pyinotify.ProcessEvent):
    def my_init(self, replicator: Replicator) -> None:  # pyinotify's constructor hook
        self.replicator = replicator

    def process_IN_CLOSE_WRITE(self, event) -> None:
        self.replicator.file_done(event.pathname)

    def process_IN_MOVED_TO(self, event) -> None:
        self.replicator.file_done(event.pathname)

    def process_IN_CREATE(self, event) -> None:
        if event.dir:
            # pyinotify adds the watch for a new directory (auto_add) only after
            # files may already have been written in it: queue what is there.
            self.replicator.scan_directory(Path(event.pathname))

    def process_IN_Q_OVERFLOW(self, event) -> None:
        self.replicator.overflowed()


class Replicator:
    def __init__(self, config: Config, store: Path | None = None) -> None:
        self.config = config
        rc = config.replicate
        self.store = Path(store or config.store.path)
        self.queue = DurableQueue(rc.queue_file)
        self.state_file = Path(rc.queue_file).with_suffix(".json")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._scan = threading.Event()
        self._scan.set()  # catch-up at start
        self.lags: list[float] = []
        self._due_in: float | None = None  # seconds until a held-back file is due
        self._role_since: float | None = None  # of the last role read (see local_claim)
        self.stats: dict[str, Any] = {"files_sent": 0, "bytes_sent": 0, "last_error": "", "connected": False,
                                      "overflows": 0, "models": {}}
        #: The live connection of the audio loop, shared with the acknowledgement path.
        self.peer: Peer | None = None
        self.locks = PathLocks()
        self.on_peer = OnPeer()
        self.acks = AckSender(self.store, lambda: self.peer, self.locks, self.on_peer, self.ack_status,
                              self._delivered)

    # -- producer --------------------------------------------------------
    def file_done(self, path: str) -> None:
        rel = os.path.relpath(path, self.store)
        name = os.path.basename(rel)
        if name.startswith(".") or rel.startswith(".."):
            return  # temp files of atomic writes; their rename brings the real name
        if not selected(rel, self.config.replicate.include, self.config.replicate.exclude):
            return
        try:
            if self.on_peer.has(rel, os.stat(path)):
                return  # the acknowledgement path delivered it before this event was read
        except FileNotFoundError:
            return
        self.queue.put(rel, time.time())
        self._wake.set()

    def scan_directory(self, directory: Path) -> None:
        for dirpath, _, filenames in os.walk(directory):
            for name in sorted(filenames, key=lambda n: (n.rpartition(".")[0], not n.endswith(".json"))):
                self.file_done(os.path.join(dirpath, name))

    def overflowed(self) -> None:
        """The kernel dropped inotify events: only a scan can tell what was missed."""
        log.warning("inotify queue overflow: scanning the store for missed files")
        self.stats["overflows"] += 1
        self.request_scan()

    def request_scan(self) -> None:
        self._scan.set()
        self._wake.set()

    # -- sender ----------------------------------------------------------
    def _catch_up(self, peer: Peer) -> None:
        """Queue every local file the peer lacks or has in another version."""
        local = scan_local(self.store, self.config.replicate.include, self.config.replicate.exclude)
        remote = peer.walk()
        for rel in peer.stale_temps(remote):
            peer.remove(rel)  # left by a sender killed mid-transfer
        missing = [
            rel for rel, e in local.items()
            if rel not in remote or remote[rel].size != e.size or remote[rel].mtime != e.mtime
        ]
        if missing:
            self.queue.put_many(sorted(missing, key=sidecar_first))
            log.info("catch-up: %d files to send", len(missing))

    def drain(self, peer: Peer) -> int:
        """Send what is queued, in order; returns files sent."""
        sent = [0]  # files sent, counted by the channels' threads
        lock = threading.Lock()

        def send_group(channel: Peer, items: list) -> None:
            for item in items:
                nbytes = self._send_one(channel, item)
                if nbytes is not None:
                    with lock:
                        sent[0] += 1
                        self.lags.append(time.time() - item.closed_at)
                        self.stats["files_sent"] += 1
                        self.stats["bytes_sent"] += nbytes

        while not self._stop.is_set():
            if self._scan.is_set():
                self._scan.clear()
                self._catch_up(peer)
            batch = self.queue.peek(256)
            hold = self._holdback()
            if hold:
                # serve is about to ask for its new results on the acknowledgement
                # path, which sends them fsynced; sending them here first would
                # make it wait behind this path and then sync them again.
                now = time.time()
                young = [item.closed_at + hold - now for item in batch if item.closed_at + hold > now]
                batch = [item for item in batch if item.closed_at + hold <= now]
                self._due_in = min(young, default=None)
            if not batch:
                return sent[0]
            # Sidecars first, then the rest: whoever sees an audio file on the
            # standby can also read the request that made it.
            sidecars = [i for i in batch if i.rel.endswith(".json")]
            for phase in (sidecars, [i for i in batch if not i.rel.endswith(".json")]):
                groups = [[item] for item in phase]
                if self.config.replicate.concurrency > 1 and len(groups) > 1:
                    run_groups(peer, groups, send_group, self.config.replicate.concurrency)
                else:
                    for items in groups:
                        send_group(peer, items)
            del self.lags[:-LAG_SAMPLES]
        return sent[0]

    def _send_one(self, peer: Peer, item) -> int | None:
        """Send one queued file; None when there was nothing to send."""
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
                    return None
                nbytes = peer.put(self.store, item.rel)
                self.on_peer.add(item.rel, st)
        except FileNotFoundError:
            self.queue.done(item)  # removed locally (gc) before it could be sent
            return None
        except NotSendable as exc:  # a symlink renamed into the store, say: never followed
            log.warning("not sending %s", exc)
            self.queue.done(item)
            return None
        except Exception:
            self.queue.failed(item)
            raise
        self.queue.done(item)
        return nbytes

    def _audio_loop(self) -> None:
        backoff = 0.5
        peer: Peer | None = None
        while not self._stop.is_set():
            try:
                if peer is None or not peer.alive:
                    self.peer = None
                    peer = peer_for(self.config, str(self.config.replicate.remote_store)).connect()
                    self.peer = peer
                    if self.ack_enabled:
                        try:  # reserve the acknowledgement channels before a burst takes them all
                            self.acks.lanes()
                        except Exception as exc:  # the sender tries again per batch
                            log.warning("cannot open the acknowledgement channels yet: %s", exc)
                    self.stats["connected"] = True
                    self._scan.set()
                    log.info("connected to %s@%s:%d", peer.user, peer.host, peer.port)
                self._due_in = None
                self.drain(peer)
                backoff = 0.5
                self.write_state()
                self._wake.wait(1.0 if self._due_in is None else min(1.0, max(0.01, self._due_in)))
                self._wake.clear()
            except HostKeyRefused as exc:
                self._failure(peer, exc, alert=True)
                peer = None
                self._stop.wait(MAX_BACKOFF_S)
            except Exception as exc:  # paramiko raises many kinds; all mean "retry later"
                self._failure(peer, exc)
                peer = None
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    def _failure(self, peer: Peer | None, exc: Exception, alert: bool = False) -> None:
        self.peer = None
        self.acks.close()
        self.on_peer.clear()  # the peer may have changed while away: send in full
        if peer is not None:
            peer.close()
        self.stats["connected"] = False
        self.stats["last_error"] = f"{type(exc).__name__}: {exc}"
        (log.error if alert else log.warning)("replication paused: %s (queue depth %d)", exc, self.queue.depth())
        self.write_state()

    def sync_models(self, dry_run: bool = False, progress=None) -> SyncResult:
        rc = self.config.replicate
        peer = peer_for(self.config, str(rc.remote_models)).connect()
        try:
            result = sync(Path(rc.local_models), peer, delete=rc.delete, checksum=rc.checksum,
                          include=rc.include, exclude=rc.exclude, dry_run=dry_run, progress=progress,
                          concurrency=rc.concurrency)
        finally:
            peer.close()
        self.stats["models"] = {"at": time.time(), "files": result.files_sent, "bytes": result.bytes_sent,
                                "deleted": result.deleted, "seconds": round(result.seconds, 3)}
        return result

    def models_turn(self) -> tuple[bool, str]:
        """Whether this node sends its model cache now, and why.

        With ``models = "primary"`` (the default) both nodes run the same
        configuration and the model cache flows from whichever node the
        monitor routes traffic to: never from a stale standby over the
        primary's newer files (``delete`` would remove them).
        """
        mode = self.config.replicate.models
        if mode == "always":
            return True, 'models = "always"'
        if mode == "never":
            return False, 'models = "never"'
        role, self._role_since = local_claim(self.config)
        if role == PRIMARY:
            return True, "this node is the primary"
        if role is None:
            if self.config.monitor.secret_file is None:
                return False, ("role unknown: [monitor] secret_file is not set, so no node believes a role "
                               "from the monitor (see ttsha(1), SECURITY)")
            host, port = local_health_url(self.config)
            return False, (f"role unknown: no recent signed role from the local ttsha serve at {host}:{port} "
                           f"(not up, or no valid probe from the monitor for {ROLE_FRESH_S:.0f} s)")
        if role == ACTIVE:
            return False, 'active-active has no primary: set models = "always" on the node whose cache is the source'
        return False, f"this node is {role} in the gateway; models flow from the primary"

    def _models_loop(self) -> None:
        interval = self.config.replicate.interval
        last_attempt: float | None = None
        was_turn: bool | None = None
        sent_since: float | None = None
        while not self._stop.is_set():
            turn, why = self.models_turn()
            if turn != was_turn:
                # Unknown is worth a warning: without a monitor probing this node, models never flow.
                level = logging.WARNING if why.startswith("role unknown") else logging.INFO
                log.log(level, "models sync %s: %s", "on" if turn else "paused", why)
            self.stats["models_turn"] = why
            due = last_attempt is None or time.monotonic() - last_attempt >= interval
            # A node that just became the primary sends at once: also when it
            # was backup for a moment between two checks (its role_since says so).
            if turn and (due or not was_turn or self._role_since != sent_since):
                last_attempt, sent_since = time.monotonic(), self._role_since
                try:
                    if Path(self.config.replicate.local_models).is_dir():
                        result = self.sync_models()
                        log.info("models sync: %d files, %d bytes, %d deleted", result.files_sent,
                                 result.bytes_sent, result.deleted)
                except Exception as exc:
                    self.stats["last_error"] = f"models: {type(exc).__name__}: {exc}"
                    log.warning("models sync failed: %s", exc)
            was_turn = turn
            self._stop.wait(min(ROLE_CHECK_S, interval))

    # -- acknowledgements ------------------------------------------------
    def _holdback(self) -> float:
        """How long a new file waits in the queue for serve's acknowledgement
        request, while serve is asking (0: send at once)."""
        last = self.acks.last_request
        if not self.ack_enabled or last is None or time.monotonic() - last > ACK_ACTIVE_S:
            return 0.0
        return self.config.replicate.ack_timeout + ACK_MARGIN_S

    @property
    def ack_enabled(self) -> bool:
        return ack.mode(self.config) == "standby"

    def _delivered(self, rels: list[str], since: float) -> None:
        """The acknowledgement path put ``rels`` on the peer: the queue forgets them,
        and the state file says so (the next drain writes it)."""
        self.queue.discard(rels, since)
        self._wake.set()

    def ack_status(self) -> dict[str, Any]:
        """What ``serve`` asks before it waits again after a degraded spell."""
        peer = self.peer
        return {"connected": bool(peer is not None and peer.alive), "queue_depth": self.queue.depth(),
                "last_error": self.stats["last_error"]}

    # -- observability ---------------------------------------------------
    def lag_percentiles(self) -> dict[str, float | None]:
        ordered = sorted(self.lags)
        if not ordered:
            return {"p50": None, "p99": None}
        return {"p50": ordered[len(ordered) // 2], "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}

    def write_state(self) -> None:
        now = time.time()
        oldest = self.queue.oldest_closed_at()
        # An age, not a timestamp: a gateway on another host compares it with
        # its own elapsed time, so the two clocks never need to agree.
        data = {"updated_at": now, "queue_depth": self.queue.depth(),
                "oldest_pending_s": None if oldest is None else round(max(0.0, now - oldest), 3),
                "lag_s": self.lag_percentiles(),
                **self.stats, "acks": dict(self.acks.stats)}
        try:
            atomic_write(self.state_file, json.dumps(data, indent=1))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_file, exc)

    # -- daemon ----------------------------------------------------------
    def start_watch(self) -> pyinotify.ThreadedNotifier:
        self.store.mkdir(parents=True, exist_ok=True)
        manager = pyinotify.WatchManager()
        notifier = pyinotify.ThreadedNotifier(manager, _Handler(replicator=self))
        notifier.daemon = True
        notifier.start()
        # IN_CREATE is needed for auto_add to watch new shard directories.
        mask = pyinotify.IN_CLOSE_WRITE | pyinotify.IN_MOVED_TO | pyinotify.IN_CREATE | pyinotify.IN_Q_OVERFLOW
        manager.add_watch(str(self.store), mask, rec=True, auto_add=True)
        return notifier

    def run(self, install_signals: bool = True, models: bool | None = None) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        notifier = self.start_watch()
        threads = [threading.Thread(target=self._audio_loop, name="audio", daemon=True)]
        if self.config.replicate.models != "never" if models is None else models:
            threads.append(threading.Thread(target=self._models_loop, name="models", daemon=True))
        server = None
        if self.ack_enabled:
            server = ack.AckServer(ack.socket_path(self.config), self.acks.handle)
            try:
                server.start()
            except TTSHAError as exc:
                # Audio still flows through the queue; serve reports degraded
                # acknowledgements and alerts, which says what is wrong.
                log.error("acknowledgements off: %s", exc)
                server = None
            else:
                threads.append(threading.Thread(target=self.acks.run, name="acks", daemon=True))
        for thread in threads:
            thread.start()
        systemd.ready(f"replicating {self.store} to {replication_peer(self.config)}")
        interval = systemd.watchdog_interval() or 5.0
        while not self._stop.wait(interval):
            if threads[0].is_alive():
                systemd.watchdog_ping()
        systemd.stopping()
        notifier.stop()
        if server is not None:
            server.close()
        self.acks.stop()
        for thread in threads:
            thread.join(10)
        self.write_state()
        self.queue.close()
        return 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

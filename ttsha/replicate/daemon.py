"""``ttsha replicate``: models on a schedule, audio in real time, to every peer.

The audio store is watched with pyinotify (``IN_CLOSE_WRITE`` and
``IN_MOVED_TO``: the store writes by rename). Every finished file goes into
each peer's durable queue first (:mod:`.link`: one queue, one SSH link and
one thread per peer, so a dead or slow peer delays only its own copies). A
catch-up scan at start, on each (re)connection and after an inotify queue
overflow finds anything missed. With ``ack = "standby"``, ``serve`` asks on a
local socket for each new result; :mod:`.durable` sends it at once, fsynced,
to every connected peer and answers once ``ack_peers`` of them hold it.
Models flow from one node at a time: the primary (active-standby) or the
``models_source`` node (active-active), to every peer.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyinotify

from .. import httpclient, systemd
from ..config import Config, models_source, replication_peers, this_node
from ..errors import Refused, TTSHAError
from ..fsutil import atomic_write
from ..protocol import ACTIVE, PRIMARY, Health
from . import ack, paths
from .durable import AckFanout
from .link import PeerLink, remote_store
from .queue import DurableQueue
from .sync import SyncResult, selected

log = logging.getLogger(__name__)

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


def local_health(config: Config, timeout: float = 2.0) -> Health | None:
    """This node's own ``ttsha serve``'s ``/health`` (None: it does not answer)."""
    host, port = local_health_url(config)
    reply = httpclient.get(httpclient.host_url(host, port, "/health"), timeout=timeout, limit=65536)
    return Health.parse(reply.json()) if not reply.error else None


def local_claim(config: Config, timeout: float = 2.0,
                health: Health | None = None) -> tuple[str | None, float | None]:
    """(role, since when) as :func:`local_role` (from ``health`` when given): the
    second changes whenever the node's role does, even when it flips back between two reads."""
    if health is None:
        health = local_health(config, timeout)
    if health is None or not health.role_fresh(time.time(), ROLE_FRESH_S):
        return None, None
    return health.role, health.role_since


def failed_canary(health: Health | None) -> str | None:
    """Why the model this node serves may be damaged: its canary's failure (None: not known to be bad)."""
    canary = health.raw.get("canary") if health is not None else None
    if isinstance(canary, dict) and canary.get("ok") is False:
        return str(canary.get("reason") or "the canary failed")
    return None


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
    """A node's replicator: inotify into one :class:`~.link.PeerLink` per peer, the
    models job, the acknowledgement socket, the state file and the watchdog."""

    def __init__(self, config: Config, store: Path | None = None) -> None:
        self.config = config
        self.store = Path(store or config.store.path)
        self.state_file = paths.state_path(config)
        self._stop = threading.Event()
        self._role_since: float | None = None  # of the last role read (see local_claim)
        self.stats: dict[str, Any] = {"overflows": 0, "models": {}}
        self.links = {name: PeerLink(config, name, self.store, DurableQueue(paths.queue_path(config, name)),
                                     self._holdback, self._stop)
                      for name in replication_peers(config)}
        self.fanout = AckFanout(self.store, {name: link.acks for name, link in self.links.items()},
                                config.replicate.ack_peers, self.ack_status)

    def migrate_legacy_queue(self) -> None:
        """A queue from before fan-out (one file for the one peer): its files go to every peer's queue.

        Only the daemon does it (a ``--once`` run beside it must not move its queue),
        in one transaction per peer, so a long backlog does not hold up the start."""
        legacy = paths.legacy_queue_path(self.config)
        if not legacy.is_file() or not self.links:
            return
        old = DurableQueue(legacy)
        pending = old.peek(1 << 30)
        old.close()
        for link in self.links.values():
            link.queue.put_items([(item.rel, item.closed_at) for item in pending])
        for path in (legacy, legacy.with_name(legacy.name + "-wal"), legacy.with_name(legacy.name + "-shm")):
            path.unlink(missing_ok=True)
        log.info("moved %d pending files of %s into the queues of %s", len(pending), legacy, ", ".join(self.links))

    # -- producer (inotify) ------------------------------------------------
    def file_done(self, path: str) -> None:
        rel = os.path.relpath(path, self.store)
        name = os.path.basename(rel)
        if name.startswith(".") or rel.startswith(".."):
            return  # temp files of atomic writes; their rename brings the real name
        if not selected(rel, self.config.replicate.include, self.config.replicate.exclude):
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        for link in self.links.values():
            link.offer(rel, st)

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
        for link in self.links.values():
            link.request_scan()

    # -- models --------------------------------------------------------------
    def sync_models(self, dry_run: bool = False, progress=None) -> dict[str, SyncResult]:
        """Send the model cache to every peer; a peer that fails does not stop the others
        (raised afterwards: the one error, or a :class:`TTSHAError` naming each peer)."""
        rc = self.config.replicate
        results: dict[str, SyncResult] = {}
        errors: dict[str, Exception] = {}
        for name, link in self.links.items():
            try:
                results[name] = link.sync_root(Path(rc.local_models), str(rc.remote_models), delete=rc.delete,
                                               dry_run=dry_run, progress=progress)
            except Exception as exc:  # paramiko raises many kinds
                errors[name] = exc
                log.warning("models sync to %s failed: %s", name, exc)
        if not dry_run:
            self.stats["models"] = {name: {"at": time.time(), "files": r.files_sent, "bytes": r.bytes_sent,
                                           "deleted": r.deleted, "seconds": round(r.seconds, 3)}
                                    for name, r in results.items()}
        if len(errors) == 1 and len(self.links) == 1:
            raise next(iter(errors.values()))
        if errors:
            raise TTSHAError("models sync failed for " + "; ".join(f"{n}: {e}" for n, e in errors.items())
                             + (f" (sent to {', '.join(results)})" if results else ""))
        return results

    def send_models_once(self, *, force: bool = False, warn: Callable[[str], None] = log.warning,
                         progress=None) -> dict[str, SyncResult]:
        """``ttsha replicate --once models``: send the model cache to every peer now,
        if it is this node's turn (:meth:`models_turn`), or anyway with ``force``
        (``warn`` is told why it was not this node's turn before anything is sent)."""
        turn, why = self.models_turn()
        if not turn:
            # Only the node models flow from pushes with deletes: a stale cache
            # sent from anywhere else would remove the source's newer files.
            if not force:
                raise Refused(f"not sending models from this node: {why}. Run it on the node models flow from, add "
                              '--force to send once regardless, or set [replicate] models = "always".')
            warn(f"{why}; sending anyway (--force)")
        return self.sync_models(progress=progress)

    def sync_audio(self, dry_run: bool = False) -> dict[str, SyncResult]:
        """Make every peer's audio store hold this node's results (``ttsha replicate --once audio``)."""
        return {name: link.sync_root(self.store, str(remote_store(self.config, name)), delete=False, dry_run=dry_run)
                for name, link in self.links.items()}

    def models_turn(self) -> tuple[bool, str]:
        """Whether this node sends its model cache now, and why.

        With ``models = "primary"`` (the default) every node runs the same
        configuration and the model cache flows from one node only: in
        active-standby from whichever node the monitor routes traffic to,
        never from a stale standby over the primary's newer files (``delete``
        would remove them); in active-active from ``models_source``.
        """
        mode = self.config.replicate.models
        if mode == "never":
            return False, 'models = "never"'
        # A model that fails its canary (damaged in a copy, say) must not overwrite the good one elsewhere.
        health = local_health(self.config)
        bad = failed_canary(health)
        if bad is not None:
            return False, f"the local serve's canary fails ({bad}): its model may be damaged, so it is not sent"
        if mode == "always":
            return True, 'models = "always"'
        if self.config.monitor.mode == "active-active":
            source, me = models_source(self.config), this_node(self.config)
            if me == source:
                return True, f"this node is the models source of active-active ({source})"
            return False, f"models flow from the models source {source} in active-active"
        role, self._role_since = local_claim(self.config, health=health)
        if role == PRIMARY:
            return True, "this node is the primary"
        if role is None:
            if self.config.monitor.secret_file is None:
                return False, ("role unknown: [monitor] secret_file is not set, so no node believes a role "
                               "from the monitor (see ttsha(1), SECURITY)")
            host, port = local_health_url(self.config)
            return False, (f"role unknown: no recent signed role from the local ttsha serve at {host}:{port} "
                           f"(not up, or no valid probe for {ROLE_FRESH_S:.0f} s)")
        if role == ACTIVE:
            return False, ('the gateway routes active-active but [monitor] mode here is active-standby: set the '
                           'same mode on the nodes, whose models then flow from [replicate] models_source')
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
                        for name, result in self.sync_models().items():
                            log.info("models sync to %s: %d files, %d bytes, %d deleted", name, result.files_sent,
                                     result.bytes_sent, result.deleted)
                except Exception as exc:
                    self.stats["models_error"] = f"{type(exc).__name__}: {exc}"
                    log.warning("models sync failed: %s", exc)
            was_turn = turn
            self._stop.wait(min(ROLE_CHECK_S, interval))

    # -- acknowledgements ----------------------------------------------------
    def _holdback(self, link: PeerLink) -> float:
        """How long a new file waits in ``link``'s queue for serve's acknowledgement
        request, while serve is asking (0: send at once)."""
        last = link.acks.last_request
        if not self.ack_enabled or last is None or time.monotonic() - last > ACK_ACTIVE_S:
            return 0.0
        return self.config.replicate.ack_timeout + ACK_MARGIN_S

    @property
    def ack_enabled(self) -> bool:
        return ack.mode(self.config) == "standby"

    def ack_status(self) -> dict[str, Any]:
        """What ``serve`` asks before it waits again after a degraded spell: connected
        while ``ack_peers`` peers are; the queue depth of the ``ack_peers``-th most caught-up one."""
        needed = self.config.replicate.ack_peers
        connected = sorted((link.queue.depth(), name) for name, link in self.links.items() if link.connected)
        errors = [f"{name}: {link.stats['last_error'] or 'not connected'}" for name, link in self.links.items()
                  if not link.connected]
        ok = len(connected) >= needed
        return {"connected": ok, "queue_depth": connected[needed - 1][0] if ok else sum(d for d, _ in connected),
                "last_error": "; ".join(errors), "peers_connected": [name for _, name in connected]}

    # -- observability -------------------------------------------------------
    def lag_percentiles(self) -> dict[str, float | None]:
        ordered = sorted(lag for link in self.links.values() for lag in link.lags)
        if not ordered:
            return {"p50": None, "p99": None}
        return {"p50": ordered[len(ordered) // 2], "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}

    def state(self) -> dict[str, Any]:
        """The state file's document: each peer under ``peers``, and the sums that
        readers of one peer's state used (``connected``: every peer is)."""
        now = time.time()
        peers = {name: link.state(now) for name, link in self.links.items()}
        ages = [p["oldest_pending_s"] for p in peers.values() if p["oldest_pending_s"] is not None]
        acks: dict[str, int] = {}
        for p in peers.values():
            for key, value in p["acks"].items():
                acks[key] = acks.get(key, 0) + value
        return {"updated_at": now, "queue_depth": sum(p["queue_depth"] for p in peers.values()),
                "oldest_pending_s": max(ages, default=None), "lag_s": self.lag_percentiles(),
                "connected": bool(peers) and all(p["connected"] for p in peers.values()),
                "last_error": "; ".join(f"{name}: {p['last_error']}" for name, p in peers.items() if p["last_error"]),
                "files_sent": sum(p["files_sent"] for p in peers.values()),
                "bytes_sent": sum(p["bytes_sent"] for p in peers.values()),
                **self.stats, "acks": acks, "peers": peers}

    def write_state(self) -> None:
        try:
            atomic_write(self.state_file, json.dumps(self.state(), indent=1))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.state_file, exc)

    # -- daemon --------------------------------------------------------------
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

    def stalled(self, now: float, limit: float) -> list[str]:
        """Peers whose link's loop has not made progress for ``limit`` seconds (a hung SFTP write, say)."""
        return [name for name, link in self.links.items() if now - link.beat > limit]

    def run(self, install_signals: bool = True, models: bool | None = None) -> int:
        if not self.links:
            raise TTSHAError("no replication peer: set [replicate] peers, or name this node ([serve] node, or a "
                             "[nodes] url with [serve] host and port) so that the others are its peers")
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        self.migrate_legacy_queue()
        notifier = self.start_watch()
        threads = [threading.Thread(target=link.loop, args=(self.ack_enabled, self.write_state),
                                    name=f"audio-{name}", daemon=True) for name, link in self.links.items()]
        if self.config.replicate.models != "never" if models is None else models:
            threads.append(threading.Thread(target=self._models_loop, name="models", daemon=True))
        server = None
        if self.ack_enabled:
            server = ack.AckServer(paths.socket_path(self.config), self.fanout.handle)
            try:
                server.start()
            except TTSHAError as exc:
                # Audio still flows through the queues; serve reports degraded
                # acknowledgements and alerts, which says what is wrong.
                log.error("acknowledgements off: %s", exc)
                server = None
            else:
                threads += [threading.Thread(target=link.acks.run, name=f"acks-{name}", daemon=True)
                            for name, link in self.links.items()]
        for thread in threads:
            thread.start()
        systemd.ready(f"replicating {self.store} to {', '.join(self.links)}")
        interval = systemd.watchdog_interval() or 5.0
        while not self._stop.wait(interval):
            # Pinged only while every peer's loop makes progress: the loops beat
            # while they send and while they wait, never inside a hung write.
            stalled = self.stalled(time.monotonic(), 2 * interval)
            if stalled:
                log.error("replication to %s made no progress for %.0f s; withholding the watchdog ping",
                          ", ".join(stalled), 2 * interval)
            else:
                systemd.watchdog_ping()
        systemd.stopping()
        notifier.stop()
        if server is not None:
            server.close()
        for link in self.links.values():
            link.acks.stop()
            link.wake()
        for thread in threads:
            thread.join(10)
        self.write_state()
        for link in self.links.values():
            link.queue.close()
        return 0

    def stop(self) -> None:
        self._stop.set()
        for link in self.links.values():
            link.wake()

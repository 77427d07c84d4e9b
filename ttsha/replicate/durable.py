"""The replicator's acknowledgement path: what ``serve`` asks for, sent at once and durably.

Requests arrive on the :class:`~ttsha.replicate.ack.AckServer` socket; one
sender thread takes whatever is waiting, as one batch (a group commit: the
fsyncs of concurrent requests overlap), over its own SFTP channels of the
replicator's SSH connection, so an acknowledgement never queues behind a
catch-up. The queue path (inotify) and this one never send the same file at
once (:class:`PathLocks`); when the queue reaches a file this path already
sent, the peer has it with the same size and mtime and it is not sent again;
when this path is asked for a file the queue already sent (:class:`OnPeer`),
it is fsynced where it is, not sent again.

serve also says which files it is about to write (``prepare``, when a
synthesis starts): the sender opens their temp files and directories on the
peer then, while the synthesis runs, so the acknowledgement itself takes two
round trips (write, fsync, close; rename, sync the directory) instead of
three. What is opened ahead and never asked for is discarded after
:data:`PREPARED_TTL_S`; nothing about durability changes, only when the
open happens.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ack import MAX_PATHS
from .local import stat_inside
from .sync import sidecar_first
from .transport import Opened, UnsafePath, safe_relative

if TYPE_CHECKING:
    from .transport import Peer

log = logging.getLogger(__name__)

#: SFTP channels of the acknowledgement path: a result's sidecar and audio are
#: fsynced on the peer at once. With ``concurrency = 8`` that makes 10 in all,
#: sshd's default MaxSessions.
LANES = 2
#: Most files in one batch.
BATCH_FILES = 64
#: A peer that stops answering mid-transfer (frozen, cut off) holds the
#: sender this long at most; serve stopped waiting long before.
IO_TIMEOUT_S = 10.0
#: Files opened ahead (``prepare``) and not asked for within this long are
#: closed and their temp files removed (a synthesis that failed, a cache hit).
PREPARED_TTL_S = 120.0
#: Most results opened ahead at once; the oldest go first.
PREPARED_MAX = 64
#: The temp-name tag of files opened ahead: :meth:`Peer.put` (the queue
#: path) may copy the same file meanwhile, under its own temp name.
PREPARED_TAG = "ack"


class PathLocks:
    """Relative paths being sent: two senders never write one file at once."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, rels: list[str]) -> Iterator[None]:
        """Wait until none of ``rels`` is held, hold all of them (so no deadlock)."""
        wanted = set(rels)
        with self._cond:
            self._cond.wait_for(lambda: not (wanted & self._held))
            self._held |= wanted
        try:
            yield
        finally:
            with self._cond:
                self._held -= wanted
                self._cond.notify_all()


class OnPeer:
    """Files known to be on the peer as they are here (size, mtime), most recent first.

    The queue path often copies a new result before serve asks for it (it
    hears of the file first): the acknowledgement then only fsyncs it there
    instead of sending it again.
    """

    def __init__(self, size: int = 8192) -> None:
        self._known: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def add(self, rel: str, st: os.stat_result) -> None:
        with self._lock:
            self._known[rel] = (st.st_size, int(st.st_mtime))
            self._known.move_to_end(rel)
            while len(self._known) > self._size:
                self._known.popitem(last=False)

    def has(self, rel: str, st: os.stat_result) -> bool:
        with self._lock:
            return self._known.get(rel) == (st.st_size, int(st.st_mtime))

    def clear(self) -> None:
        with self._lock:
            self._known.clear()


@dataclass
class _Job:
    rels: list[str]
    prepare: bool = False  # only open them on the peer (no answer awaited)
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    seconds: float = 0.0
    #: Called (by the sender thread) once ``done`` is set: a fan-out counts the answers.
    notify: Callable[[], None] | None = None

    def finish(self, error: str, seconds: float) -> None:
        self.error, self.seconds = error, seconds
        self.done.set()
        if self.notify is not None:
            self.notify()


class BadRequest(ValueError):
    """An acknowledgement request that is malformed or names files this node does not hold."""


def parse_request(request: dict[str, Any], store: Path) -> tuple[str, list[str], float]:
    """(op, relative paths sidecar first, timeout) of an ``ack`` or ``prepare`` request; :class:`BadRequest` else."""
    op = request.get("op")
    if op not in ("ack", "prepare"):
        raise BadRequest(f"unknown op {op!r}")
    paths, timeout = request.get("paths"), request.get("timeout")
    if not isinstance(paths, list) or not paths or len(paths) > MAX_PATHS:
        raise BadRequest(f"paths: expected a list of 1 to {MAX_PATHS} paths")
    try:
        rels = [safe_relative(p) if isinstance(p, str) else safe_relative("") for p in paths]
    except UnsafePath as exc:
        raise BadRequest(str(exc)) from None
    rels = sorted(dict.fromkeys(rels), key=sidecar_first)
    if op == "prepare":
        return op, rels, 0.0  # the files do not exist yet: serve is about to synthesize them
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
        raise BadRequest("timeout: expected seconds, more than 0 and at most 60")
    for rel in rels:
        if not (store / rel).is_file():
            raise BadRequest(f"{rel}: no such file in {store}")
    return op, rels, float(timeout)


class AckSender:
    """Sends what ``serve`` is waiting for to one peer, ahead of its queue, fsynced there."""

    def __init__(self, store: Path, peer: Callable[[], Peer | None], locks: PathLocks, on_peer: OnPeer,
                 delivered: Callable[[list[str], float], None]) -> None:
        self.store = Path(store)
        self._peer = peer
        self.locks = locks
        self.on_peer = on_peer
        #: Told which files are on the peer now, and since when (the queue forgets them).
        self._delivered = delivered
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._lanes: list[Peer] = []
        self._lanes_of: Peer | None = None  # the connection the lanes belong to
        self._lanes_lock = threading.RLock()
        self._stop = threading.Event()
        #: When serve last asked for something (monotonic), None: never.
        self.last_request: float | None = None
        #: Files opened ahead by ``prepare``: relative path -> (monotonic time, what was opened).
        self._prepared: OrderedDict[str, tuple[float, Opened]] = OrderedDict()
        #: Temp files of opened-ahead files whose connection was lost: removed on the next one.
        self._orphans: list[str] = []
        #: Files sent, files found sent already (fsynced only), files that failed,
        #: results opened ahead and of those, the ones an acknowledgement used.
        self.stats = {"batches": 0, "sent": 0, "present": 0, "failed": 0, "prepared": 0, "prepared_used": 0}

    @property
    def connected(self) -> bool:
        peer = self._peer()
        return peer is not None and peer.alive

    def submit(self, rels: list[str], *, prepare: bool = False, notify: Callable[[], None] | None = None) -> _Job:
        """Queue ``rels`` (checked by :func:`parse_request`) for the sender thread."""
        self.last_request = time.monotonic()
        job = _Job(list(rels), prepare=prepare, notify=notify)
        self._jobs.put(job)
        return job

    # -- the sender thread ------------------------------------------------------
    def run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [first]
            while sum(len(j.rels) for j in batch) < BATCH_FILES:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            acks = [job for job in batch if not job.prepare]
            if acks:  # waited for: first
                self._send(acks)
            for job in batch:
                if job.prepare:
                    self._prepare(job.rels)
                    job.finish("", 0.0)
            self._expire()
        self.close()

    def stop(self) -> None:
        self._stop.set()

    def _send(self, batch: list[_Job]) -> None:
        started, started_wall = time.monotonic(), time.time()
        rels = sorted(dict.fromkeys(rel for job in batch for rel in job.rels), key=sidecar_first)
        error = ""
        try:
            lanes = self.lanes()
            with self.locks.hold(rels):
                stats = {rel: stat_inside(self.store, rel) for rel in rels}
                ahead = self._take_prepared(rels, lanes[0])
                # Opened ahead: written and renamed over even if the queue sent it meanwhile.
                present = frozenset(rel for rel in rels if rel not in ahead.files
                                    and self.on_peer.has(rel, stats[rel]))
                rest = [rel for rel in rels if rel not in ahead.files]
                if rest:  # the round trip the opened-ahead files saved
                    now = lanes[0].open_durable(rest, lanes[1:], present)
                    ahead.files.update(now.files)
                    ahead.dirs += now.dirs
                    ahead.directories += now.directories
                lanes[0].finish_durable([(self.store, rel) for rel in rels], ahead)
                for rel in rels:
                    self.on_peer.add(rel, stats[rel])
            self.stats["sent"] += len(rels) - len(present)
            self.stats["present"] += len(present)
        except Exception as exc:  # paramiko raises many kinds; the channels are suspect now
            error = f"{type(exc).__name__}: {exc}"
            log.warning("acknowledgement path: %s", error)
            self.close()
        seconds = time.monotonic() - started
        self.stats["batches"] += 1
        if error:
            self.stats["failed"] += len(rels)
        for job in batch:
            job.finish(error, seconds)
        if not error:
            self._delivered(rels, started_wall)  # after the answers: it writes to disk

    def _prepare(self, rels: list[str]) -> None:
        """Open ``rels`` on the peer ahead of their data (round trip 1 of a durable put)."""
        with self._lanes_lock:  # close() (another thread) forgets them
            rels = [rel for rel in rels if rel not in self._prepared and not self._sent(rel)]
            if not rels:
                return
            try:
                lanes = self.lanes()
                opened = lanes[0].open_durable(rels, lanes[1:], tag=PREPARED_TAG)
            except Exception as exc:  # only a lost head start; the acknowledgement opens them itself
                log.debug("cannot open %s ahead: %s", rels, exc)
                return
            now = time.monotonic()
            for rel in rels:
                self._prepared[rel] = (now, opened)
            self.stats["prepared"] += 1

    def _sent(self, rel: str) -> bool:
        """Whether ``rel`` is on the peer already (a hint that came after its acknowledgement)."""
        try:
            return self.on_peer.has(rel, stat_inside(self.store, rel))
        except (OSError, ValueError):  # not written yet, as a hint's files usually are
            return False

    def _take_prepared(self, rels: list[str], main: Peer) -> Opened:
        """What was opened ahead for ``rels``, as one :class:`Opened` on ``main``
        (an opening that also covers files not asked for now is discarded)."""
        with self._lanes_lock:  # close() (another thread) forgets them
            wanted = set(rels)
            taken: dict[int, Opened] = {}
            for rel in rels:
                entry = self._prepared.get(rel)
                if entry is not None:
                    taken[id(entry[1])] = entry[1]
            merged = Opened(main, [])
            for opened in taken.values():
                for rel in opened.files:
                    self._prepared.pop(rel, None)
                if opened.peer is not main or not set(opened.files) <= wanted:
                    main.discard(opened)
                    continue
                merged.files.update(opened.files)
                merged.dirs += opened.dirs
                merged.directories += opened.directories
                self.stats["prepared_used"] += 1
            return merged

    def _expire(self) -> None:
        """Discard openings nobody asked for in time, and the oldest beyond :data:`PREPARED_MAX`."""
        with self._lanes_lock:  # close() (another thread) forgets them
            now = time.monotonic()
            stale: dict[int, Opened] = {}
            results = len({id(o) for _, o in self._prepared.values()})
            for rel, (at, opened) in list(self._prepared.items()):
                if now - at > PREPARED_TTL_S or results - len(stale) > PREPARED_MAX:
                    stale[id(opened)] = opened
                if id(opened) in stale:
                    del self._prepared[rel]
            for opened in stale.values():
                opened.peer.discard(opened)

    def lanes(self) -> list[Peer]:
        """This path's SFTP channels on the replicator's current connection (opened once per connection)."""
        peer = self._peer()
        if peer is None or not peer.alive:
            raise ConnectionError("not connected to the peer")
        with self._lanes_lock:
            if self._lanes_of is not peer or not self._lanes:
                self.close()
                lanes: list[Peer] = []
                try:
                    for _ in range(LANES):
                        lanes.append(peer.channel())
                        channel = lanes[-1].sftp.get_channel()
                        if channel is None:  # an SFTPClient made from a transport always has one
                            raise ConnectionError("no SFTP channel to the peer")
                        channel.settimeout(IO_TIMEOUT_S)
                except BaseException:
                    for lane in lanes:
                        lane.close()
                    raise
                self._lanes, self._lanes_of = lanes, peer
                orphans, self._orphans = self._orphans, []
                for temp in orphans:  # opened ahead on the last connection, never used
                    try:
                        lanes[0].sftp.remove(temp)
                    except OSError:
                        pass
            return self._lanes

    def close(self) -> None:
        with self._lanes_lock:
            # Handles opened ahead die with their channels; their temp files wait for the next connection.
            self._orphans += [f.temp for _, opened in self._prepared.values()
                              for f in opened.files.values() if f.temp is not None]
            self._orphans = list(dict.fromkeys(self._orphans))
            self._prepared.clear()
            for lane in self._lanes:
                try:
                    lane.close()
                except Exception:
                    pass
            self._lanes, self._lanes_of = [], None


class AckFanout:
    """The acknowledgement socket's handler: every connected peer is sent each new
    result at once, and serve's answer waits for ``needed`` of them (``ack_peers``).

    A peer that is down or slow costs nothing while enough others confirm: its
    own queue brings it the file later.
    """

    def __init__(self, store: Path, senders: dict[str, AckSender], needed: int,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.store = Path(store)
        self.senders = senders
        self.needed = needed
        self._status = status

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request from the socket: ``status``, ``prepare`` or ``ack`` of some paths."""
        if request.get("op") == "status":
            return {"ok": True, **self._status()}
        try:
            op, rels, timeout = parse_request(request, self.store)
        except BadRequest as exc:
            return {"ok": False, "error": str(exc)}
        connected = {name: sender for name, sender in self.senders.items() if sender.connected}
        if op == "prepare":
            for sender in connected.values():
                sender.submit(rels, prepare=True)
            return {"ok": True} if connected else {"ok": False, "error": "not connected to any peer"}
        if len(connected) < self.needed:
            # Say so at once: serve need not wait out its deadline to learn it.
            why = self._status().get("last_error") or "no link"
            return {"ok": False, "error": f"{len(connected)} of {len(self.senders)} peers connected, "
                                          f"{self.needed} needed ({why})"}
        return self._wait(connected, rels, timeout)

    def _wait(self, connected: dict[str, AckSender], rels: list[str], timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        answered = threading.Condition()
        jobs = {name: sender.submit(rels, notify=lambda: _notify(answered)) for name, sender in connected.items()}

        def outcome() -> tuple[list[str], dict[str, str]]:
            good = [name for name, job in jobs.items() if job.done.is_set() and not job.error]
            bad = {name: job.error for name, job in jobs.items() if job.done.is_set() and job.error}
            return good, bad

        with answered:
            answered.wait_for(lambda: len(outcome()[0]) >= self.needed
                              or len(jobs) - len(outcome()[1]) < self.needed, timeout)
        good, bad = outcome()
        if len(good) >= self.needed:
            return {"ok": True, "seconds": round(time.monotonic() - started, 6), "peers": sorted(good)}
        if len(jobs) - len(bad) < self.needed:
            errors = "; ".join(f"{name}: {error}" for name, error in sorted(bad.items()))
            return {"ok": False, "error": f"{len(good)} of {self.needed} peers confirmed ({errors})"}
        return {"ok": False, "error": f"{len(good)} of {self.needed} peers confirmed within {1000 * timeout:.0f} ms"}


def _notify(condition: threading.Condition) -> None:
    with condition:
        condition.notify_all()

"""Acknowledgements: ``serve`` answers a new result once the standby holds it.

Two sides of one local socket (AF_UNIX, mode 0600, beside the replicator's
queue; one JSON line each way, one request per connection)::

    serve: AckGate, AckClient              replicator: AckServer
      {"op":"ack","paths":[…],"timeout":0.5}  ──►  sends them durably, now
      {"ok":true,"seconds":0.006}             ◄──
      {"op":"prepare","paths":[…]}            ──►  opens them on the peer ahead
      {"ok":true}                             ◄──  (at once: a hint, never awaited)
      {"op":"status"}                         ──►
      {"ok":true,"connected":true,"queue_depth":0}  ◄──

The replicator stays the only code that talks SFTP. :class:`AckGate` is the
serve side's state machine (as MySQL's semi-synchronous replication):
``sync`` waits up to ``ack_timeout`` for each new result; a timeout or a
refusal switches it to ``degraded``, where results are answered at once and
reach the peer through the replicator's queue, until the replicator reports
it is connected with an empty queue; then it waits again by itself.

This module imports neither paramiko nor the web server: both sides use it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config, replication_peers
from ..errors import TTSHAError
from ..localsocket import LineServer, NoAnswer, ask

log = logging.getLogger(__name__)

#: At most this many paths in one request (a result is a sidecar and an audio file).
MAX_PATHS = 16
SYNC, DEGRADED, LOCAL = "sync", "degraded", "local"
#: How often a gate asks the replicator how it is doing (to degrade before a
#: request has to find out, and to recover by itself).
POLL_S = 0.5
#: A replicator not caught up this long after serve started is alerted about.
STARTUP_GRACE_S = 60.0


def mode(config: Config) -> str:
    """``"standby"`` or ``"local"``: without a peer there is nothing to wait for."""
    return config.replicate.ack if replication_peers(config) else "local"


class AckUnavailable(TTSHAError):
    """The replicator did not confirm: not running, not connected, failed or too slow."""


# -- the wire (ttsha.localsocket) ----------------------------------------------
class AckServer(LineServer):
    """The replicator's end: answers each request with ``handle(request)``."""

    def __init__(self, path: Path, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        # Many request threads of serve may wait at once; none waits long.
        super().__init__(path, handle, name="ack", backlog=64, conn_timeout=5.0)


class AckClient:
    """serve's end: one request per connection, within a deadline."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The replicator's reply; :class:`AckUnavailable` when there is none in time."""
        try:
            return ask(self.path, request, timeout)
        except NoAnswer as exc:
            if exc.absent:
                raise AckUnavailable(f"the replicator is not running (nothing listens on {self.path})") from None
            if exc.timed_out:
                raise AckUnavailable(f"no answer from the replicator within {1000 * timeout:.0f} ms") from None
            raise AckUnavailable(f"the replicator on {self.path} did not answer: {exc.reason}") from None

    def ack(self, paths: list[str], timeout: float) -> float:
        """Ask for ``paths`` (relative to the store) on the peer, durably; seconds the replicator took."""
        reply = self.call({"op": "ack", "paths": paths, "timeout": timeout}, timeout)
        if not reply.get("ok"):
            raise AckUnavailable(str(reply.get("error") or "the replicator refused"))
        seconds = reply.get("seconds")
        return float(seconds) if isinstance(seconds, (int, float)) else 0.0

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        return self.call({"op": "status"}, timeout)

    def prepare(self, paths: list[str], timeout: float = 0.5) -> None:
        """Say which files a synthesis is about to write (the replicator opens them on the peer meanwhile)."""
        self.call({"op": "prepare", "paths": paths}, timeout)


# -- serve's side ----------------------------------------------------------------
class AckGate:
    """Whether ``serve`` waits for the standby, and how that is going.

    ``confirm`` is called by request threads after a new result is stored;
    ``poll`` by one background thread (:meth:`start`) every :data:`POLL_S`.
    ``client`` is the seam tests replace; ``clock`` is monotonic seconds.
    """

    def __init__(self, mode: str, timeout: float, client: AckClient | None, alert: Callable[..., Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self.timeout = timeout
        self.client = client
        self.alert = alert
        self.clock = clock
        self._started_at = clock()
        self._ever_synced = False
        self._startup_alerted = False
        # Until the replicator has said it is connected and caught up, nothing
        # is promised (serve and replicate start side by side; no alert for that).
        self.state = LOCAL if mode == "local" else DEGRADED
        self.reason = "" if mode == "local" else "waiting for the replicator"
        self.since = time.time()
        self.counts = {"confirmed": 0, "failed": 0, "async": 0}
        self._lock = threading.Lock()
        self._inflight: dict[str, tuple[threading.Event, list[str]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Files about to be written, for :meth:`prepare`'s thread (a hint: dropped when full).
        self._hints: queue.Queue[list[str]] = queue.Queue(maxsize=64)
        self._hint_thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "local"

    def confirm(self, key: str, paths: list[str]) -> str:
        """Wait (at most ``timeout``) until the peer holds ``paths``.

        Returns ``"confirmed"``, ``"failed"`` (the answer goes out anyway and
        the gate degrades), ``"async"`` (degraded: no wait) or ``"local"``.
        Concurrent calls for one ``key`` (identical requests) share one wait.
        """
        if not self.enabled:
            return "local"
        with self._lock:
            if self.state != SYNC:
                self.counts["async"] += 1
                return "async"
            shared = self._inflight.get(key)
            if shared is None:
                self._inflight[key] = (threading.Event(), [])
        if shared is not None:
            event, outcome = shared
            event.wait(self.timeout + 1.0)  # the owner's wait is bounded by the same timeout
            return outcome[0] if outcome else "failed"
        event, outcome = self._inflight[key]
        assert self.client is not None  # only mode "local" (never enabled) comes without a client
        try:
            self.client.ack(paths, self.timeout)
            result = "confirmed"
        except Exception as exc:  # AckUnavailable, or a bug: either way the client gets its answer
            result = "failed"
            self._degrade(str(exc) if isinstance(exc, AckUnavailable) else f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        with self._lock:
            self.counts[result] += 1
        outcome.append(result)
        event.set()
        return result

    def prepare(self, paths: list[str]) -> None:
        """A synthesis of ``paths`` (relative to the store) starts: the replicator may open
        them on the peer while it runs, so that :meth:`confirm` takes one round trip less.

        Never waits (another thread sends it); only a hint: :meth:`confirm`
        holds the same guarantee without it.
        """
        if not self.enabled or self.state != SYNC or self._hint_thread is None:
            return
        try:
            self._hints.put_nowait(paths)
        except queue.Full:
            pass

    def _hint_loop(self) -> None:
        assert self.client is not None  # only mode "local" (never enabled) comes without a client
        while not self._stop.is_set():
            try:
                paths = self._hints.get(timeout=POLL_S)
            except queue.Empty:
                continue
            try:
                self.client.prepare(paths)
            except Exception as exc:  # a lost head start, nothing more: confirm() finds out what is wrong
                log.debug("prepare %s: %s", paths, exc)

    def poll(self) -> None:
        """Ask the replicator how it is doing; degrade early, recover when caught up."""
        if not self.enabled:
            return
        assert self.client is not None  # only mode "local" (never enabled) comes without a client
        try:
            status = self.client.status(timeout=2.0)
        except AckUnavailable as exc:
            self._degrade(str(exc))
        else:
            connected = bool(status.get("connected"))
            if not connected:
                self._degrade(f"the replicator is not connected to the peer: {status.get('last_error') or 'no link'}")
            elif self.state == DEGRADED and status.get("queue_depth") == 0:
                self._recover()
        if (not self._ever_synced and not self._startup_alerted and self.alert is not None
                and self.clock() - self._started_at > STARTUP_GRACE_S):
            # serve and replicate start side by side; a replicator that never
            # catches up is worth the same alert as one that falls behind.
            self._startup_alerted = True
            self.alert("replication_degraded", "new results have been acknowledged before the standby holds them "
                       f"since start-up: {self.reason}", "critical")

    def _degrade(self, reason: str) -> None:
        with self._lock:
            was = self.state
            if was == SYNC:
                self.state, self.since = DEGRADED, time.time()
            self.reason = reason
        if was == SYNC:
            log.warning("replication acknowledgements degraded: %s; answering without the standby "
                        "until the replicator has caught up", reason)
            if self.alert is not None:
                self.alert("replication_degraded", f"new results are acknowledged before the standby holds them: "
                           f"{reason}", "critical")

    def _recover(self) -> None:
        with self._lock:
            if self.state != DEGRADED:
                return
            long = time.time() - self.since
            first = not self._ever_synced
            self._ever_synced = True
            self.state, self.since, self.reason = SYNC, time.time(), ""
        log.info("replication acknowledgements synchronous: the standby holds every result")
        if self.alert is not None and not (first and not self._startup_alerted):
            self.alert("replication_recovered", f"the standby has caught up after {long:.0f} s; new results are "
                       "acknowledged once it holds them again", "info")

    def describe(self) -> dict[str, Any]:
        """For ``/health`` (under ``replication.ack``) and ``ttsha status``."""
        with self._lock:
            out: dict[str, Any] = {"mode": self.mode, "state": self.state, "since": self.since}
            if self.enabled:
                out.update(timeout_s=self.timeout, **self.counts)
            if self.reason:
                out["reason"] = self.reason
        return out

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._poll_loop, name="ack-poll", daemon=True)
            self._thread.start()
            self._hint_thread = threading.Thread(target=self._hint_loop, name="ack-prepare", daemon=True)
            self._hint_thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _poll_loop(self) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # never let the gate stop watching
                log.exception("acknowledgement poll failed")
            if self._stop.wait(POLL_S):
                return

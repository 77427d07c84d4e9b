"""What one node's ``serve`` process knows: engine, store, workers, readiness.

The WSGI app (:mod:`ttsha.server.app`) turns HTTP into calls on
:class:`Service`; the daemon (:mod:`ttsha.server.daemon`) starts and stops it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import to_pcm16, wav_bytes
from ..config import ServeConfig
from ..engine import Engine, Lexicon
from ..engine.timing import Timeline
from ..errors import ConfigError, EngineError, InputError, StoreError
from ..protocol import Claim, RoleVerifier
from ..quality import CANARY_TEXT, Golden, compare
from ..replicate.ack import DEGRADED, AckGate
from ..store import AudioStore, StoredResult, normalize_key_text, result_id
from .metrics import Metrics
from .pool import SynthesisPool

log = logging.getLogger(__name__)

#: How often the store's free space is checked (and, after a failed write, a write probed).
STORE_CHECK_S = 1.0
#: After a failed write the node stays degraded at least this long (unless a real
#: write succeeds), so the monitor sees it even when a small probe fits at once.
STORE_HOLD_S = 5.0
#: A job running longer than this means a wedged worker (the watchdog stops pinging).
STUCK_AFTER_S = 300.0


class StreamAborted(Exception):
    """A streamed response whose synthesis failed after its headers were sent."""


@dataclass(frozen=True)
class SynthRequest:
    """A validated synthesis request."""

    text: str
    voice: str
    emotion: str
    speed: float
    id: str
    #: The lexicon the id was computed with, which the synthesis then reads (a reload between does not mix them).
    lexicon: Lexicon | None = field(default=None, compare=False)
    #: ``text`` is an SSML document (ttsha.engine.ssml).
    ssml: bool = False


#: Every value of ``/health``'s status (``ttsha_node_status`` has a series for each).
NODE_STATUSES = ("starting", "ready", "degraded", "failed")


@dataclass
class Readiness:
    """Start-up and canary state, read by ``/health`` without locks or I/O."""

    status: str = "starting"  # starting | ready | degraded | failed
    reason: str = "loading model"
    since: float = field(default_factory=time.time)
    last_synth_ok_at: float | None = None
    canary: dict[str, Any] = field(default_factory=dict)
    #: What keeps a loaded node from being ready, by source (canary, store_write, store_space).
    problems: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def set(self, status: str, reason: str = "") -> None:
        if status != self.status:
            level = logging.INFO if status == "ready" else logging.WARNING
            log.log(level, "health status=%s reason=%s", status, reason or "-")
            self.since = time.time()
        self.status, self.reason = status, reason

    def problem(self, source: str, reason: str | None) -> None:
        """Record (or clear, with None) one reason for ``degraded``; once loaded, the
        status follows: ``degraded`` while any reason stands, else ``ready``."""
        with self._lock:  # workers, the canary and the store check report concurrently
            if reason is None:
                self.problems.pop(source, None)
            else:
                self.problems[source] = reason
            if self.status in ("ready", "degraded"):
                self._settle()

    def settle(self) -> None:
        """Ready or degraded, from the recorded problems (after warm-up)."""
        with self._lock:
            self._settle()

    def _settle(self) -> None:
        if self.problems:
            self.set("degraded", "; ".join(f"{k}: {v}" for k, v in sorted(self.problems.items())))
        else:
            self.set("ready")


def check_canary_audio(samples: np.ndarray, rate: int, text: str) -> str | None:
    """Why the canary's audio is bad, or None when it is plausible speech."""
    if samples.size == 0:
        return "no audio"
    duration = samples.size / rate
    chars = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    if not (0.08 * chars <= duration <= 1.0 * chars + 1.0):
        return f"implausible duration {duration:.2f} s for {chars} characters"
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    if rms < 1e-3:
        return f"silent (rms {rms:.5f})"
    clipped = float(np.mean(np.abs(samples) >= 0.999))
    if clipped > 0.01:
        return f"clipped ({clipped:.1%} of samples at full scale)"
    return None


class Service:
    """Synthesis through a bounded worker pool into the content-addressed store."""

    def __init__(self, serve: ServeConfig, engine: Engine, store: AudioStore,
                 replication_state: Path | None = None, acks: AckGate | None = None,
                 roles: RoleVerifier | None = None, golden_path: Path | None = None) -> None:
        self.serve = serve
        #: The canary's golden fingerprint (ttsha.quality); read again whenever the file changes.
        self.golden_path = golden_path
        self._golden: tuple[float | None, Golden | None, str | None] = (None, None, None)
        #: With ``[replicate] ack = "standby"``: new results are answered once the peer holds them.
        self.acks = acks
        #: The replicator's state file on this node (its queue and lag), if any.
        self.replication_state = replication_state
        self._replication: tuple[float, dict[str, Any] | None] = (0.0, None)
        self.engine = engine
        self.store = store
        self.pool = SynthesisPool(serve.workers, serve.queue_size, serve.worker_priority, serve.deadline)
        self.metrics = Metrics()
        self.readiness = Readiness()
        self._stop = threading.Event()
        self._canary_thread: threading.Thread | None = None
        #: The store as /health reports it, refreshed by the store thread.
        self.store_state: dict[str, Any] = {}
        self._store_failed_at = 0.0
        #: This node's role as the gateway's monitor last said in a probe, and when.
        self.role: str | None = None
        self.role_at: float | None = None
        #: When the role last changed (the replicator sends models again when it does).
        self.role_since: float | None = None
        #: Which role claims this node believes (signed by the monitor; none without a secret).
        self.roles = roles or RoleVerifier(None, None)
        self.role_claim: Claim | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        """Load the model, warm it up with a real synthesis, then report ready."""
        try:
            info = self.engine.load()
            self.metrics.engine.info(
                {"engine": info.engine, "model_id": info.model_id, "model_version": info.model_version}
            )
            self.store.ensure()
            self.pool.start()
            self._check_store()
            started = time.perf_counter()
            self._canary_once(blocking=True)
            log.info("warm-up synthesis took %.2f s", time.perf_counter() - started)
            # The first synthesis pays for cold caches (about twice as slow): a
            # second one is what admission starts from, so that a standby
            # taking over a burst right after start-up estimates it fairly.
            self.pool.admission.forget()
            self._canary_once(blocking=True)
            log.info("synthesis speed %.4f s per character", self.pool.admission.seconds_per_unit)
        except Exception as exc:
            self.readiness.set("failed", str(exc))
            raise
        self.readiness.settle()
        if self.acks is not None:
            self.acks.start()
        self._canary_thread = threading.Thread(target=self._canary_loop, name="canary", daemon=True)
        self._canary_thread.start()
        threading.Thread(target=self._store_loop, name="store-check", daemon=True).start()

    def stop(self, timeout: float) -> bool:
        self._stop.set()
        if self.acks is not None:
            self.acks.stop()
        return self.pool.stop(timeout)

    # -- requests --------------------------------------------------------
    def validate(self, text: Any, voice: Any, emotion: Any, speed: Any, ssml: bool = False) -> SynthRequest:
        """Check a request against limits and the loaded engine; fill defaults."""
        if text is not None and not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}", code="bad_text")
        if text is None or not text.strip():
            raise InputError("text is empty", code="empty_text")
        if len(text) > self.serve.max_chars:
            raise InputError(f"text has {len(text)} characters, the limit is {self.serve.max_chars}",
                             code="text_too_long")
        for name, value in (("voice", voice), ("emotion", emotion)):
            if value is not None and not isinstance(value, str):
                raise InputError(f"{name} must be a string", code=f"bad_{name}")
        if isinstance(speed, bool) or isinstance(speed, (list, dict)):
            raise InputError("speed must be a number", code="bad_speed")
        if speed is not None:
            try:
                number = float(speed)
            except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit integer
                raise InputError(f"speed must be a number, got {str(speed)[:40]!r}", code="bad_speed") from None
            if not math.isfinite(number):
                raise InputError("speed must be a finite number", code="bad_speed")
        voice, emotion, speed = self.engine.resolve(voice or None, emotion or None, speed)
        info = self.engine.info
        lexicon = self.engine.lexicon
        rid = result_id(
            lexicon=lexicon.fingerprint,
            engine=info.engine,
            model_version=info.model_version,
            voice=voice,
            emotion=emotion,
            speed=speed,
            sample_rate=info.sample_rate,
            text=text,
            markup="ssml" if ssml else "",
        )
        req = SynthRequest(normalize_key_text(text), voice, emotion, speed, rid, lexicon, ssml)
        # A stored result proves the text was sayable; only new text pays for the front end.
        if not self.store.audio_path(rid).is_file():
            self.engine.pieces(text, lexicon, ssml)  # refuses text with nothing to say, and bad SSML
        return req

    def lookup(self, req: SynthRequest) -> StoredResult | None:
        found = self.store.get(req.id)
        self.metrics.cache.labels("hit" if found else "miss").inc()
        return found

    def synthesize(self, req: SynthRequest, arrived: float | None = None,
                   timing: bool = False) -> tuple[StoredResult, bool]:
        """The stored result for ``req`` and whether it was cached; synthesizes
        through the pool when absent (queued by ``arrived``, see :meth:`SynthesisPool.submit`;
        with ``timing``, also when it was stored without timing).

        Raises :class:`~ttsha.server.pool.Overloaded` when the queue is full.
        """
        found = self.lookup(req)
        if found is not None and not (timing and "timing" not in found.meta):
            return found, True
        self.pool.deadline = self.serve.deadline  # SIGHUP may have changed it
        self._prepare(req.id)
        future = self.pool.submit(lambda: self._render(req), key=req.id, chars=len(req.text), arrived=arrived)
        self._update_gauges()
        stored = future.result()
        self._confirm(req.id)
        return stored, False

    def stream(self, req: SynthRequest, arrived: float | None = None) -> Iterator[bytes]:
        """PCM16 sentence by sentence as it is synthesized (encoded by the caller).

        The synthesis runs on a pool worker; the finished result is stored
        for the cache when the last piece is done.
        """
        chunks: queue.Queue[bytes | BaseException | None] = queue.Queue()

        def produce() -> None:
            try:
                self._render(req, on_piece=lambda pcm: chunks.put(pcm))
            except BaseException as exc:  # reaches the HTTP thread
                chunks.put(exc)
            finally:
                chunks.put(None)

        self.pool.deadline = self.serve.deadline
        self._prepare(req.id)
        self.pool.submit(produce, chars=len(req.text), arrived=arrived)
        self._update_gauges()

        def body() -> Iterator[bytes]:
            while True:
                item = chunks.get()
                if item is None:
                    # The end of the stream is the acknowledgement: it goes
                    # out once the peer holds the result, as a plain answer does.
                    self._confirm(req.id)
                    return
                if isinstance(item, BaseException):
                    # Headers are gone already: raising makes the server close the
                    # connection without the terminating chunk, so the client and
                    # the gateway see a broken response, never a short "complete" one.
                    raise StreamAborted(f"streamed synthesis of {req.id} failed: {item}") from item
                yield item

        return body()

    def _render(self, req: SynthRequest, on_piece=None) -> StoredResult:
        """Runs on a worker: synthesize, store, account."""
        started = time.perf_counter()
        parts = []
        early = on_piece is not None
        timeline = Timeline()
        for samples in self.engine.stream(req.text, req.voice, req.emotion, req.speed, early_start=early,
                                          lexicon=req.lexicon, timeline=timeline, ssml=req.ssml):
            parts.append(samples)
            if on_piece is not None:
                on_piece(to_pcm16(samples))
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        info = self.engine.info
        duration = audio.size / info.sample_rate
        meta = {
            "text": req.text,
            "voice": req.voice,
            "emotion": req.emotion,
            "speed": req.speed,
            "engine": info.engine,
            "model_version": info.model_version,
            **({"lexicon": req.lexicon.fingerprint} if req.lexicon and req.lexicon.fingerprint else {}),
            **({"ssml": True} if req.ssml else {}),
            "sample_rate": info.sample_rate,
            "duration_s": round(duration, 3),
            # In the sidecar, so a cached result has the timestamps its synthesis had.
            "timing": timeline.to_json(),
        }
        try:
            stored = self.store.put(req.id, wav_bytes(audio, info.sample_rate), meta)
        except StoreError as exc:
            # Not ready at once: the monitor fails over, and the 503 makes the gateway retry.
            self._store_failed_at = time.monotonic()
            self.readiness.problem("store_write", exc.message)
            self.store_state["writable"] = False
            raise
        if "store_write" in self.readiness.problems:
            self.readiness.problem("store_write", None)
            self.store_state["writable"] = True
        self.metrics.synthesis_seconds.observe(time.perf_counter() - started)
        self.metrics.audio_seconds.inc(duration)
        self.readiness.last_synth_ok_at = time.time()
        return stored

    def _ack_paths(self, rid: str) -> list[str]:
        """The files of result ``rid`` the standby must hold, relative to the store (sidecar first)."""
        return [str(p.relative_to(self.store.root)) for p in (self.store.meta_path(rid), self.store.audio_path(rid))]

    def _prepare(self, rid: str) -> None:
        """A synthesis of ``rid`` starts: the replicator may open its files on the peer meanwhile."""
        if self.acks is not None and self.acks.enabled:
            self.acks.prepare(self._ack_paths(rid))

    def _confirm(self, rid: str) -> None:
        """Return once the peer holds the new result ``rid`` durably, or
        ``[replicate] ack_timeout`` has passed (then answer anyway, degraded)."""
        if self.acks is None or not self.acks.enabled:
            return
        rels = self._ack_paths(rid)
        started = time.perf_counter()
        outcome = self.acks.confirm(rid, rels)
        self.metrics.acks.labels(outcome).inc()
        if outcome != "async":
            self.metrics.ack_seconds.observe(time.perf_counter() - started)

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.pool.queue_depth)
        self.metrics.workers_busy.set(self.pool.busy)
        for status in NODE_STATUSES:
            self.metrics.node_status.labels(status).set(1 if status == self.readiness.status else 0)
        free = self.store_state.get("free_bytes")
        if free is not None:
            self.metrics.store_free.set(free)
        replication = self.replication()
        if replication is not None:
            self.metrics.replication_queue.set(replication.get("queue_depth") or 0)
            self.metrics.replication_connected.set(1 if replication.get("connected") else 0)
            for quantile, value in (replication.get("lag_s") or {}).items():
                if value is not None:
                    self.metrics.replication_lag.labels(quantile).set(value)
        if self.acks is not None and self.acks.enabled:
            self.metrics.ack_degraded.set(1 if self.acks.state == DEGRADED else 0)

    # -- health ----------------------------------------------------------
    def replication(self) -> dict[str, Any] | None:
        """This node's replicator state (queue depth, lag), read at most once a second,
        and how new results are acknowledged."""
        read_at, cached = self._replication
        now = time.monotonic()
        if self.replication_state is not None and now - read_at >= 1.0:
            try:
                data = json.loads(self.replication_state.read_text())
                cached = {
                    "queue_depth": data.get("queue_depth"),
                    "oldest_pending_s": data.get("oldest_pending_s"),
                    "lag_s": data.get("lag_s"),
                    "connected": data.get("connected"),
                    "last_error": data.get("last_error", ""),
                    "age_s": round(time.time() - data.get("updated_at", 0), 1),
                    # Each peer's own queue and link (a failover checks the target's).
                    "peers": {name: {key: peer.get(key) for key in ("queue_depth", "oldest_pending_s", "lag_s",
                                                                    "connected", "last_error")}
                              for name, peer in (data.get("peers") or {}).items() if isinstance(peer, dict)},
                }
            except (OSError, ValueError):
                cached = None
            self._replication = (now, cached)
        if self.acks is not None and (self.acks.enabled or cached is not None):
            # The monitor copies this dict into its state: `ttsha status` and
            # `ttsha failover` see whether acknowledgements are degraded.
            return {**(cached or {}), "ack": self.acks.describe()}
        return cached

    def note_role(self, claim: Claim) -> None:
        """Remember the role the monitor gave this node (a verified claim in
        its probe): the replicator on this node sends models only from the primary."""
        now = time.time()
        if claim.role != self.role:
            log.info("role=%s (from the monitor %s, epoch %d)", claim.role, claim.gateway, claim.epoch)
            self.role_since = now
        self.role, self.role_at, self.role_claim = claim.role, now, claim

    def health(self, details: bool = True) -> tuple[int, dict[str, Any]]:
        """``/health``: answered from memory; without ``details`` the status alone."""
        r = self.readiness
        body: dict[str, Any] = {"status": r.status}
        if not details:
            return (200 if r.status == "ready" else 503), body
        if r.status != "ready":
            body["reason"] = r.reason
        if self.engine._info is not None:
            info = self.engine._info
            body.update(engine=info.engine, model_version=info.model_version, voices=list(info.voices))
        body.update(
            # Drills signal this process (ttsha failover --drill): the pid of whoever answers.
            pid=os.getpid(),
            queue_depth=self.pool.queue_depth,
            workers_busy=self.pool.busy,
            last_synth_ok_at=r.last_synth_ok_at,
            canary=r.canary,
            role=self.role,
            role_at=self.role_at,
            role_since=self.role_since,
            store=self.store_state,
            admission={
                "deadline_s": self.pool.deadline,
                "seconds_per_char": round(self.pool.admission.seconds_per_unit, 5),
                "wait_s": round(self.pool.estimate(0), 3),
            },
            role_epoch=self.role_claim.epoch if self.role_claim else None,
            role_gateway=self.role_claim.gateway if self.role_claim else None,
            role_claims=self.roles.stats(),
        )
        replication = self.replication()
        if replication is not None:
            body["replication"] = replication
        return (200 if r.status == "ready" else 503), body

    def _canary_once(self, blocking: bool = False) -> str | None:
        """Synthesize the fixed sentence and check it; the failure reason or None."""

        def run() -> tuple[np.ndarray, int]:
            audio = self.engine.synthesize(CANARY_TEXT)
            return audio.samples, audio.sample_rate

        chars = len(CANARY_TEXT)

        started = time.perf_counter()
        quality: dict[str, Any] | None = None
        try:
            if blocking:
                samples, rate = self.pool.submit(run, priority=10, chars=chars).result()
            else:
                future = self.pool.submit_if_idle(run, chars=chars)
                if future is None:
                    self.metrics.canary.labels("skipped").inc()
                    return None  # real work has priority; it proves health too
                samples, rate = future.result()
            reason = check_canary_audio(samples, rate, CANARY_TEXT)
            if reason is None:
                reason, quality = self._against_golden(samples, rate)
        except (EngineError, InputError) as exc:
            reason = str(exc)
        except Exception as exc:  # a broken model can raise anything
            reason = f"{type(exc).__name__}: {exc}"
        self.readiness.canary = {
            "ok": reason is None,
            "at": time.time(),
            "seconds": round(time.perf_counter() - started, 3),
            **({"reason": reason} if reason else {}),
            **({"quality": quality} if quality else {}),
        }
        self.metrics.canary.labels("ok" if reason is None else "failed").inc()
        if reason is None:
            self.readiness.last_synth_ok_at = time.time()
        self.readiness.problem("canary", reason)
        return reason

    def _load_golden(self) -> tuple[Golden | None, str | None]:
        """The golden fingerprint (None: none recorded), or why it cannot be read."""
        if self.golden_path is None:
            return None, None
        try:
            mtime: float | None = self.golden_path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        except OSError as exc:
            return None, f"canary golden {self.golden_path}: {exc.strerror or exc}"
        if mtime != self._golden[0]:
            golden, problem = None, None
            if mtime is not None:
                try:
                    golden = Golden.load(self.golden_path)
                except ConfigError as exc:
                    problem = str(exc)
            self._golden = (mtime, golden, problem)
        return self._golden[1], self._golden[2]

    def _against_golden(self, samples: np.ndarray, rate: int) -> tuple[str | None, dict[str, Any] | None]:
        """The canary's audio against the golden: (failure reason, what /health shows)."""
        golden, problem = self._load_golden()
        if problem:
            return problem, None
        if golden is None:
            return None, None
        info = self.engine._info
        if info is not None and info.engine != golden.engine:
            return None, {"skipped": f"the golden was recorded for engine {golden.engine}"}
        result = compare(golden, samples, rate, self.serve.canary_max_distance)
        if math.isfinite(result.distance_db):
            self.metrics.canary_distance.set(result.distance_db)
        return result.reason, {"distance_db": round(result.distance_db, 2),
                               "limit_db": self.serve.canary_max_distance,
                               "golden_model_version": golden.model_version}

    def _canary_loop(self) -> None:
        while not self._stop.wait(self.serve.canary_interval):
            self._canary_once()

    # -- store -----------------------------------------------------------
    def _check_store(self) -> None:
        """Free space against ``min_free``; after a failed write, probe until one succeeds."""
        state: dict[str, Any] = {"min_free": self.store.min_free,
                                 "writable": "store_write" not in self.readiness.problems}
        try:
            state["free_bytes"] = self.store.free_bytes()
            self.readiness.problem("store_space", self.store.space_problem())
        except OSError as exc:
            state["free_bytes"] = None
            self.readiness.problem("store_space", f"cannot stat the audio store: {exc.strerror or exc}")
        if not state["writable"] and time.monotonic() - self._store_failed_at >= STORE_HOLD_S:
            try:
                self.store.probe_write()
            except StoreError as exc:
                self.readiness.problem("store_write", exc.message)
            else:
                log.info("the audio store takes writes again")
                self.readiness.problem("store_write", None)
                state["writable"] = True
        self.store_state = state

    def _store_loop(self) -> None:
        while not self._stop.wait(STORE_CHECK_S):
            try:
                self._check_store()
            except Exception:  # keep checking; a crash here would freeze the reported state
                log.exception("store check failed")

"""A fixed pool of synthesis workers fed by a priority queue, admission by deadline.

A request is admitted when the workers can finish it within its deadline:
:class:`Admission` estimates the wait from the work queued and running ahead
of it and the seconds per unit of work the workers themselves measure
(seeded by the warm-up). Otherwise :meth:`SynthesisPool.submit` raises
:class:`Overloaded` at once and the API answers 503 with ``Retry-After``, so
the gateway tries the other node; a burst the node can finish in time (the
retries of a dead primary's requests on the standby) is all admitted.
``queue_size`` only bounds memory. Identical requests in flight are coalesced
into one job. Queued requests are served oldest first by their arrival at
the gateway (``X-Request-Start``, :func:`ttsha.protocol.request_arrival`),
not by their arrival here: requests retried from a node that died or was
fenced mid-synthesis have already waited, and go before newer ones instead of
waiting a second time behind them (earliest deadline first, which keeps the
slowest request as fast as the work allows). Background work (the health
canary) runs at lowest priority and only when the pool is idle.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

REQUEST = 0
BACKGROUND = 10
_STOP = 100


def _lower_priority(priority: str) -> None:
    """Put the calling thread below the HTTP threads in the CPU scheduler.

    Synthesis saturates the cores; health checks and cache hits must not wait
    for a time slice behind it. ``idle`` (SCHED_IDLE) runs synthesis only on
    otherwise idle CPU time, ``low`` is nice 10, ``normal`` leaves it alone.
    """
    tid = threading.get_native_id()
    try:
        if priority == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        elif priority == "low":
            os.setpriority(os.PRIO_PROCESS, tid, 10)
    except (OSError, AttributeError) as exc:
        log.warning("cannot lower synthesis worker priority (%s): %s", priority, exc)


class Overloaded(Exception):
    """The request could not finish within its deadline (or the queue is at its bound)."""

    def __init__(self, retry_after: int, why: str = "") -> None:
        super().__init__(f"overloaded{f' ({why})' if why else ''}, retry after {retry_after} s")
        self.retry_after = retry_after


#: Work units a job costs beyond its characters (model start, pauses, storing).
JOB_OVERHEAD_UNITS = 4.0


def job_units(chars: int) -> float:
    """The work of synthesizing ``chars`` characters, in the unit :class:`Admission` measures."""
    return max(0, chars) + JOB_OVERHEAD_UNITS


class Admission:
    """The admission rule, pure: no threads, no clock of its own.

    Work is counted in units (:func:`job_units`: characters plus a per-job
    overhead); ``seconds_per_unit`` is an exponentially weighted mean of what
    the workers measured. A new job of ``units`` would start once the work
    ahead of it (queued, plus what running jobs still need) is spread over
    the workers, and finish its own work after that. It is admitted when
    that finish is within ``deadline``, or when a worker is free right now
    (a text longer than the deadline on its own still gets served by an idle
    node: ``max_chars`` bounds it, not this rule).
    """

    def __init__(self, workers: int, seconds_per_unit: float = 0.05, weight: float = 0.2) -> None:
        self.workers = max(1, workers)
        self.seconds_per_unit = seconds_per_unit
        self.weight = weight
        self.observed = 0

    def observe(self, units: float, seconds: float) -> None:
        """A worker finished a job of ``units`` in ``seconds``."""
        if units <= 0 or seconds < 0:
            return
        rate = seconds / units
        # The first measurement (the warm-up) replaces the built-in guess.
        self.seconds_per_unit = (rate if self.observed == 0
                                 else (1 - self.weight) * self.seconds_per_unit + self.weight * rate)
        self.observed += 1

    def forget(self) -> None:
        """Let the next measurement replace the estimate (after a cold first run)."""
        self.observed = 0

    def finish_in(self, units: float, waiting: int, waiting_units: float, running: list[tuple[float, float]]) -> float:
        """Estimated seconds until a new job of ``units`` is done.

        ``waiting`` jobs of ``waiting_units`` in all are queued ahead of it;
        ``running`` holds (units, seconds elapsed) of each job on a worker.
        """
        spu = self.seconds_per_unit
        if len(running) + waiting < self.workers:
            return units * spu  # a worker is free for it now
        remaining = sum(max(0.0, u * spu - elapsed) for u, elapsed in running)
        return (waiting_units * spu + remaining) / self.workers + units * spu

    def retry_after(self, units: float, waiting: int, waiting_units: float,
                    running: list[tuple[float, float]], deadline: float) -> int | None:
        """None to admit; else the seconds after which the job would fit (at least 1)."""
        if len(running) + waiting < self.workers:
            return None  # a worker is free now, however long the job
        finish = self.finish_in(units, waiting, waiting_units, running)
        if finish <= deadline:
            return None
        return max(1, math.ceil(finish - deadline))


@dataclass(order=True)
class _Job:
    priority: int
    arrived: float  # the gateway's arrival time (wall clock): oldest first within a priority
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: Future = field(compare=False)
    key: str | None = field(compare=False, default=None)
    units: float = field(compare=False, default=0.0)


class SynthesisPool:
    """``workers`` threads running submitted callables, admitted by deadline, at most ``queue_size`` waiting."""

    def __init__(self, workers: int, queue_size: int, priority: str = "idle", deadline: float = 20.0) -> None:
        self.workers = workers
        self.queue_size = queue_size
        self.priority = priority
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.deadline = deadline
        self.admission = Admission(workers)
        #: seq -> (arrived, units) of each request job queued and not yet picked up.
        self._waiting: dict[int, tuple[float, float]] = {}
        self._inflight: dict[str, Future] = {}
        self._running: dict[int, tuple[float, float]] = {}  # thread ident -> (start time, units) of its job
        self._threads: list[threading.Thread] = []
        self._accepting = True

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"synth-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- state -----------------------------------------------------------
    def _waiting_units(self) -> float:
        """The work of the queued requests (call with the lock held)."""
        return sum(units for _, units in self._waiting.values())

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def idle(self) -> bool:
        with self._lock:
            return not self._waiting and not self._running

    def healthy(self, stuck_after: float) -> bool:
        """Workers alive and none stuck on one job for longer than ``stuck_after``."""
        now = time.monotonic()
        with self._lock:
            stuck = any(now - started > stuck_after for started, _ in self._running.values())
        return not stuck and all(t.is_alive() for t in self._threads) and len(self._threads) == self.workers

    # -- submission ------------------------------------------------------
    def estimate(self, chars: int) -> float:
        """Seconds until a new job of ``chars`` characters would be done (for /health and tests)."""
        now = time.monotonic()
        with self._lock:
            running = [(u, now - started) for started, u in self._running.values()]
            return self.admission.finish_in(job_units(chars), len(self._waiting), self._waiting_units(), running)

    def submit(self, fn: Callable[[], Any], key: str | None = None, priority: int = REQUEST,
               chars: int = 0, arrived: float | None = None) -> Future:
        """Queue ``fn`` (``chars`` characters of work); identical ``key`` in flight shares its future.

        ``arrived`` (wall-clock seconds, default now) orders the queue: the
        earliest goes first among jobs of the same priority.

        Raises :class:`Overloaded` when a request could not finish within the deadline.
        """
        units = job_units(chars)
        with self._lock:
            if not self._accepting:
                raise Overloaded(retry_after=1, why="shutting down")
            if key is not None and key in self._inflight:
                return self._inflight[key]
            when = time.time() if arrived is None else arrived
            seq = next(self._seq)
            if priority == REQUEST:
                now = time.monotonic()
                running = [(u, now - started) for started, u in self._running.values()]
                queued = len(self._waiting)
                if queued >= self.queue_size:
                    finish = self.admission.finish_in(units, queued, self._waiting_units(), running)
                    raise Overloaded(retry_after=max(1, math.ceil(finish)), why=f"{queued} requests waiting")
                # It waits only for what arrived before it: the queue is served oldest first.
                ahead = [u for a, u in self._waiting.values() if a <= when]
                wait = self.admission.retry_after(units, len(ahead), sum(ahead), running, self.deadline)
                if wait is not None:
                    raise Overloaded(retry_after=wait, why=f"would not finish within the {self.deadline:g} s deadline")
                self._waiting[seq] = (when, units)
            future: Future = Future()
            if key is not None:
                self._inflight[key] = future
                future.add_done_callback(lambda _f: self._forget(key))
            self._queue.put(_Job(priority, when, seq, fn, future, key, units))
        return future

    def submit_if_idle(self, fn: Callable[[], Any], chars: int = 0) -> Future | None:
        """Background work: queued only when nothing else is waiting or running."""
        if not self.idle():
            return None
        return self.submit(fn, priority=BACKGROUND, chars=chars)

    def _forget(self, key: str) -> None:
        with self._lock:
            self._inflight.pop(key, None)

    def _work(self) -> None:
        me = threading.get_ident()
        _lower_priority(self.priority)
        while True:
            job = self._queue.get()
            if job.priority == _STOP:
                return
            with self._lock:
                if job.priority == REQUEST:
                    self._waiting.pop(job.seq, None)
                self._running[me] = (time.monotonic(), job.units)
            if not job.future.set_running_or_notify_cancel():
                with self._lock:
                    self._running.pop(me, None)
                continue
            started = time.monotonic()
            ok = False
            try:
                result = job.fn()
                ok = True
            except BaseException as exc:  # handed to the waiting request
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
            finally:
                elapsed = time.monotonic() - started
                with self._lock:
                    self._running.pop(me, None)
                    if ok and job.units > 0:
                        # A failed job says nothing about the speed of synthesis.
                        self.admission.observe(job.units, elapsed)

    def stop(self, timeout: float) -> bool:
        """Refuse new work, let queued and running jobs finish; True if all did in time."""
        with self._lock:
            self._accepting = False
        for _ in self._threads:
            self._queue.put(_Job(_STOP, 0.0, next(self._seq), lambda: None, Future()))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

"""A fixed pool of synthesis workers fed by a bounded priority queue.

Requests never wait without bound: when ``queue_size`` requests are already
waiting, :meth:`SynthesisPool.submit` raises :class:`Overloaded` at once and
the API answers 503 with ``Retry-After``. Identical requests in flight are
coalesced into one job. Background work (the health canary) runs at lowest
priority and only when the pool is idle.
"""

from __future__ import annotations

import itertools
import logging
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
    """Every worker is busy and the queue is full."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"overloaded, retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(order=True)
class _Job:
    priority: int
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: Future = field(compare=False)
    key: str | None = field(compare=False, default=None)


class SynthesisPool:
    """``workers`` threads running submitted callables, at most ``queue_size`` waiting."""

    def __init__(self, workers: int, queue_size: int, priority: str = "idle") -> None:
        self.workers = workers
        self.queue_size = queue_size
        self.priority = priority
        self._queue: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._waiting = 0  # request jobs queued, not yet picked up
        self._inflight: dict[str, Future] = {}
        self._running: dict[int, float] = {}  # thread ident -> start time of its job
        self._threads: list[threading.Thread] = []
        self._accepting = True
        #: Mean seconds per job, for Retry-After.
        self._mean_job_s = 1.0

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"synth-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    # -- state -----------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        with self._lock:
            return self._waiting

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def idle(self) -> bool:
        with self._lock:
            return self._waiting == 0 and not self._running

    def healthy(self, stuck_after: float) -> bool:
        """Workers alive and none stuck on one job for longer than ``stuck_after``."""
        now = time.monotonic()
        with self._lock:
            stuck = any(now - started > stuck_after for started in self._running.values())
        return not stuck and all(t.is_alive() for t in self._threads) and len(self._threads) == self.workers

    # -- submission ------------------------------------------------------
    def submit(self, fn: Callable[[], Any], key: str | None = None, priority: int = REQUEST) -> Future:
        """Queue ``fn``; identical ``key`` in flight shares its future."""
        with self._lock:
            if not self._accepting:
                raise Overloaded(retry_after=1)
            if key is not None and key in self._inflight:
                return self._inflight[key]
            if priority == REQUEST:
                if self._waiting >= self.queue_size:
                    waves = (self._waiting + len(self._running)) / max(1, self.workers)
                    raise Overloaded(retry_after=max(1, int(waves * self._mean_job_s + 0.999)))
                self._waiting += 1
            future: Future = Future()
            if key is not None:
                self._inflight[key] = future
                future.add_done_callback(lambda _f, k=key: self._forget(k))
            self._queue.put(_Job(priority, next(self._seq), fn, future, key))
        return future

    def submit_if_idle(self, fn: Callable[[], Any]) -> Future | None:
        """Background work: queued only when nothing else is waiting or running."""
        if not self.idle():
            return None
        return self.submit(fn, priority=BACKGROUND)

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
                    self._waiting -= 1
                self._running[me] = time.monotonic()
            if not job.future.set_running_or_notify_cancel():
                with self._lock:
                    self._running.pop(me, None)
                continue
            started = time.monotonic()
            try:
                result = job.fn()
            except BaseException as exc:  # handed to the waiting request
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
            finally:
                elapsed = time.monotonic() - started
                with self._lock:
                    self._running.pop(me, None)
                    self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * elapsed

    def stop(self, timeout: float) -> bool:
        """Refuse new work, let queued and running jobs finish; True if all did in time."""
        with self._lock:
            self._accepting = False
        for _ in self._threads:
            self._queue.put(_Job(_STOP, next(self._seq), lambda: None, Future()))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

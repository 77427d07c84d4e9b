"""The replicator's durable queue: order, re-queueing, survival across a reopen."""

from __future__ import annotations

from ttsha.replicate.queue import DurableQueue


def test_order_requeue_and_oldest(tmp_path):
    queue = DurableQueue(tmp_path / "q.sqlite")
    assert queue.depth() == 0 and queue.oldest_closed_at() is None
    queue.put("a.wav", closed_at=10.0)
    queue.put_many(["b.wav", "c.wav"], closed_at=20.0)
    assert [p.rel for p in queue.peek()] == ["a.wav", "b.wav", "c.wav"]
    assert queue.oldest_closed_at() == 10.0
    queue.put("a.wav", closed_at=30.0)  # changed again: moves to the end, no longer the oldest
    assert [p.rel for p in queue.peek()] == ["b.wav", "c.wav", "a.wav"]
    assert queue.oldest_closed_at() == 20.0
    queue.discard(["b.wav", "a.wav"], queued_before=25.0)  # a.wav was queued again after: it stays
    assert [p.rel for p in queue.peek()] == ["c.wav", "a.wav"]
    first = queue.peek(1)[0]
    queue.failed(first)
    queue.close()
    reopened = DurableQueue(tmp_path / "q.sqlite")  # a restart loses nothing
    again = reopened.peek()
    assert [p.rel for p in again] == ["c.wav", "a.wav"] and again[0].attempts == 1
    reopened.done(again[0])
    assert reopened.depth() == 1 and reopened.oldest_closed_at() == 30.0
    reopened.close()

"""Where a node's replicator keeps its files, computed here only.

Everything sits beside ``[replicate] queue_file``, so that ``serve`` and
``replicate`` of one node find each other from the same configuration::

    replicate.sqlite          the queue of a replicator from before fan-out (migrated, then removed)
    replicate.NODE.sqlite     the durable queue of files still to send to peer NODE
    replicate.json            the replicator's state (serve shows it in /health)
    replicate.sock            the acknowledgement socket serve asks
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config


def queue_path(config: Config, peer: str) -> Path:
    """The durable queue of files still to send to ``peer`` (one per peer)."""
    base = Path(config.replicate.queue_file)
    return base.with_name(f"{base.stem}.{peer}{base.suffix or '.sqlite'}")


def legacy_queue_path(config: Config) -> Path:
    """The single queue a replicator used before it sent to every peer."""
    return Path(config.replicate.queue_file)


def state_path(config: Config) -> Path:
    """The replicator's state document (written by it, read by ``serve``)."""
    return Path(config.replicate.queue_file).with_suffix(".json")


def socket_path(config: Config) -> Path:
    """The replicator's acknowledgement socket."""
    return Path(config.replicate.queue_file).with_suffix(".sock")

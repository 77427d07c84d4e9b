"""Prometheus metrics of one ``serve`` process (its own registry, so tests can run many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ttsha_http_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.synthesis_seconds = Histogram(
            "ttsha_synthesis_seconds",
            "Time to synthesize one request (cache misses)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.queue_depth = Gauge("ttsha_queue_depth", "Requests waiting for a worker", registry=self.registry)
        self.workers_busy = Gauge("ttsha_workers_busy", "Workers synthesizing now", registry=self.registry)
        self.cache = Counter("ttsha_cache", "Synthesis cache lookups", ["result"], registry=self.registry)
        self.audio_seconds = Counter("ttsha_audio_seconds", "Seconds of audio synthesized", registry=self.registry)
        self.canary = Counter("ttsha_canary_runs", "Canary syntheses by outcome", ["outcome"], registry=self.registry)
        self.canary_distance = Gauge("ttsha_canary_distance_db",
                                     "Log-mel distance of the latest canary audio from the golden fingerprint",
                                     registry=self.registry)
        # One series per status, 1 for the current one (a state set): alert rules
        # and dashboards select on the label instead of decoding a number.
        self.node_status = Gauge(
            "ttsha_node_status", "1 for the node's current /health status", ["status"], registry=self.registry
        )
        self.store_free = Gauge(
            "ttsha_store_free_bytes", "Free bytes on the audio store's filesystem", registry=self.registry
        )
        self.engine = Info("ttsha_engine", "Loaded engine and model", registry=self.registry)
        self.replication_queue = Gauge(
            "ttsha_replication_queue_depth", "Files waiting to be copied to the peer", registry=self.registry
        )
        self.replication_lag = Gauge(
            "ttsha_replication_lag_seconds", "Write-to-standby lag of recent files", ["quantile"],
            registry=self.registry,
        )
        self.replication_connected = Gauge(
            "ttsha_replication_connected", "1 while the replicator holds an SSH session to the peer",
            registry=self.registry,
        )

        self.acks = Counter(
            "ttsha_replication_acks", "New results by how the standby acknowledged them "
            "(confirmed, failed: answered after a timeout or refusal, async: while degraded)", ["outcome"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "ttsha_replication_ack_seconds", "Time a new result waited for the standby's acknowledgement",
            buckets=(0.002, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04, 0.05, 0.1, 0.25,
                     0.5, 1, 2), registry=self.registry,
        )
        self.ack_degraded = Gauge(
            "ttsha_replication_ack_degraded", "1 while new results are answered without waiting for the standby "
            "(replication: degraded)", registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Alerts to a webhook (generic JSON or a WeCom group robot), never in the way.

:meth:`Alerter.send` only queues: a background thread delivers with retries
and backoff, so a slow or dead webhook can never delay a failover. Each kind
of event is rate limited to one alert per ``min_interval``.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import httpclient
from .config import AlertConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    kind: str
    message: str
    severity: str = "warning"  # info | warning | critical
    at: float = field(default_factory=time.time)
    data: dict[str, Any] = field(default_factory=dict)


def payload(alert: Alert, fmt: str, source: str) -> dict[str, Any]:
    if fmt == "wecom":
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(alert.at))
        return {"msgtype": "text", "text": {"content": f"[ttsha {alert.severity}] {alert.message}\n{source} {when}"}}
    return {
        "source": source,
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "at": alert.at,
        "data": alert.data,
    }


class Alerter:
    def __init__(self, config: AlertConfig, source: str | None = None, backoff: float = 1.0) -> None:
        self.config = config
        self.source = source or socket.gethostname()
        self.backoff = backoff
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=1000)
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self.sent: list[Alert] = []
        self.dropped = 0
        self._thread = threading.Thread(target=self._deliver_loop, name="alerts", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> bool:
        """Queue ``alert`` unless its kind was alerted within ``min_interval``; never blocks."""
        level = logging.ERROR if alert.severity == "critical" else logging.WARNING
        log.log(level, "alert kind=%s %s", alert.kind, alert.message)
        with self._lock:
            last = self._last.get(alert.kind)
            if last is not None and alert.at - last < self.config.min_interval:
                self.dropped += 1
                return False
            self._last[alert.kind] = alert.at
        if not self.config.webhook_url:
            return True
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _deliver_loop(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps(payload(alert, self.config.format, self.source), ensure_ascii=False).encode()
        for attempt in range(self.config.retries + 1):
            reply = httpclient.request("POST", self.config.webhook_url, body=body,
                                       headers={"Content-Type": "application/json"}, timeout=5)
            if reply.ok:
                self.sent.append(alert)
                return
            log.warning("alert delivery attempt %d failed: %s", attempt + 1, reply.error or f"HTTP {reply.status}")
            time.sleep(self.backoff * (2**attempt))
        log.error("alert %s dropped after %d attempts", alert.kind, self.config.retries + 1)

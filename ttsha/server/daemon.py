"""The ``ttsha serve`` daemon: bind at once, load and warm up, serve, drain.

Signals are fed into the main loop: SIGTERM/SIGINT stop (new connections
are refused, in-flight requests finish within ``drain_timeout``, exit 0),
SIGHUP re-reads the configuration for what can change without a restart,
and the pronunciation lexicon; a lexicon file that changes on disk (the
replicator brings the primary's to the standby) is read again by itself.
Under systemd: READY=1 after warm-up, WATCHDOG=1 from a thread that checks
the synthesis workers, STOPPING=1 on shutdown.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import signal
import threading
import time
from pathlib import Path

from .. import systemd
from ..alert import Alert, Alerter
from ..config import Config, load, this_node
from ..engine import create_engine, install_lexicon, load_lexicon
from ..engine.lexicon import stamp_of
from ..errors import TTSHAError
from ..protocol import RoleVerifier, load_secret
from ..quality import golden_path
from ..replicate import ack
from ..replicate.ack import AckGate
from ..replicate.paths import socket_path, state_path
from ..store import AudioStore
from .app import create_app
from .http import BoundedWSGIServer
from .service import STUCK_AFTER_S, Service

log = logging.getLogger(__name__)

#: How often serve looks at the lexicon file's mtime, size and inode (a stat call).
LEXICON_CHECK_S = 2.0


def _ack_gate(config: Config) -> AckGate:
    """How this node's serve waits for the standby ([replicate] ack), alerting when that degrades."""
    mode = ack.mode(config)
    alert = None
    if mode != "local":
        alerter = Alerter(config.alert)
        alert = lambda kind, message, severity: alerter.send(Alert(kind, message, severity))  # noqa: E731
    return AckGate(mode, config.replicate.ack_timeout, ack.AckClient(socket_path(config)), alert)


def claims_file(config: Config, store_dir: Path) -> Path:
    """Where this node records the newest role-claim epoch ([serve] claims_file)."""
    return Path(config.serve.claims_file) if config.serve.claims_file else Path(store_dir).parent / "role-claims.json"


def role_verifier(config: Config, host: str, port: int, store_dir: Path) -> RoleVerifier:
    """Which role claims this node believes (see :mod:`ttsha.protocol`)."""
    secret = load_secret(config.monitor.secret_file)
    name = this_node(config, host, port)
    if secret is None:
        log.warning("no [monitor] secret_file: this node believes no role from the monitor, so its replicator "
                    "sends no models with models = \"primary\" (see ttsha(1), SECURITY)")
    elif name is None:
        log.warning("cannot tell which [nodes] table this node is (%s:%d): set [serve] node; until then no role "
                    "claim is believed", host, port)
    return RoleVerifier(secret, name, state_file=claims_file(config, store_dir) if secret is not None else None)


class ServeDaemon:
    def __init__(self, config: Config, host: str, port: int, store_dir: Path) -> None:
        self.config = config
        self.host, self.port = host, port
        store = AudioStore(store_dir, min_free=config.store.min_free)
        store.ensure()
        engine = create_engine(config.engine, workers=config.serve.workers)
        # The replicator on this node (if any) writes its state beside its queue.
        self.service = Service(config.serve, engine, store, replication_state=state_path(config),
                               acks=_ack_gate(config), roles=role_verifier(config, host, port, store_dir),
                               golden_path=golden_path(config))
        self.app = create_app(self.service, config.openai)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._failed: Exception | None = None  # set by a start-up that failed (run raises it)
        try:
            sc = config.serve
            self.server = BoundedWSGIServer(host, port, self.app, max_connections=sc.max_connections,
                                            header_timeout=sc.header_timeout, body_timeout=sc.body_timeout)
        except OSError as exc:
            raise TTSHAError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET/AF_INET6 listener's address (bytes only for AF_UNIX)
        return host, port

    def _signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def _watchdog(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self.service.pool.healthy(STUCK_AFTER_S):
                systemd.watchdog_ping()
            else:
                log.error("synthesis workers are wedged; withholding the watchdog ping")

    def _load(self) -> None:
        try:
            self.service.start()
            # The model's objects live as long as the process: keep the cyclic
            # GC from walking them on every full collection (a pause of ~10 ms).
            gc.collect()
            gc.freeze()
            info = self.service.engine.info
            systemd.ready(f"serving {info.engine} {info.model_version} on {self.host}:{self.port}")
            log.info("ready engine=%s model_version=%s", info.engine, info.model_version)
        except Exception as exc:
            log.error("start-up failed: %s", exc)
            self._failed = exc
            self._stop.set()

    def _apply_reload(self) -> None:
        source = self.config.source
        systemd.reloading()
        try:
            new = load(source) if source else self.config
        except TTSHAError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
        else:
            # The lexicon is read again below; any other engine key needs a new process.
            restart_needed = ["engine"] if dataclasses.replace(new.engine, lexicon=None) != dataclasses.replace(
                self.config.engine, lexicon=None) else []
            restart_needed += ["store"] if new.store != self.config.store else []
            restart_needed += [f"serve.{key}" for key in ("host", "port", "workers", "node", "claims_file")
                               if getattr(new.serve, key) != getattr(self.config.serve, key)]
            if new.monitor.secret_file != self.config.monitor.secret_file:
                restart_needed.append("monitor.secret_file")
            if restart_needed:
                log.warning("reload: %s changed; restart the service to apply", ", ".join(restart_needed))
            # Limits apply to the next request (connection limits to the next connection); the pool and engine stay.
            self.service.serve = new.serve
            self.server.max_connections = new.serve.max_connections
            self.server.header_timeout = new.serve.header_timeout
            self.server.body_timeout = new.serve.body_timeout
            self.app.openai = new.openai
            if self.service.acks is not None:
                self.service.acks.timeout = new.replicate.ack_timeout
            self.config = new
            log.info("configuration reloaded from %s", source or "defaults")
            self._reload_lexicon()
        systemd.ready()

    def _reload_lexicon(self) -> None:
        """Read ``[engine] lexicon`` again; a bad one is refused and the running one stays."""
        try:
            lexicon = load_lexicon(self.config.engine.lexicon)
        except TTSHAError as exc:
            log.error("lexicon refused, keeping the running one: %s", exc)
            # Not read again until the file changes again.
            path = self.config.engine.lexicon
            self.service.engine.lexicon = dataclasses.replace(
                self.service.engine.lexicon, source=path, stamp=stamp_of(path) if path else None)
            return
        install_lexicon(self.service.engine, lexicon)

    def run(self) -> int:
        """Serve until SIGTERM; the exit code."""
        self._failed = None
        self._signals()
        http = threading.Thread(target=self.server.serve_forever, name="http", kwargs={"poll_interval": 0.2})
        http.start()
        log.info("listening on http://%s:%d (loading model)", *self.address)
        threading.Thread(target=self._load, name="load", daemon=True).start()
        interval = systemd.watchdog_interval()
        if interval:
            threading.Thread(target=self._watchdog, args=(interval,), name="watchdog", daemon=True).start()
        lexicon_checked = time.monotonic()
        while not self._stop.wait(0.5):
            if self._reload.is_set():
                self._reload.clear()
                self._apply_reload()
            elif time.monotonic() - lexicon_checked >= LEXICON_CHECK_S:
                lexicon_checked = time.monotonic()
                if self.service.engine.lexicon.changed_on_disk():
                    log.info("lexicon %s changed on disk; reading it again", self.config.engine.lexicon)
                    self._reload_lexicon()
        drain = self.config.serve.drain_timeout
        systemd.stopping(f"draining for up to {drain:.0f} s")
        log.info("stopping: refusing new connections, draining in-flight requests")
        self.server.shutdown()
        self.server.server_close()
        http.join()
        drained = self.app.wait_idle(drain)
        self.service.stop(timeout=1.0 if drained else 0.0)
        if not drained:
            log.warning("drain timeout: %d responses still in flight", self.app.active_requests)
        if self._failed is not None:
            raise TTSHAError(f"start-up failed: {self._failed}")
        log.info("stopped")
        return 0

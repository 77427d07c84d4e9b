from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import replace
from urllib.parse import urlencode

import numpy as np
import pytest
from werkzeug.serving import make_server

from ttsha.config import ServeConfig
from ttsha.engine.base import Engine, EngineInfo
from ttsha.errors import EngineError
from ttsha.protocol import RoleVerifier, sign_claim
from ttsha.server.app import create_app
from ttsha.server.service import Service
from ttsha.store import AudioStore


class FakeEngine(Engine):
    """An engine at the designed seam: controllable speed, output and failures."""

    name = "fake"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.output = "speech"  # speech | silence | nan
        self.permits: threading.Semaphore | None = None  # when set, one permit per piece
        self.fail_on_call: int | None = None  # the n-th piece (1-based) raises EngineError
        self.seconds_per_char = 0.0  # simulated compute time, which the pool measures

    def _load(self) -> EngineInfo:
        return EngineInfo("fake", "fake-model", "v1", 16000, ("alice", "bob"), ("neutral", "happy"), "alice")

    def _synthesize_piece(self, text: str, voice: str, emotion: str, speed: float) -> np.ndarray:
        self.calls += 1
        self.started.set()
        assert self.gate.wait(30), "test gate never opened"
        if self.permits is not None:
            assert self.permits.acquire(timeout=30), "test never granted this piece"
        if self.seconds_per_char:
            time.sleep(self.seconds_per_char * len(text))
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise EngineError(f"injected failure on piece {self.calls}")
        n = int(0.25 * len(text) * 16000 / speed)
        if self.output == "silence":
            return np.zeros(n, np.float32)
        if self.output == "nan":
            return np.full(n, np.nan, np.float32)
        t = np.arange(n) / 16000
        return (0.3 * np.sin(2 * np.pi * 200 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


class Client:
    """A real HTTP client against a real server socket on loopback."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def request(self, method: str, path: str, body=None, headers=None, timeout: float = 60):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body, ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp, data

    def synth(self, params=None, timeout: float = 60, **kw):
        return self.request("POST", "/v1/synthesize" + ("?" + urlencode(params) if params else ""), body=kw,
                            timeout=timeout)


class Node:
    """A Service + App on a real werkzeug server on an ephemeral loopback port."""

    def __init__(self, engine: Engine, store_dir, serve: ServeConfig, start: bool = True, host: str = "127.0.0.1",
                 acks=None, roles: RoleVerifier | None = None) -> None:
        self.engine = engine
        self.host = host
        self.service = Service(serve, engine, AudioStore(store_dir), acks=acks, roles=roles)
        self.app = create_app(self.service)
        self.server = make_server(host, 0, self.app, threaded=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.client = Client(host, self.port)
        if start:
            self.service.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        if isinstance(self.engine, FakeEngine):
            self.engine.gate.set()
        self.service.stop(timeout=5)


#: The shared secret of the tests' monitor and nodes (ttsha.protocol).
SECRET = b"0123456789abcdef0123456789abcdef"


class RoleSigner:
    """Signs role claims as the gateway's monitor does, with a growing epoch."""

    def __init__(self, secret: bytes = SECRET, gateway: str = "gw") -> None:
        self.secret, self.gateway, self.epoch = secret, gateway, 1000

    def claim(self, role: str, node: str = "a", epoch: int | None = None) -> dict[str, str]:
        self.epoch += 1
        return sign_claim(self.secret, role, node, self.gateway, self.epoch if epoch is None else epoch)


SERVE = ServeConfig(workers=2, queue_size=4, max_chars=200, max_body_bytes=4096, canary_interval=3600.0)


@pytest.fixture
def fake_engine():
    return FakeEngine()


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def make(engine, start=True, roles=None, **serve):
        node = Node(engine, tmp_path / f"store{len(nodes)}", replace(SERVE, **serve), start=start, roles=roles)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def fake_node(make_node, fake_engine):
    return make_node(fake_engine)

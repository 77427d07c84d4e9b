"""A ``serve`` process with the fake engine, so tests can ``kill -9`` a real process.

    python -m tests.server.fake_node HOST PORT STORE_DIR [SECRET_FILE NODE_NAME [QUEUE_SIZE]]
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from werkzeug.serving import make_server

from ttsha.protocol import RoleVerifier, load_secret
from ttsha.server.app import create_app
from ttsha.server.service import Service
from ttsha.store import AudioStore

from .conftest import SERVE, FakeEngine


def main(host: str, port: int, store: Path, secret: Path | None = None, name: str | None = None,
         queue_size: int | None = None) -> None:
    serve = SERVE if queue_size is None else replace(SERVE, queue_size=queue_size)
    service = Service(serve, FakeEngine(), AudioStore(store), roles=RoleVerifier(load_secret(secret), name))
    server = make_server(host, port, create_app(service), threaded=True)
    service.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    stop.wait()
    server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]),
         *([Path(sys.argv[4]), sys.argv[5]] if len(sys.argv) > 5 else []),
         *([int(sys.argv[6])] if len(sys.argv) > 6 else []))

"""The HTTP server under ``serve``: werkzeug's threaded server with bounds.

werkzeug's development server runs one thread per connection and waits for
a client forever. Here:

* a connection has ``header_timeout`` from accept to its last header line,
  and ``body_timeout`` to deliver the body it announced (total times, not per
  read: a slowloris client sending a byte a second gains nothing);
* after the response, unread body is drained for at most ``drain_timeout``
  (werkzeug closes every connection after one response, so a 413 ends the
  connection within that time);
* at most ``max_connections`` connections are served at once; beyond that a
  new connection gets an immediate 503 (the gateway retries it elsewhere)
  rather than a thread;
* errors the HTTP parser answers itself (414, 431, 400) are JSON like the
  application's.

Deadlines are enforced by one reaper thread that shuts the socket of a
connection past its deadline, which ends its blocked read.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 0.25
_BUSY = json.dumps({"error": "too_many_connections", "message": "the server is at its connection limit; retry"})
BUSY_RESPONSE = (
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    f"Content-Length: {len(_BUSY)}\r\nConnection: close\r\n\r\n{_BUSY}"
).encode()


class _Body:
    """``wsgi.input`` that tells the server when the announced body has been read."""

    def __init__(self, raw, length: int | None, done) -> None:
        self._raw, self._left, self._done = raw, length, done

    def _count(self, data: bytes, asked: int | None) -> bytes:
        if self._left is not None:
            self._left -= len(data)
            if self._left <= 0:
                self._done()
        elif not data and asked != 0:
            self._done()  # a chunked body's end
        return data

    def read(self, size: int = -1) -> bytes:
        return self._count(self._raw.read(size), size)

    def readline(self, size: int = -1) -> bytes:
        return self._count(self._raw.readline(size), size)

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer)
        self._count(bytes(memoryview(buffer)[:n]) if n else b"", len(buffer))
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class BoundedHandler(WSGIRequestHandler):
    """werkzeug's handler with deadlines and JSON parser errors."""

    server: BoundedWSGIServer

    def make_environ(self):
        environ = super().make_environ()
        # The headers are in: from here the body has its own deadline.
        chunked = bool(environ.get("wsgi.input_terminated"))
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        conn = self.connection
        if chunked or length > 0:
            environ["ttsha.body_done"] = False

            def done() -> None:
                environ["ttsha.body_done"] = True
                self.server.set_deadline(conn, None)

            self.server.set_deadline(conn, self.server.body_timeout)
            environ["wsgi.input"] = _Body(environ["wsgi.input"], None if chunked else length, done)
        else:
            self.server.set_deadline(conn, None)
        return environ

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The parser's own errors (414, 431, 400) as JSON, then close."""
        short = self.responses.get(code, ("Error", ""))[0]
        body = json.dumps({"error": short.lower().replace(" ", "_"), "message": message or short}).encode()
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        self.send_response(code, short)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)


class BoundedWSGIServer(ThreadedWSGIServer):
    """A threaded WSGI server with connection deadlines and a connection cap."""

    daemon_threads = True

    def __init__(self, host: str, port: int, app, *, max_connections: int = 512, header_timeout: float = 10.0,
                 body_timeout: float = 30.0, drain_timeout: float = 2.0, write_timeout: float = 60.0) -> None:
        # Blocking writes to a client that stops reading end after this (per send).
        handler = type("Handler", (BoundedHandler,), {"timeout": write_timeout})
        super().__init__(host, port, self._tracked, handler=handler)
        self.inner_app = app
        self.max_connections = max_connections
        self.header_timeout, self.body_timeout, self.drain_timeout = header_timeout, body_timeout, drain_timeout
        self._deadlines: dict[socket.socket, float | None] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.refused = 0
        self.reaped = 0
        threading.Thread(target=self._reap, name="http-reaper", daemon=True).start()

    # -- the WSGI side -----------------------------------------------------
    def _tracked(self, environ, start_response):
        try:
            return self.inner_app(environ, start_response)
        finally:
            if environ.get("ttsha.body_done") is False:
                # Unread body (a 413, say): werkzeug drains it before closing; not for long.
                self.set_deadline(environ["werkzeug.socket"], self.drain_timeout)

    # -- connections -------------------------------------------------------
    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._deadlines)

    def set_deadline(self, conn: socket.socket, seconds: float | None) -> None:
        with self._lock:
            if conn in self._deadlines:
                self._deadlines[conn] = None if seconds is None else time.monotonic() + seconds

    def process_request(self, request, client_address) -> None:
        with self._lock:
            full = len(self._deadlines) >= self.max_connections
            if not full:
                self._deadlines[request] = time.monotonic() + self.header_timeout
        if full:
            self.refused += 1
            if self.refused % 1000 == 1:
                log.warning("connection limit (%d) reached: answering 503 (%d so far)", self.max_connections,
                            self.refused)
            try:
                request.settimeout(0.2)
                request.sendall(BUSY_RESPONSE)
            except OSError:
                pass
            super().shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread (resources): the connection must not stay counted
            self.shutdown_request(request)
            raise

    def shutdown_request(self, request) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
        super().shutdown_request(request)

    def _reap(self) -> None:
        while not self._stopped.wait(REAP_INTERVAL_S):
            now = time.monotonic()
            with self._lock:
                late = [conn for conn, deadline in self._deadlines.items() if deadline is not None and deadline < now]
                for conn in late:
                    self._deadlines[conn] = None  # once: its thread ends and removes it
            for conn in late:
                self.reaped += 1
                try:
                    # SHUT_RD wakes the thread blocked reading it and still lets it answer (a 400, say).
                    conn.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def server_close(self) -> None:
        self._stopped.set()
        super().server_close()

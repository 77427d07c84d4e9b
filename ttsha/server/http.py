"""The HTTP server under ``serve``: werkzeug's threaded server with bounds.

werkzeug's development server runs one thread per connection and waits for
a client forever. Here:

* a connection has ``header_timeout`` from accept to its last header line,
  and ``body_timeout`` to deliver the body it announced (total times, not per
  read: a slowloris client sending a byte a second gains nothing);
* after the response, unread body is drained for at most ``drain_timeout``
  (werkzeug closes every connection after one response, so a 413 ends the
  connection within that time);
* at most ``max_connections`` connections are served at once. A connection
  beyond that gets no thread: :class:`_Overflow` (one thread, non-blocking
  sockets) reads its request head for up to ``overflow_wait``. A
  ``GET``/``HEAD /health`` is then served at once on one of
  :data:`HEALTH_RESERVE` slots of its own, so a slowloris or a burst that
  fills every slot never makes the monitor mark the node down; any other
  request is served if a slot frees within that time, else answered 503
  JSON with ``Retry-After`` (the gateway retries it elsewhere), never left
  hanging. A reserved slot only ever gets a request whose head is already
  read, so a client cannot hold one by sending slowly;
* errors the HTTP parser answers itself (414, 431, 400) are JSON like the
  application's.

Deadlines are enforced by one reaper thread that shuts the socket of a
connection past its deadline, which ends its blocked read.
"""

from __future__ import annotations

import io
import json
import logging
import re
import selectors
import socket
import threading
import time
from collections import OrderedDict
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 0.25
#: Slots beyond ``max_connections`` that only a ``/health`` request whose head is read may use.
HEALTH_RESERVE = 4
#: How long a connection beyond the cap may take to send its request head and wait for a slot.
OVERFLOW_WAIT_S = 1.0
#: Most connections beyond the cap held at once (the oldest is answered 503 to make room).
OVERFLOW_MAX = 256
#: Largest request head read beyond the cap (a /health probe's is a few hundred bytes).
OVERFLOW_HEAD_MAX = 16384
#: After a 503 beyond the cap, how long what the client still sends is read and dropped,
#: so that closing does not reset the connection before the client reads the 503.
OVERFLOW_LINGER_S = 0.5
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


class _Replay(io.RawIOBase):
    """A connection's input: the bytes the overflow already read, then the socket's reader."""

    def __init__(self, head: bytes, rest) -> None:
        super().__init__()
        self._head, self._rest = memoryview(head), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read1(len(buffer))  # one read of the socket at most: never waits for more
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._rest.close()
        super().close()


class BoundedHandler(WSGIRequestHandler):
    """werkzeug's handler with deadlines and JSON parser errors."""

    server: BoundedWSGIServer

    def setup(self) -> None:
        super().setup()
        head = self.server.take_head(self.connection)
        if head:  # read by the overflow before this connection got its slot
            self.rfile = io.BufferedReader(_Replay(head, self.rfile))

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
                 body_timeout: float = 30.0, drain_timeout: float = 2.0, write_timeout: float = 60.0,
                 overflow_wait: float = OVERFLOW_WAIT_S) -> None:
        # Blocking writes to a client that stops reading end after this (per send).
        handler = type("Handler", (BoundedHandler,), {"timeout": write_timeout})
        super().__init__(host, port, self._tracked, handler=handler)
        self.inner_app = app
        self.max_connections = max_connections
        self.header_timeout, self.body_timeout, self.drain_timeout = header_timeout, body_timeout, drain_timeout
        self._deadlines: dict[socket.socket, float | None] = {}
        self._reserved: set[socket.socket] = set()  # connections on a /health slot
        self._heads: dict[socket.socket, bytes] = {}  # what the overflow read before a slot was free
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()  # the accept and overflow threads both start handlers
        self._stopped = threading.Event()
        self.refused = 0
        self.reaped = 0
        self.health_reserved = 0  # /health requests served on a reserved slot
        self.overflow = _Overflow(self, overflow_wait)
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
        """Connections that have a slot (the capped ones and the reserved ones)."""
        with self._lock:
            return len(self._deadlines)

    def set_deadline(self, conn: socket.socket, seconds: float | None) -> None:
        with self._lock:
            if conn in self._deadlines:
                self._deadlines[conn] = None if seconds is None else time.monotonic() + seconds

    def take_head(self, conn: socket.socket) -> bytes:
        """What the overflow read from ``conn`` before it got its slot (once)."""
        with self._lock:
            return self._heads.pop(conn, b"")

    def admit(self, conn: socket.socket, head: bytes = b"", reserved: bool = False) -> bool:
        """Give ``conn`` a slot (one of the :data:`HEALTH_RESERVE` when ``reserved``); False: none is free."""
        with self._lock:
            if reserved:
                if len(self._reserved) >= HEALTH_RESERVE:
                    return False
                self._reserved.add(conn)
            elif len(self._deadlines) - len(self._reserved) >= self.max_connections:
                return False
            self._deadlines[conn] = time.monotonic() + self.header_timeout
            if head:
                self._heads[conn] = head
        return True

    def start(self, request, client_address) -> None:
        """A thread for an admitted connection."""
        try:
            with self._start_lock:
                super().process_request(request, client_address)
        except Exception:  # no thread (resources): the connection must not stay counted
            self.shutdown_request(request)
            raise

    def note_refused(self) -> None:
        self.refused += 1
        if self.refused % 1000 == 1:
            log.warning("connection limit (%d) reached: answering 503 (%d so far; /health is still served)",
                        self.max_connections, self.refused)

    def process_request(self, request, client_address) -> None:
        if self.admit(request):
            self.start(request, client_address)
        else:
            self.overflow.add(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._lock:
            had_slot = self._deadlines.pop(request, False) is not False
            self._reserved.discard(request)
            self._heads.pop(request, None)
        super().shutdown_request(request)
        if had_slot:
            self.overflow.slot_freed()

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
        self.overflow.stop()
        super().server_close()


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_HAS_BODY = re.compile(rb"(?im)^(?:transfer-encoding[ \t]*:|content-length[ \t]*:[ \t]*0*[1-9])")


def is_health_probe(head: bytes) -> bool:
    """A whole request head that asks ``GET``/``HEAD /health`` (query allowed) without a body."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
    return (len(line) == 3 and line[0] in (b"GET", b"HEAD") and line[1].split(b"?", 1)[0] == b"/health"
            and _HAS_BODY.search(head) is None)


class _Pending:
    __slots__ = ("addr", "deadline", "head", "ready", "health", "closing", "watched")

    def __init__(self, addr, deadline: float) -> None:
        self.addr, self.deadline = addr, deadline
        self.head = bytearray()
        self.ready = self.health = self.closing = False
        self.watched = True  # registered with the selector


class _Overflow:
    """Connections beyond the cap, all on one thread with non-blocking sockets.

    Each is read until its request head is in (the rest stays in the
    kernel's buffer for the handler), then admitted: a ``/health`` probe to a
    reserved slot at once, anything else to a regular slot as soon as one
    frees. Whatever has no slot :data:`OVERFLOW_WAIT_S` after it arrived is
    answered 503 and closed after a short linger.
    """

    def __init__(self, server: BoundedWSGIServer, wait: float) -> None:
        self.server, self.wait = server, wait
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._inbox: list[tuple[socket.socket, Any]] = []
        self._pending: OrderedDict[socket.socket, _Pending] = OrderedDict()  # oldest first
        self._waiting = 0  # pending with a whole head (read by slot_freed without the lock: a hint)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-overflow", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Connections beyond the cap not yet admitted or closed."""
        return len(self._pending)

    @property
    def waiting(self) -> int:
        """Of those, the ones whose request head is in (waiting for a slot)."""
        return self._waiting

    def add(self, conn: socket.socket, addr) -> None:
        with self._lock:
            self._inbox.append((conn, addr))
        self._wake()

    def slot_freed(self) -> None:
        if self._waiting:
            self._wake()

    def stop(self) -> None:
        self._stopped.set()
        self._wake()
        self._thread.join(5)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # its buffer is full (a wake-up is already due) or it is closed
            pass

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                now = time.monotonic()
                timeout = max(0.0, min(p.deadline for p in self._pending.values()) - now) if self._pending else None
                for key, _ in self._selector.select(timeout):
                    if key.fileobj is self._wake_r:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except OSError:
                            pass
                    else:
                        self._readable(key.fileobj)  # type: ignore[arg-type]
                self._take_inbox()
                self._admit_waiting()
                self._expire()
        except Exception:  # never silently: the node would stop answering beyond the cap
            log.exception("connection overflow thread failed")
        finally:
            for conn in list(self._pending):
                self._drop(conn)
            with self._lock:
                inbox, self._inbox = self._inbox, []
            for conn, _ in inbox:
                conn.close()
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _take_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for conn, addr in inbox:
            while len(self._pending) >= OVERFLOW_MAX:
                oldest = next(iter(self._pending))
                if self._pending[oldest].closing:
                    self._drop(oldest)
                else:
                    self._refuse(oldest, linger=False)
            conn.setblocking(False)
            self._pending[conn] = _Pending(addr, time.monotonic() + self.wait)
            self._selector.register(conn, selectors.EVENT_READ)

    def _readable(self, conn: socket.socket) -> None:
        p = self._pending.get(conn)
        if p is None:
            return
        try:
            data = conn.recv(65536 if p.closing else 4096)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)  # the client is gone (or, after a 503, has read it and closed)
            return
        if p.closing:
            return  # read and dropped: see OVERFLOW_LINGER_S
        p.head += data
        if _HEAD_END.search(p.head, max(0, len(p.head) - len(data) - 3)):
            p.ready, p.health = True, is_health_probe(bytes(p.head))
            # The body (if any) waits in the kernel for the handler.
            self._selector.unregister(conn)
            p.watched = False
            self._waiting += 1
        elif len(p.head) > OVERFLOW_HEAD_MAX:
            self._refuse(conn)

    def _admit_waiting(self) -> None:
        regular_free = True
        for conn, p in list(self._pending.items()):
            if not p.ready or p.closing:
                continue
            admitted = p.health and self.server.admit(conn, bytes(p.head), reserved=True)
            if not admitted and regular_free:
                admitted = self.server.admit(conn, bytes(p.head))
                regular_free = admitted
            if not admitted:
                continue
            del self._pending[conn]
            self._waiting -= 1
            if p.health:
                self.server.health_reserved += 1
            conn.setblocking(True)
            try:
                self.server.start(conn, p.addr)
            except Exception:
                log.exception("could not start a handler for a connection beyond the cap")

    def _expire(self) -> None:
        now = time.monotonic()
        for conn, p in list(self._pending.items()):
            if p.deadline > now:
                continue
            if p.closing:
                self._drop(conn)
            else:
                self._refuse(conn)

    def _refuse(self, conn: socket.socket, linger: bool = True) -> None:
        """503 JSON with Retry-After, then close (after reading what the client still sends)."""
        p = self._pending[conn]
        self.server.note_refused()
        if p.ready:
            self._waiting -= 1
            p.ready = False
        try:
            conn.send(BUSY_RESPONSE)  # a few hundred bytes: an empty socket buffer takes them whole
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            linger = False
        if not linger:
            self._drop(conn)
            return
        p.closing, p.deadline = True, time.monotonic() + OVERFLOW_LINGER_S
        if not p.watched:
            self._selector.register(conn, selectors.EVENT_READ)
            p.watched = True

    def _drop(self, conn: socket.socket) -> None:
        p = self._pending.pop(conn, None)
        if p is not None:
            if p.watched:
                self._selector.unregister(conn)
            if p.ready:
                self._waiting -= 1
        conn.close()

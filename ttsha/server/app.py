"""The WSGI application of ``ttsha serve`` (werkzeug, no framework).

Routes::

    POST /v1/synthesize         JSON {text, voice?, emotion?, speed?, format?, stream?, timestamps?, ssml?}
    GET  /v1/synthesize?text=…  the same, for curl
    POST /v1/audio/speech       OpenAI-compatible {model, input, voice, response_format, speed?} (openai_api)
    GET  /v1/models             OpenAI-compatible model list
    GET  /v1/audio/voices       voice names the OpenAI-compatible route accepts
    GET  /v1/audio/<id>.<fmt>   a stored result as wav, pcm, mp3, opus or flac, or its srt/vtt subtitles (formats)
    GET  /v1/voices             engine, voices, emotions
    GET  /health                readiness, from memory
    GET  /metrics               Prometheus text format
    GET  /                      a minimal web page

Every error is JSON: ``{"error": code, "message": text}`` with its 4xx/5xx; on the
OpenAI-compatible routes in OpenAI's shape, ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, RequestRedirect, Rule
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import FileWrapper

from ..config import OpenAIConfig
from ..errors import EngineError, InputError, StoreError
from ..protocol import ARRIVAL_HEADER, GATEWAY_HEADER, request_arrival
from . import formats, openai_api
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .page import PAGE
from .pool import Overloaded
from .service import Service, SynthRequest

log = logging.getLogger(__name__)

#: Retry-After of a failed store write: the monitor takes the node out within seconds.
STORE_RETRY_AFTER_S = 5
#: Stored audio goes out in blocks this large: werkzeug's 8 KiB default costs
#: a 200 KB cache hit about 25 socket writes and a millisecond.
FILE_BLOCK_BYTES = 256 * 1024
#: Keys ttsha's own route accepts in a JSON body (others are refused: a
#: misspelt or unsupported option must not be silently ignored).
SYNTHESIZE_KEYS = frozenset({"text", "voice", "emotion", "speed", "format", "stream", "timestamps", "ssml"})
#: Query keys each route of ttsha's own API accepts, by endpoint and method;
#: others answer 400 naming them, as unknown JSON keys do. Routes not listed
#: (the OpenAI-compatible one, /health, /metrics, the page) ignore the query:
#: OpenAI clients, load balancers and browsers add keys of their own.
QUERY_KEYS = {
    ("synthesize", "GET"): SYNTHESIZE_KEYS | {"return"},
    ("synthesize", "POST"): frozenset({"stream", "return", "timestamps"}),
    ("voices", "GET"): frozenset(),
    ("audio", "GET"): frozenset(),
}


class ApiError(HTTPException):
    """An HTTP error with a JSON body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description=message)
        self.code = status
        self.error = code
        self.extra_headers = headers or {}

    def get_response(self, environ=None, scope=None) -> Response:
        body = json.dumps({"error": self.error, "message": self.description}, ensure_ascii=False)
        return Response(body, status=self.code, mimetype="application/json", headers=self.extra_headers)


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json")


class App:
    """``create_app(service)`` returns one; call it as a WSGI application."""

    def __init__(self, service: Service, openai: OpenAIConfig | None = None) -> None:
        self.service = service
        #: [openai]: voice names and models of the OpenAI-compatible route (SIGHUP replaces it).
        self.openai = openai or OpenAIConfig()
        self.encoded = formats.EncodedCache(service.serve.encoded_cache)
        self.url_map = Map(
            [
                Rule("/", endpoint="page", methods=["GET"]),
                Rule("/health", endpoint="health", methods=["GET"]),
                Rule("/metrics", endpoint="metrics", methods=["GET"]),
                Rule("/v1/voices", endpoint="voices", methods=["GET"]),
                Rule("/v1/synthesize", endpoint="synthesize", methods=["GET", "POST"]),
                Rule("/v1/audio/speech", endpoint="openai_speech", methods=["POST"]),
                Rule("/v1/models", endpoint="openai_models", methods=["GET"]),
                Rule("/v1/models/<model>", endpoint="openai_model", methods=["GET"]),
                Rule("/v1/audio/voices", endpoint="openai_voices", methods=["GET"]),
                Rule("/v1/audio/<rid>.<fmt>", endpoint="audio", methods=["GET"]),
            ],
            strict_slashes=False,
        )
        self._active = 0
        self._active_lock = threading.Lock()
        self._idle = threading.Condition(self._active_lock)

    # -- WSGI ------------------------------------------------------------
    def __call__(self, environ, start_response):
        self._enter()  # counted from arrival: a drain waits for requests mid-synthesis too
        environ["wsgi.file_wrapper"] = _wide_file_wrapper
        try:
            body = self._respond(environ)(environ, start_response)
        except BaseException:
            self._leave()
            raise
        return _Tracked(body, self._leave)

    def _respond(self, environ) -> Response:
        request = Request(environ)
        request.max_content_length = self.service.serve.max_body_bytes
        adapter = self.url_map.bind_to_environ(environ)
        route = "unknown"
        try:
            endpoint, args = adapter.match()
            route = endpoint
            _check_query(request, endpoint)
            response = getattr(self, f"on_{endpoint}")(request, **args)
        except ApiError as exc:
            response = exc.get_response()
        except InputError as exc:
            response = ApiError(400, exc.code, exc.message).get_response()
        except RequestRedirect as exc:  # //v1//voices and the like: JSON, with the Location
            response = ApiError(exc.code, "moved", f"see {exc.new_url}", {"Location": exc.new_url}).get_response()
        except HTTPException as exc:
            response = ApiError(exc.code or 500, _slug(exc.name), exc.description or exc.name).get_response()
            if exc.code == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
                response.headers["Allow"] = ", ".join(exc.valid_methods)
        except Exception:
            log.exception("unhandled error on %s", request.path)
            response = ApiError(500, "internal_error", "internal error; see the server log").get_response()
        if route.startswith("openai_") and response.status_code >= 400 and response.mimetype == "application/json":
            body = openai_api.error_body(json.loads(response.get_data()), response.status_code)
            response.set_data(json.dumps(body, ensure_ascii=False))
        self.service.metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    def _enter(self) -> None:
        with self._active_lock:
            self._active += 1

    def _leave(self) -> None:
        with self._active_lock:
            self._active -= 1
            if self._active == 0:
                self._idle.notify_all()

    @property
    def active_requests(self) -> int:
        with self._active_lock:
            return self._active

    def wait_idle(self, timeout: float) -> bool:
        """Block until no response is being sent (drain on SIGTERM)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    # -- routes ----------------------------------------------------------
    def on_page(self, request: Request) -> Response:
        return Response(PAGE, mimetype="text/html")

    def on_health(self, request: Request) -> Response:
        verdict = self.service.roles.verify(request.headers)
        if verdict.claim is not None:
            self.service.note_role(verdict.claim)
        # Internals (pid, replicator errors) only for the monitor (a signed
        # probe) and direct loopback callers (the replicator, an operator);
        # the gateway marks what it proxies, and clients cannot remove that.
        local = _loopback(request.remote_addr) or request.remote_addr == request.environ.get("SERVER_NAME")
        details = verdict.authenticated or (local and GATEWAY_HEADER not in request.headers)
        status, body = self.service.health(details=details)
        return _json(body, status)

    def on_metrics(self, request: Request) -> Response:
        if GATEWAY_HEADER in request.headers:  # internals: Prometheus scrapes each node directly
            raise ApiError(403, "forbidden", "/metrics is served on the node itself, not through the gateway")
        self.service._update_gauges()
        return Response(self.service.metrics.render(), content_type=METRICS_CONTENT_TYPE)

    def on_voices(self, request: Request) -> Response:
        info = self._ready_engine()
        return _json(
            {
                "engine": info.engine,
                "model_id": info.model_id,
                "model_version": info.model_version,
                "sample_rate": info.sample_rate,
                "default_voice": info.default_voice,
                "voices": list(info.voices),
                "emotions": list(info.emotions),
                # What requests may ask for (the web page offers exactly this).
                "speed_range": list(self.service.engine.speed_range),
                "max_chars": self.service.serve.max_chars,
                "formats": list(formats.FORMATS),
            }
        )

    def on_synthesize(self, request: Request) -> Response:
        if request.method in ("GET", "HEAD"):
            data: dict[str, Any] = dict(request.args)
            if "speed" in data:
                data["speed"] = _number(data["speed"], "speed")
            data["stream"] = _query_flag(request, "stream")
            data["timestamps"] = _query_flag(request, "timestamps")
            data["ssml"] = _query_flag(request, "ssml")
        else:
            data = self._json_body(request)
            unknown = sorted(set(data) - SYNTHESIZE_KEYS)
            if unknown:
                raise ApiError(400, "unknown_keys", f"unknown keys: {', '.join(unknown)}; "
                               f"accepted: {', '.join(sorted(SYNTHESIZE_KEYS))}")
            if _query_flag(request, "stream"):
                data["stream"] = True
            if _query_flag(request, "timestamps"):
                data["timestamps"] = True
        fmt = formats.choose(data.get("format"), "format", "wav", subtitles=True)
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "bad_stream", "stream must be true or false")
        timestamps, ssml = data.get("timestamps", False), data.get("ssml", False)
        for name, flag in (("timestamps", timestamps), ("ssml", ssml)):
            if not isinstance(flag, bool):
                raise ApiError(400, f"bad_{name}", f"{name} must be true or false")
        req = self._validate(data.get("text"), data.get("voice"), data.get("emotion"), data.get("speed"), ssml)
        wants_json = request.args.get("return") == "json" or (
            request.accept_mimetypes.best_match(["audio/wav", "application/json"]) == "application/json"
            and "application/json" in request.headers.get("Accept", "")
        )
        subtitles = fmt in formats.SUBTITLES
        if stream and not wants_json and not subtitles:  # subtitles need the whole synthesis
            return self._stream(request, req, fmt)
        stored, cached = self._result(request, req, timing=timestamps or subtitles)
        if subtitles and not wants_json:
            response = formats.subtitle_response(stored, fmt)
            response.headers.update({"X-Audio-Id": stored.id, "X-Cache": "HIT" if cached else "MISS"})
            return response
        if wants_json:
            return _json(
                {
                    "id": stored.id,
                    "url": f"/v1/audio/{stored.id}.{fmt}",
                    "format": fmt,
                    "duration_s": stored.meta.get("duration_s"),
                    "sample_rate": stored.meta.get("sample_rate"),
                    "cached": cached,
                    "engine": stored.meta.get("engine"),
                    "voice": req.voice,
                    **(_timestamps(stored) if timestamps else {}),
                }
            )
        return self._audio_response(request, stored, fmt, cached)

    def on_openai_speech(self, request: Request) -> Response:
        info = self._ready_engine()
        speech = openai_api.parse_speech(self._json_body(request), self.openai, info, self.service.engine.speed_range)
        req = self._validate(speech.text, speech.voice, speech.emotion, speech.speed)
        if speech.stream:
            response = self._stream(request, req, speech.format, speech.rate)
        else:
            stored, cached = self._result(request, req)
            response = self._audio_response(request, stored, speech.format, cached, speech.rate)
        response.headers.update(openai_api.speech_headers(speech, req.voice))
        return response

    def on_openai_models(self, request: Request) -> Response:
        return _json(openai_api.models_body(self.openai, self._ready_engine()))

    def on_openai_model(self, request: Request, model: str) -> Response:
        if model not in self.openai.models:
            raise ApiError(404, "not_found", f"no model {model!r}; the models are {', '.join(self.openai.models)}")
        return _json(openai_api.model_body(model, self._ready_engine()))

    def on_openai_voices(self, request: Request) -> Response:
        return _json(openai_api.voices_body(self.openai, self._ready_engine()))

    def on_audio(self, request: Request, rid: str, fmt: str) -> Response:
        fmt = formats.choose(fmt, "the extension", "wav", subtitles=True)
        stored = self.service.store.get(rid)
        if stored is None:
            raise ApiError(404, "not_found", f"no audio with id {rid!r}")
        if fmt in formats.SUBTITLES:
            try:
                return formats.subtitle_response(stored, fmt)
            except InputError as exc:
                raise ApiError(404, exc.code, exc.message) from None
        return self._audio_response(request, stored, fmt, cached=True)

    @staticmethod
    def _gone(stored) -> ApiError:
        # `ttsha gc` (or a retention sweep) removed it between lookup and open.
        return ApiError(404, "not_found", f"audio {stored.id!r} was removed; request it again")

    # -- helpers ---------------------------------------------------------
    def _ready_engine(self):
        if self.service.readiness.status in ("starting", "failed"):
            raise ApiError(503, "starting", "the model is still loading", {"Retry-After": "5"})
        return self.service.engine.info

    def _json_body(self, request: Request) -> dict[str, Any]:
        limit = self.service.serve.max_body_bytes
        if request.environ.get("wsgi.input_terminated"):
            raw = _read_capped(request.environ["wsgi.input"], limit)  # chunked: no Content-Length to check
        else:
            raw = request.get_data(cache=False)  # RequestEntityTooLarge past max_body_bytes
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_utf8", "the request body is not UTF-8") from None
        try:
            data = json.loads(text)
            # JSON may escape lone surrogates (\ud800) that no UTF-8 text can hold.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, "invalid_unicode", "the request body holds a lone surrogate (\\udXXX)") from None
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, "invalid_json", f"the request body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "the request body must be a JSON object")
        return data

    def _validate(self, text: Any, voice: Any, emotion: Any, speed: Any, ssml: bool = False) -> SynthRequest:
        self._ready_engine()
        try:
            return self.service.validate(text, voice, emotion, speed, ssml)
        except InputError as exc:
            raise ApiError(400, exc.code, exc.message) from None

    def _arrival(self, request: Request) -> float:
        """When the gateway received ``request`` (its queue position; see ttsha.protocol)."""
        return request_arrival(request.headers.get(ARRIVAL_HEADER), time.time(), self.service.serve.deadline)

    def _result(self, request: Request, req: SynthRequest, timing: bool = False):
        try:
            return self.service.synthesize(req, self._arrival(request), timing=timing)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after)}) from None
        except InputError as exc:
            raise ApiError(400, exc.code, exc.message) from None
        except StoreError as exc:
            # 503, not 500: the gateway retries it on the other node (proxy_next_upstream http_503).
            raise ApiError(503, "store_unavailable", exc.message, {"Retry-After": str(STORE_RETRY_AFTER_S)}) from None
        except EngineError as exc:
            raise ApiError(500, "engine_error", exc.message) from None

    def _stream(self, request: Request, req: SynthRequest, fmt: str, rate: int | None = None) -> Response:
        found = self.service.lookup(req)
        if found is not None:
            return self._audio_response(request, found, fmt, cached=True, rate=rate)
        try:
            pieces = self.service.stream(req, self._arrival(request))
        except Overloaded as exc:
            raise ApiError(503, "overloaded", str(exc), {"Retry-After": str(exc.retry_after)}) from None
        response = formats.stream_response(pieces, fmt, self.service.engine.info.sample_rate, rate)
        response.headers.update({"X-Audio-Id": req.id, "X-Cache": "MISS"})
        return response

    def _audio_response(self, request: Request, stored, fmt: str, cached: bool, rate: int | None = None) -> Response:
        self.encoded.limit = self.service.serve.encoded_cache  # SIGHUP may have changed it
        try:
            response = formats.stored_response(request, stored, fmt, self.encoded, rate)
        except FileNotFoundError:
            raise self._gone(stored) from None
        response.headers.update({"X-Audio-Id": stored.id, "X-Cache": "HIT" if cached else "MISS"})
        return response


class _Tracked:
    """Wraps a response body so the app knows when it has been sent."""

    def __init__(self, body, done) -> None:
        self._body = body
        self._done = done
        self._closed = False

    def __iter__(self):
        return iter(self._body)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if hasattr(self._body, "close"):
                self._body.close()
        finally:
            self._done()


def _wide_file_wrapper(file, buffer_size: int = FILE_BLOCK_BYTES) -> FileWrapper:
    return FileWrapper(file, max(buffer_size, FILE_BLOCK_BYTES))


def _timestamps(stored) -> dict[str, Any]:
    """The JSON answer's per-character timestamps, or why there are none."""
    timeline = formats.timeline(stored)
    if timeline is None:
        return {"timestamps": None, "timestamps_unavailable": "stored without timing"}
    marks = timeline.timestamps()
    if marks is None:
        return {"timestamps": None, "timestamps_unavailable": timeline.unavailable or "no timing"}
    # Offsets count characters of this text (the request's, NFKC and whitespace collapsed).
    return {"text": timeline.text, "timestamps": marks}


def _number(value: str, name: str) -> float:
    import math

    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ApiError(400, f"bad_{name}", f"{name} must be a number, got {value!r}")
    return number


def _check_query(request: Request, endpoint: str) -> None:
    """400 naming the query keys ``endpoint`` does not know (see :data:`QUERY_KEYS`)."""
    method = "GET" if request.method == "HEAD" else request.method
    accepted = QUERY_KEYS.get((endpoint, method))
    if accepted is None:
        return
    try:
        # werkzeug keeps an escape that is not UTF-8 as its literal text ("%FF"), which would be spoken.
        unquote_to_bytes(request.query_string.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_utf8", "the query string is not UTF-8 once %-decoded") from None
    unknown = sorted(set(request.args) - accepted)
    if unknown:
        raise ApiError(400, "unknown_keys", f"unknown query keys: {', '.join(unknown)}; "
                       f"accepted: {', '.join(sorted(accepted)) or 'none'}")


def _query_flag(request: Request, name: str) -> bool:
    """A true/false query value (absent: false); 400 for anything else."""
    value = request.args.get(name, "").lower()
    if value not in ("", "1", "true", "yes", "0", "false", "no"):
        raise ApiError(400, f"bad_{name}", f"{name} must be 1/true/yes or 0/false/no, got {value!r}")
    return value in ("1", "true", "yes")


def _read_capped(stream, limit: int) -> bytes:
    """A chunked body, or 413 once it passes ``limit`` (never truncated)."""
    parts: list[bytes] = []
    size = 0
    while True:
        block = stream.read(min(65536, limit + 1 - size))
        if not block:
            return b"".join(parts)
        parts.append(block)
        size += len(block)
        if size > limit:
            raise ApiError(413, "request_entity_too_large", f"the request body is larger than {limit} bytes")


def _loopback(address: str | None) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def _slug(name: str) -> str:
    return name.lower().replace(" ", "_")


def create_app(service: Service, openai: OpenAIConfig | None = None) -> App:
    """The WSGI app for ``service`` (tests drive it in-process or on a real socket)."""
    return App(service, openai)

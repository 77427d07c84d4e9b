"""Audio formats on the HTTP routes: choosing one, answering a stored result in it, streaming.

The store holds one WAV per result (its id does not depend on the format),
so a request for the same audio in another format is encoded from the stored
file, never synthesized again. WAV goes out as the stored file (``Range``,
``ETag``); PCM is the stored samples (``Range`` too, being exact). MP3, Opus
and FLAC are encoded per request; the encoded bytes of recent results are
kept in memory (``[serve] encoded_cache``). Those are not offered with
``Range``: a lossy encoder need not give the same bytes on the other node,
and a range resumed there must continue the same file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from ..audio import FORMATS, Encoder, encode, media_type, output_rate, read_wav
from ..engine.timing import Timeline, srt, vtt
from ..errors import InputError
from ..store import StoredResult

#: Formats whose bytes are exactly the stored ones (so ``Range`` and a strong ``ETag`` hold across nodes).
EXACT = ("wav", "pcm")
#: Stored audio goes out with this max-age: a result id never names other audio.
MAX_AGE_S = 86400


#: Subtitle formats of ttsha's own route: the text's cues (one per sentence or clause) timed in the audio.
SUBTITLES = {"srt": "application/x-subrip; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}


def choose(value: Any, key: str, default: str, subtitles: bool = False) -> str:
    """The format a request names under ``key`` (``default`` when absent); 400 otherwise.

    With ``subtitles``, ``srt`` and ``vtt`` are accepted too.
    """
    if value is None:
        return default
    accepted = [*FORMATS, *(SUBTITLES if subtitles else ())]
    if not isinstance(value, str) or value not in accepted:
        raise InputError(f"{key} must be one of {', '.join(accepted)}, got {str(value)[:40]!r}", code="bad_format")
    return value


def timeline(stored: StoredResult) -> Timeline | None:
    """The timing a stored result's sidecar holds (None for results stored without it)."""
    return Timeline.from_json(stored.meta.get("timing"), str(stored.meta.get("text", "")))


def subtitle_response(stored: StoredResult, fmt: str) -> Response:
    """The stored result's cues as SubRip or WebVTT (a result stored without timing has none: 404)."""
    found = timeline(stored)
    if found is None:
        raise InputError(f"audio {stored.id} was stored without timing; synthesize it again for subtitles",
                         code="no_timing")
    body = srt(found) if fmt == "srt" else vtt(found)
    response = Response(body.encode("utf-8"), content_type=SUBTITLES[fmt])
    response.cache_control.max_age = MAX_AGE_S
    return response


class EncodedCache:
    """Encoded results by (id, format, rate), least recently used dropped past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[str, str, int], data: bytes) -> None:
        with self._lock:
            if key in self._items or len(data) > self.limit:
                return
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.limit:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


def encoded(stored: StoredResult, fmt: str, cache: EncodedCache, rate: int | None = None) -> tuple[bytes, int]:
    """The stored result as ``fmt`` (at ``rate``, default its own) and the rate it is at.

    Raises FileNotFoundError when the result was removed meanwhile.
    """
    meta_rate = int(stored.meta.get("sample_rate") or 0)
    if fmt not in EXACT and meta_rate:
        key = (stored.id, fmt, output_rate(fmt, rate or meta_rate))
        data = cache.get(key)
        if data is not None:
            return data, key[2]
    with open(stored.path, "rb") as f:
        pcm, native = read_wav(f.read())
    out_rate = output_rate(fmt, rate or native)
    data = encode(pcm, native, fmt, rate=out_rate)
    if fmt not in EXACT:
        cache.put((stored.id, fmt, out_rate), data)
    return data, out_rate


def stored_response(request: Request, stored: StoredResult, fmt: str, cache: EncodedCache,
                    rate: int | None = None) -> Response:
    """A stored result in ``fmt``. Raises FileNotFoundError when it was removed meanwhile."""
    native = int(stored.meta.get("sample_rate") or 0)
    if fmt == "wav" and rate in (None, native):
        # Once open, a removal cannot hurt: the open file is sent whole.
        response = send_file(stored.path, request.environ, mimetype=media_type("wav", native),
                             conditional=True, etag=stored.id, max_age=MAX_AGE_S)
        response.headers["X-Sample-Rate"] = str(native)
        return response
    data, out_rate = encoded(stored, fmt, cache, rate)
    response = Response(data, content_type=media_type(fmt, out_rate))
    response.headers["X-Sample-Rate"] = str(out_rate)
    response.cache_control.max_age = MAX_AGE_S
    if fmt in EXACT:
        response.set_etag(f"{stored.id}.{fmt}.{out_rate}")
        response.make_conditional(request, accept_ranges=True, complete_length=len(data))
    else:
        response.headers["Accept-Ranges"] = "none"
    return response


def stream_response(pieces: Iterator[bytes], fmt: str, sample_rate: int, rate: int | None = None) -> Response:
    """A response that sends ``pieces`` (PCM16 at ``sample_rate``) encoded as ``fmt`` as they come.

    An exception from ``pieces`` propagates, so the server closes the
    connection without the terminating chunk: a broken stream never looks complete.
    """
    encoder = Encoder(fmt, sample_rate, stream=True, rate=rate)

    def body() -> Iterator[bytes]:
        head = encoder.start()
        if head:
            yield head
        for pcm in pieces:
            out = encoder.feed(pcm)
            if out:
                yield out
        tail = encoder.finish()
        if tail:
            yield tail

    response = Response(body(), content_type=media_type(fmt, encoder.rate), direct_passthrough=True)
    # Nginx buffers responses (see ttsha.nginx); a stream must pass through as it is made.
    response.headers.update({"X-Sample-Rate": str(encoder.rate), "X-Accel-Buffering": "no"})
    return response

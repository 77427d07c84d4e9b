"""The OpenAI-compatible routes: what a request to them means, and their listings.

``POST /v1/audio/speech`` takes OpenAI's body and follows OpenAI's defaults:
``response_format`` mp3, ``speed`` 0.25-4.0 (clamped to what the engine can
do; the value applied is in ``X-Speed-Applied``), ``pcm`` at 24 kHz. Voice
names go through ``[openai] voices``; the engine's own names work as they
are. ``stream_format: "audio"`` (or ttsha's ``stream: true``) sends the
audio sentence by sentence; ``"sse"`` is not offered. ``GET /v1/models``
and ``GET /v1/audio/voices`` list what is accepted.

Everything here is pure: the app reads the body and answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import OpenAIConfig
from ..engine import EngineInfo
from ..errors import InputError
from . import formats

#: Keys of OpenAI's request body we act on, and ttsha's own (emotion, stream).
SPEECH_KEYS = frozenset({"model", "input", "voice", "response_format", "speed", "stream_format", "emotion", "stream"})
#: Keys OpenAI's clients send that no engine here can follow: accepted, and
#: named in ``X-Ignored`` so the caller can tell. Any other key is a 400.
IGNORED_KEYS = frozenset({"instructions"})
#: OpenAI's bounds for ``speed``; within them the engine's own range applies.
SPEED_RANGE = (0.25, 4.0)
#: OpenAI's raw PCM is 24 kHz, 16-bit little-endian; clients play it as such.
PCM_RATE = 24000
DEFAULT_FORMAT = "mp3"


@dataclass(frozen=True)
class Speech:
    """A request to ``/v1/audio/speech``, checked and mapped to the engine's terms."""

    text: Any  # checked by Service.validate, as on ttsha's own route
    voice: str | None
    emotion: Any
    speed: float
    speed_requested: float
    format: str
    stream: bool
    #: Resample to this rate (None: the engine's).
    rate: int | None
    #: Keys given that are not acted on (IGNORED_KEYS).
    ignored: tuple[str, ...] = ()


def accepted_voices(config: OpenAIConfig, info: EngineInfo) -> dict[str, str]:
    """Every voice name the route takes, with the engine voice it means."""
    names = {name: target or info.default_voice for name, target in config.voices.items()}
    names.update({voice: voice for voice in info.voices})
    return names


def parse_speech(data: dict[str, Any], config: OpenAIConfig, info: EngineInfo,
                 speed_range: tuple[float, float]) -> Speech:
    """The meaning of an OpenAI speech request; :class:`InputError` (a 400) when it has none."""
    unknown = sorted(set(data) - SPEECH_KEYS - IGNORED_KEYS)
    if unknown:
        raise InputError(f"unknown keys: {', '.join(unknown)}; accepted: {', '.join(sorted(SPEECH_KEYS))}",
                         code="unknown_keys")
    model = data.get("model")
    if model is not None and model not in config.models:
        raise InputError(f"unknown model {str(model)[:40]!r}; choose from {', '.join(config.models)}",
                         code="unknown_model")
    fmt = formats.choose(data.get("response_format"), "response_format", DEFAULT_FORMAT)
    voice = data.get("voice")
    if voice is not None:
        if not isinstance(voice, str):
            raise InputError("voice must be a string", code="bad_voice")
        names = accepted_voices(config, info)
        if voice not in names:
            raise InputError(f"unknown voice {voice[:40]!r}; choose from {', '.join(names)}", code="unknown_voice")
        voice = names[voice]
    requested, applied = _speed(data.get("speed"), speed_range)
    stream_format = data.get("stream_format")
    if stream_format not in (None, "audio"):
        raise InputError(f"stream_format must be 'audio' (server-sent events are not offered), got "
                         f"{str(stream_format)[:40]!r}", code="bad_stream_format")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise InputError("stream must be true or false", code="bad_stream")
    return Speech(text=data.get("input"), voice=voice, emotion=data.get("emotion"), speed=applied,
                  speed_requested=requested, format=fmt, stream=stream or stream_format == "audio",
                  rate=PCM_RATE if fmt == "pcm" else None, ignored=tuple(sorted(set(data) & IGNORED_KEYS)))


def _speed(value: Any, engine: tuple[float, float]) -> tuple[float, float]:
    """(requested, applied): OpenAI's range is checked, the engine's is a clamp."""
    if value is None:
        return 1.0, min(max(1.0, engine[0]), engine[1])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"speed must be a number, got {str(value)[:40]!r}", code="bad_speed")
    low, high = SPEED_RANGE
    if not low <= value <= high:
        raise InputError(f"speed must be between {low} and {high}, got {value}", code="bad_speed")
    return float(value), min(max(float(value), engine[0]), engine[1])


def speech_headers(speech: Speech, voice: str) -> dict[str, str]:
    """What was done with the request, where it differs from what was asked."""
    headers = {"X-Speed-Requested": f"{speech.speed_requested:g}", "X-Speed-Applied": f"{speech.speed:g}",
               "X-Voice": voice}
    if speech.ignored:
        headers["X-Ignored"] = ", ".join(speech.ignored)
    return headers


def error_body(body: dict[str, Any], status: int) -> dict[str, Any]:
    """ttsha's error ``{"error": code, "message": …}`` in OpenAI's shape: its clients
    show ``error.message`` and nothing else."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": body.get("message", ""), "type": kind, "param": None, "code": body.get("error")}}


def models_body(config: OpenAIConfig, info: EngineInfo) -> dict[str, Any]:
    """``GET /v1/models`` in OpenAI's shape."""
    return {"object": "list", "data": [model_body(name, info) for name in config.models]}


def model_body(name: str, info: EngineInfo) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": f"ttsha ({info.engine} {info.model_version})"}


def voices_body(config: OpenAIConfig, info: EngineInfo) -> dict[str, Any]:
    """``GET /v1/audio/voices``: every accepted name and the engine voice it means."""
    names = accepted_voices(config, info)
    return {
        "voices": list(names),
        "mapping": names,
        "default_voice": info.default_voice,
        "emotions": list(info.emotions),
        "formats": list(formats.FORMATS),
    }

"""The OpenAI-compatible routes, driven by the official ``openai`` client against a real ``ttsha serve``."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from ttsha import config
from ttsha.config import OpenAIConfig
from ttsha.engine import EngineInfo
from ttsha.errors import ConfigError, InputError
from ttsha.server import openai_api

from ..test_audio import decode
from .test_daemon import free_port

EXE = Path(sys.executable).with_name("ttsha")
#: Different texts per case, so each streamed request is a new synthesis (a stored one is sent whole).
TEXTS = ["春天来了。花开了。", "今天下雨。记得带伞。", "我们去公园。然后回家。", "他在读书。她在写字。",
         "山很高。水很清。", "早上好。晚安。", "火车到站了。请下车。", "猫在睡觉。狗在玩。",
         "天空很蓝。云很白。", "欢迎光临。请慢用。", "明天见。一路顺风。", "风很大。树在摇。"]
FORMATS = ["wav", "pcm", "mp3", "opus", "flac"]
#: Encoder delay and padding a streamed MP3 may add without its LAME tag.
MP3_SLACK_S = 0.15


class Serve:
    """``ttsha serve`` with the embedded engine on a loopback port, its log in a file."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        cfg = tmp / "ttsha.toml"
        cfg.write_text(
            f'[serve]\nport = {self.port}\ncanary_interval = "1h"\n'
            f'[store]\npath = "{tmp}/audio"\n'
            '[openai]\nvoices = { alloy = "baker", nova = "" }\nmodels = ["tts-1", "gpt-4o-mini-tts"]\n'
        )
        self.log = (tmp / "serve.log").open("w")
        self.proc = subprocess.Popen([str(EXE), "--config", str(cfg), "serve"], stderr=self.log)
        deadline = time.monotonic() + 120
        while self.get("/health")[0] != 200:
            assert self.proc.poll() is None, (tmp / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve never became ready"
            time.sleep(0.2)
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="not-checked",
                                    max_retries=0, timeout=120)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""

    def stored_seconds(self, rid: str) -> float:
        status, wav = self.get(f"/v1/audio/{rid}.wav")
        assert status == 200
        samples, rate = decode(wav, "wav")
        return len(samples) / rate

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    node = Serve(tmp_path_factory.mktemp("openai"))
    yield node
    node.close()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_through_the_openai_client(serve, fmt, stream):
    text = TEXTS[FORMATS.index(fmt) * 2 + stream]
    speech = serve.client.audio.speech
    if stream:
        with speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text, response_format=fmt,
                                                   stream_format="audio") as resp:
            headers = resp.headers
            data = b"".join(resp.iter_bytes())
        # Sent as it was synthesized: chunked, no length known up front.
        assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
    else:
        raw = speech.with_raw_response.create(model="tts-1", voice="alloy", input=text, response_format=fmt)
        headers, data = raw.headers, raw.content
        assert int(headers["content-length"]) == len(data)
    assert headers["x-cache"] == "MISS" and headers["x-voice"] == "baker"
    samples, rate = decode(data, fmt, 24000)
    assert rate == 24000 and int(headers["x-sample-rate"]) == 24000
    if fmt == "pcm":
        assert headers["content-type"] == "audio/pcm;rate=24000"
    stored = serve.stored_seconds(headers["x-audio-id"])
    slack = MP3_SLACK_S if stream and fmt == "mp3" else 0.001
    assert stored > 1.0 and 0 <= len(samples) / rate - stored <= slack


def test_mp3_is_the_default_and_other_formats_come_from_the_store(serve):
    text = TEXTS[10]
    raw = serve.client.audio.speech.with_raw_response.create(model="gpt-4o-mini-tts", voice="nova", input=text)
    assert raw.headers["content-type"] == "audio/mpeg" and raw.headers["x-cache"] == "MISS"
    first = raw.headers["x-audio-id"]
    for fmt in ("flac", "opus", "wav"):
        raw = serve.client.audio.speech.with_raw_response.create(model="tts-1", voice="nova", input=text,
                                                                response_format=fmt)
        # The same id, answered from the store: encoded, not synthesized again.
        assert raw.headers["x-audio-id"] == first and raw.headers["x-cache"] == "HIT"


def test_speed_is_clamped_to_the_engine_and_said(serve):
    text = TEXTS[11]
    raw = serve.client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input=text,
                                                            response_format="wav", speed=4.0)
    assert raw.headers["x-speed-requested"] == "4" and raw.headers["x-speed-applied"] == "2"
    fast, rate = decode(raw.content, "wav")
    normal, _ = decode(serve.client.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                                        response_format="wav").content, "wav")
    assert 0.4 < len(fast) / len(normal) < 0.65
    with pytest.raises(openai.BadRequestError) as err:
        serve.client.audio.speech.create(model="tts-1", voice="alloy", input=text, speed=4.5)
    assert err.value.status_code == 400 and err.value.code == "bad_speed"


@pytest.mark.parametrize(
    "kwargs, code, names",
    [
        ({"response_format": "aac"}, "bad_format", "wav, pcm, mp3, opus, flac"),
        ({"voice": "shimmer"}, "unknown_voice", "alloy, nova, baker"),
        ({"model": "tts-9"}, "unknown_model", "tts-1, gpt-4o-mini-tts"),
        ({"stream_format": "sse"}, "bad_stream_format", "'audio'"),
        ({"extra_body": {"pitch": 2}}, "unknown_keys", "pitch"),
    ],
)
def test_bad_requests_are_400_naming_what_is_allowed(serve, kwargs, code, names):
    args = {"model": "tts-1", "voice": "alloy", "input": "你好", **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        serve.client.audio.speech.create(**args)
    # Errors here take OpenAI's shape, so the client shows the reason.
    assert err.value.status_code == 400 and err.value.code == code and err.value.type == "invalid_request_error"
    assert names in str(err.value)


def test_instructions_are_accepted_and_said_to_be_ignored(serve):
    raw = serve.client.audio.speech.with_raw_response.create(model="gpt-4o-mini-tts", voice="alloy", input="你好",
                                                            instructions="speak softly", response_format="wav")
    assert raw.headers["x-ignored"] == "instructions" and raw.content[:4] == b"RIFF"


def test_models_and_voices(serve):
    assert [m.id for m in serve.client.models.list()] == ["tts-1", "gpt-4o-mini-tts"]
    assert serve.client.models.retrieve("tts-1").object == "model"
    with pytest.raises(openai.NotFoundError):
        serve.client.models.retrieve("tts-9")
    status, body = serve.get("/v1/audio/voices")
    voices = json.loads(body)
    assert status == 200 and voices["mapping"] == {"alloy": "baker", "nova": "baker", "baker": "baker"}
    assert voices["formats"] == FORMATS


# -- the pure parts ------------------------------------------------------------
INFO = EngineInfo("sambert", "m", "v1", 16000, ("zhitian_emo", "zhiyan_emo"), ("neutral",), "zhitian_emo")


def test_parse_speech_maps_voices_and_clamps_speed():
    cfg = OpenAIConfig(voices={"alloy": "zhiyan_emo", "echo": ""})
    speech = openai_api.parse_speech({"input": "你好", "voice": "alloy", "speed": 0.25}, cfg, INFO, (1.0, 1.0))
    assert (speech.voice, speech.speed, speech.speed_requested, speech.format) == ("zhiyan_emo", 1.0, 0.25, "mp3")
    assert openai_api.parse_speech({"voice": "echo"}, cfg, INFO, (0.5, 2.0)).voice == "zhitian_emo"
    assert openai_api.parse_speech({"voice": "zhiyan_emo", "response_format": "pcm"}, cfg, INFO,
                                   (0.5, 2.0)).rate == 24000
    for bad in ({"speed": True}, {"speed": "fast"}, {"speed": 0.2}, {"voice": 3}, {"stream": "yes"}):
        with pytest.raises(InputError):
            openai_api.parse_speech(bad, cfg, INFO, (0.5, 2.0))


def test_a_voice_the_engine_lacks_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"openai\.voices\.nova: 'nobody' is not a voice of engine embedded"):
        config.parse({"openai": {"voices": {"alloy": "baker", "nova": "nobody"}}})
    # Sambert's voices are known without loading it (and its configured default joins them).
    config.parse({"engine": {"engine": "sambert", "voice": "custom"},
                  "openai": {"voices": {"alloy": "zhibei_emo", "nova": "custom"}}})
    with pytest.raises(ConfigError, match=r"openai\.voices: expected a table of strings"):
        config.parse({"openai": {"voices": {"alloy": 3}}})
    with pytest.raises(ConfigError, match=r"openai\.models: at least one name"):
        config.parse({"openai": {"models": []}})
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[openai]\nvoices = { alloy = "nobody" }\n')
    proc = subprocess.run([str(EXE), "--config", str(cfg), "config", "check"], capture_output=True, text=True)
    assert proc.returncode != 0 and "openai.voices.alloy" in proc.stderr

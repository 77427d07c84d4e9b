from __future__ import annotations

import http.client
import json
import threading

import pytest

from ttsha.audio import FORMATS
from ttsha.server.formats import EncodedCache

from ..test_audio import decode

TEXT = "第一句。第二句。"
#: FakeEngine: 0.25 s per character at 16 kHz, plus the pause after each sentence.
RATE = 16000


def seconds(samples) -> float:
    return len(samples) / RATE


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_every_format_on_ttsha_route(fake_node, fmt, stream):
    resp, data = fake_node.client.synth({"stream": "1"} if stream else None, text=TEXT, format=fmt)
    assert resp.status == 200, data
    assert resp.getheader("X-Cache") == "MISS"
    assert (resp.getheader("Transfer-Encoding") == "chunked") == stream
    samples, rate = decode(data, fmt, int(resp.getheader("X-Sample-Rate")))
    assert rate == RATE
    # The stored WAV is the reference: every format says the same length.
    resp, wav = fake_node.client.request("GET", f"/v1/audio/{resp.getheader('X-Audio-Id')}.wav")
    reference, _ = decode(wav, "wav")
    slack = 0.15 if stream and fmt == "mp3" else 0.001
    assert seconds(reference) >= 1.5 and 0 <= seconds(samples) - seconds(reference) <= slack


def test_another_format_of_stored_audio_is_encoded_not_synthesized(fake_node, fake_engine):
    resp, wav = fake_node.client.synth(text=TEXT)
    calls = fake_engine.calls
    rid = resp.getheader("X-Audio-Id")
    for fmt in FORMATS:
        for stream in (None, {"stream": "1"}):
            resp, data = fake_node.client.synth(stream, text=TEXT, format=fmt)
            assert resp.status == 200 and resp.getheader("X-Cache") == "HIT", fmt
            assert resp.getheader("X-Audio-Id") == rid
            assert resp.getheader("Content-Type") == FORMATS[fmt].media_type + (";rate=16000" if fmt == "pcm" else "")
        resp, data = fake_node.client.request("GET", f"/v1/audio/{rid}.{fmt}")
        assert resp.status == 200 and len(decode(data, fmt, RATE)[0]) == len(decode(wav, "wav")[0])
    assert fake_engine.calls == calls
    assert len(list(fake_node.service.store.root.glob("*/*"))) == 2  # one WAV and its sidecar, no more


def test_json_result_names_the_format_url(fake_node):
    resp, data = fake_node.client.synth({"return": "json"}, text=TEXT, format="opus")
    result = json.loads(data)
    assert result["format"] == "opus" and result["url"] == f"/v1/audio/{result['id']}.opus"
    resp, opus = fake_node.client.request("GET", result["url"])
    assert resp.status == 200 and opus[:4] == b"OggS" and resp.getheader("Accept-Ranges") == "none"


def test_get_route_takes_format(fake_node):
    resp, data = fake_node.client.request("GET", "/v1/synthesize?text=%E4%BD%A0%E5%A5%BD&format=flac")
    assert resp.status == 200 and data[:4] == b"fLaC"


def test_pcm_of_a_stored_result_supports_range(fake_node):
    resp, wav = fake_node.client.synth(text=TEXT)
    url = f"/v1/audio/{resp.getheader('X-Audio-Id')}.pcm"
    resp, part = fake_node.client.request("GET", url, headers={"Range": "bytes=100-199"})
    assert resp.status == 206 and part == wav[44 + 100:44 + 200]
    assert resp.getheader("Content-Range") == f"bytes 100-199/{len(wav) - 44}"


def test_an_unknown_extension_is_a_400_naming_the_formats(fake_node):
    resp, _ = fake_node.client.synth(text=TEXT)
    resp, data = fake_node.client.request("GET", f"/v1/audio/{resp.getheader('X-Audio-Id')}.aac")
    error = json.loads(data)
    assert resp.status == 400 and error["error"] == "bad_format"
    assert "wav, pcm, mp3, opus, flac" in error["message"]


def test_encoded_results_are_kept_once_and_bounded(fake_node):
    resp, _ = fake_node.client.synth(text=TEXT)
    url = f"/v1/audio/{resp.getheader('X-Audio-Id')}.opus"
    # Opus in Ogg has a random stream serial: equal bytes mean the second came from the cache.
    assert fake_node.client.request("GET", url)[1] == fake_node.client.request("GET", url)[1]
    cache = EncodedCache(limit=10)
    cache.put(("a", "mp3", 1), b"123456")
    cache.put(("b", "mp3", 1), b"123456")  # over the limit: the least recently used goes
    assert cache.get(("a", "mp3", 1)) is None and cache.get(("b", "mp3", 1)) == b"123456"
    cache.put(("c", "mp3", 1), b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get(("c", "mp3", 1)) is None and cache.get(("b", "mp3", 1)) == b"123456"


def test_streamed_mp3_sends_audio_before_the_synthesis_ends(make_node, fake_engine):
    node = make_node(fake_engine)
    fake_engine.permits = threading.Semaphore(1)  # only the first sentence may be synthesized
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    conn.request("POST", "/v1/synthesize?stream=1", body=json.dumps({"text": TEXT, "format": "mp3"}).encode(),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.read1(65536)  # arrives while the second sentence is held back
    assert resp.status == 200 and first[:2] == b"\xff\xf3"
    assert node.service.store.get(resp.getheader("X-Audio-Id")) is None  # not finished yet
    fake_engine.permits.release()
    rest = resp.read()
    conn.close()
    samples, _ = decode(first + rest, "mp3")
    assert seconds(samples) >= 1.5

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from urllib.parse import quote

import pytest
import soundfile as sf

from ttsha.protocol import RoleVerifier

from ..packaging.test_monitoring import referenced_metrics
from .conftest import SECRET, RoleSigner


def body_json(data: bytes) -> dict:
    return json.loads(data.decode())


def test_synthesize_returns_wav(fake_node):
    resp, data = fake_node.client.synth(text="你好世界")
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "audio/wav"
    assert resp.getheader("X-Cache") == "MISS"
    samples, rate = sf.read(io.BytesIO(data))
    assert rate == 16000 and len(samples) == 4 * 4000


def test_real_engine_end_to_end(make_node, embedded_engine):
    node = make_node(embedded_engine)
    resp, data = node.client.synth(text="欢迎使用语音合成服务。", emotion="happy", speed=1.2)
    assert resp.status == 200, data
    samples, rate = sf.read(io.BytesIO(data))
    assert rate == 24000 and 0.8 < len(samples) / rate < 4


def test_json_result_then_fetch_head_and_range(fake_node):
    client = fake_node.client
    resp, data = client.synth({"return": "json"}, text="你好", voice="bob")
    assert resp.status == 200
    result = body_json(data)
    assert set(result) == {"id", "url", "format", "duration_s", "sample_rate", "cached", "engine", "voice"}
    assert result["cached"] is False and result["voice"] == "bob" and result["engine"] == "fake"
    assert result["url"] == f"/v1/audio/{result['id']}.wav"
    resp, wav = client.request("GET", result["url"])
    assert resp.status == 200 and wav[:4] == b"RIFF"
    assert sf.info(io.BytesIO(wav)).duration == pytest.approx(result["duration_s"], abs=1e-3)
    resp, head = client.request("HEAD", result["url"])
    assert resp.status == 200 and head == b"" and int(resp.getheader("Content-Length")) == len(wav)
    resp, part = client.request("GET", result["url"], headers={"Range": "bytes=0-99"})
    assert resp.status == 206 and part == wav[:100]
    assert resp.getheader("Content-Range") == f"bytes 0-99/{len(wav)}"
    resp, tail = client.request("GET", result["url"], headers={"Range": "bytes=-10"})
    assert resp.status == 206 and tail == wav[-10:]
    resp, _ = client.request("GET", result["url"], headers={"Range": f"bytes={len(wav) + 10}-"})
    assert resp.status == 416


def test_accept_json_header(fake_node):
    resp, data = fake_node.client.request(
        "POST", "/v1/synthesize", body={"text": "你好"}, headers={"Accept": "application/json"}
    )
    assert resp.status == 200 and "id" in body_json(data)


def test_cache_hit_skips_synthesis(fake_node, fake_engine):
    first, wav1 = fake_node.client.synth(text="缓存测试")
    calls = fake_engine.calls
    second, wav2 = fake_node.client.synth(text="缓存测试")
    assert second.getheader("X-Cache") == "HIT" and wav1 == wav2
    assert fake_engine.calls == calls
    resp, data = fake_node.client.synth({"return": "json"}, text="  缓存测试 ")
    assert body_json(data)["cached"] is True


def test_get_synthesize_for_curl(fake_node):
    resp, data = fake_node.client.request("GET", "/v1/synthesize?text=" + quote("你好") + "&speed=1.5")
    assert resp.status == 200 and data[:4] == b"RIFF"
    resp, data = fake_node.client.request("GET", "/v1/synthesize?text=" + quote("你好") + "&speed=fast")
    assert resp.status == 400 and body_json(data)["error"] == "bad_speed"


def test_pcm_format(fake_node):
    resp, wav = fake_node.client.synth(text="你好")
    resp, pcm = fake_node.client.synth(text="你好", format="pcm")
    # audio/L16 would say big-endian (RFC 2586); these samples are little-endian.
    assert resp.status == 200 and resp.getheader("Content-Type") == "audio/pcm;rate=16000"
    assert pcm == wav[44:]


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"text": ""}, 400, "empty_text"),
        ({"text": "   "}, 400, "empty_text"),
        ({}, 400, "empty_text"),
        ({"text": 42}, 400, "bad_text"),
        ({"text": "好" * 201}, 400, "text_too_long"),
        ({"text": "!!!"}, 400, "nothing_to_say"),
        ({"text": "你好", "voice": "carol"}, 400, "unknown_voice"),
        ({"text": "你好", "voice": 3}, 400, "bad_voice"),
        ({"text": "你好", "emotion": "furious"}, 400, "unknown_emotion"),
        ({"text": "你好", "speed": 0.1}, 400, "bad_speed"),
        ({"text": "你好", "speed": "fast"}, 400, "bad_speed"),
        ({"text": "你好", "speed": True}, 400, "bad_speed"),
        ({"text": "你好", "format": "aac"}, 400, "bad_format"),
        ({"text": "你好", "format": ["mp3"]}, 400, "bad_format"),
        ({"text": "你好", "stream": "yes"}, 400, "bad_stream"),
        (["你好"], 400, "invalid_json"),
        (b"{not json", 400, "invalid_json"),
        (b'{"text": "\xff\xfe"}', 400, "invalid_utf8"),
        (b'{"text": "' + b"x" * 5000 + b'"}', 413, "request_entity_too_large"),
    ],
)
def test_bad_input_is_a_json_4xx(fake_node, fake_engine, body, status, code):
    headers = {"Content-Type": "application/json"}
    resp, data = fake_node.client.request("POST", "/v1/synthesize", body=body, headers=headers)
    assert resp.status == status
    assert resp.getheader("Content-Type") == "application/json"
    error = body_json(data)
    assert error["error"] == code and error["message"]
    assert fake_engine.calls == 2  # only the warm-up synthesized (cold, then measured)
    assert not list(fake_node.service.store.root.glob("*/*.wav"))


@pytest.mark.parametrize(
    "path",
    [
        "/v1/audio/0123456789abcdef0123456789abcdef.wav",
        "/v1/audio/xyz.wav",
        "/v1/audio/..%2F..%2Fetc%2Fpasswd.wav",
        "/v1/audio/../../etc/passwd",
        "/nope",
    ],
)
def test_unknown_or_malformed_ids_are_404(fake_node, path):
    resp, data = fake_node.client.request("GET", path)
    assert resp.status == 404
    assert body_json(data)["error"] == "not_found"
    assert b"root:" not in data


def test_method_not_allowed_is_json(fake_node):
    resp, data = fake_node.client.request("DELETE", "/v1/synthesize")
    assert resp.status == 405 and body_json(data)["error"] == "method_not_allowed"
    assert "POST" in resp.getheader("Allow")


def test_voices(fake_node):
    resp, data = fake_node.client.request("GET", "/v1/voices")
    info = body_json(data)
    assert info["voices"] == ["alice", "bob"] and info["default_voice"] == "alice"
    assert info["emotions"] == ["neutral", "happy"] and info["sample_rate"] == 16000
    assert info["speed_range"] == [0.5, 2.0] and info["max_chars"] == 200
    assert info["formats"] == ["wav", "pcm", "mp3", "opus", "flac"]


def test_overload_answers_503_at_once(make_node, fake_engine):
    node = make_node(fake_engine, workers=1, queue_size=1)
    fake_engine.gate.clear()
    fake_engine.started.clear()
    results = []

    def send(text):
        results.append(node.client.synth(text=text)[0].status)

    running = threading.Thread(target=send, args=("第一个",))
    running.start()
    assert fake_engine.started.wait(5)
    queued = threading.Thread(target=send, args=("第二个",))
    queued.start()
    deadline = time.monotonic() + 5
    while node.service.pool.queue_depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    resp, data = node.client.synth(text="第三个", timeout=5)
    assert resp.status == 503
    assert body_json(data)["error"] == "overloaded"
    assert int(resp.getheader("Retry-After")) >= 1
    # Health still answers while every worker is busy.
    resp, data = node.client.request("GET", "/health", timeout=5)
    assert resp.status == 200 and body_json(data)["workers_busy"] == 1
    fake_engine.gate.set()
    running.join(10)
    queued.join(10)
    assert results == [200, 200]


def test_identical_requests_are_coalesced(make_node, fake_engine):
    node = make_node(fake_engine, workers=2, queue_size=8)
    fake_engine.gate.clear()
    before = fake_engine.calls
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(node.client.synth(text="同一句话")[0].status))
               for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    fake_engine.gate.set()
    for t in threads:
        t.join(10)
    assert statuses == [200] * 5
    assert fake_engine.calls - before == 1


def test_health_before_and_after_warm_up(make_node, fake_engine):
    node = make_node(fake_engine, start=False)
    resp, data = node.client.request("GET", "/health")
    assert resp.status == 503 and body_json(data)["status"] == "starting"
    resp, data = node.client.synth(text="你好")
    assert resp.status == 503 and body_json(data)["error"] == "starting"
    node.service.start()
    resp, data = node.client.request("GET", "/health")
    health = body_json(data)
    assert resp.status == 200 and health["status"] == "ready"
    for key in ("engine", "model_version", "voices", "pid", "queue_depth", "workers_busy", "last_synth_ok_at",
                "canary"):
        assert key in health
    assert health["pid"] == os.getpid()  # the in-process server
    assert health["canary"]["ok"] is True
    assert health["role"] is None and health["role_at"] is None  # no monitor has probed yet


def test_health_remembers_the_role_the_monitor_gives(make_node, fake_engine):
    node = make_node(fake_engine, roles=RoleVerifier(SECRET, "a"))
    monitor = RoleSigner()
    resp, data = node.client.request("GET", "/health", headers=monitor.claim("primary"))
    assert resp.status == 200 and body_json(data)["role"] == "primary"
    node.client.request("GET", "/health", headers={"X-TTSHA-Role": "backup"})  # unsigned: ignored
    node.client.request("GET", "/health", headers={**monitor.claim("primary"), "X-TTSHA-Role": "in charge"})
    health = body_json(node.client.request("GET", "/health")[1])
    assert health["role"] == "primary" and health["role_at"] > 0
    assert health["role_claims"]["accepted"] == 1 and sum(health["role_claims"]["rejected"].values()) == 2


@pytest.mark.parametrize("output, reason", [("silence", "silent"), ("nan", "NaN")])
def test_failing_canary_degrades_health(fake_node, fake_engine, output, reason):
    fake_engine.output = output
    assert fake_node.service._canary_once() is not None
    resp, data = fake_node.client.request("GET", "/health")
    health = body_json(data)
    assert resp.status == 503 and health["status"] == "degraded"
    assert reason in health["reason"] and health["canary"]["ok"] is False
    fake_engine.output = "speech"
    assert fake_node.service._canary_once() is None
    resp, _ = fake_node.client.request("GET", "/health")
    assert resp.status == 200


def test_canary_yields_to_real_work(make_node, fake_engine):
    node = make_node(fake_engine, workers=1)
    fake_engine.gate.clear()
    fake_engine.started.clear()
    t = threading.Thread(target=node.client.synth, kwargs={"text": "忙碌"})
    t.start()
    assert fake_engine.started.wait(5)
    calls = fake_engine.calls
    assert node.service._canary_once() is None  # skipped, not queued behind the request
    fake_engine.gate.set()
    t.join(10)
    assert fake_engine.calls == calls
    assert node.service.metrics.canary.labels("skipped")._value.get() == 1


def test_streaming_sends_pieces_and_stores_the_result(fake_node):
    conn_client = fake_node.client
    resp, data = conn_client.synth({"stream": "1"}, text="第一句。第二句。第三句。")
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"
    rid = resp.getheader("X-Audio-Id")
    stored = fake_node.service.store.get(rid)
    assert stored is not None
    wav = stored.path.read_bytes()
    assert data[44:] == wav[44:]
    resp, again = conn_client.synth({"stream": "1"}, text="第一句。第二句。第三句。")
    assert resp.getheader("X-Cache") == "HIT" and again == wav


def test_stream_first_chunk_before_the_end(make_node, fake_engine):
    """Players can start while later sentences are still being synthesized."""
    import http.client

    node = make_node(fake_engine)
    fake_engine.permits = threading.Semaphore(1)  # only the first sentence may be synthesized
    conn = http.client.HTTPConnection("127.0.0.1", node.client.port, timeout=10)
    conn.request(
        "POST",
        "/v1/synthesize?stream=1",
        body=json.dumps({"text": "一。二。三。"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    piece, pause = 4000 * 2, int(0.3 * 16000) * 2  # bytes of one 1-character piece, one pause
    first = resp.read(44 + piece + pause)  # arrives while sentences 2 and 3 are held back
    assert first[:4] == b"RIFF" and len(first) == 44 + piece + pause
    assert node.service.store.get(resp.getheader("X-Audio-Id")) is None  # not finished yet
    fake_engine.permits.release(2)
    rest = resp.read()
    conn.close()
    assert len(rest) == 2 * piece + pause


def test_metrics(fake_node):
    fake_node.client.synth(text="指标")
    fake_node.client.synth(text="指标")
    fake_node.client.synth(text="")
    resp, data = fake_node.client.request("GET", "/metrics")
    text = data.decode()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain")
    assert 'ttsha_http_requests_total{route="synthesize",status="200"} 2.0' in text
    assert 'ttsha_http_requests_total{route="synthesize",status="400"} 1.0' in text
    assert 'ttsha_cache_total{result="hit"} 1.0' in text
    assert 'ttsha_cache_total{result="miss"} 1.0' in text  # a miss is looked up once
    assert "ttsha_synthesis_seconds_bucket" in text
    assert "ttsha_queue_depth" in text and "ttsha_audio_seconds_total" in text
    assert 'ttsha_engine_info{engine="fake"' in text


def test_page(fake_node):
    resp, data = fake_node.client.request("GET", "/")
    page = data.decode()
    assert resp.status == 200 and "<textarea" in page and "<audio" in page and "/v1/synthesize" in page



def test_replication_state_in_health_and_metrics(tmp_path, fake_engine):
    from .conftest import SERVE, Node

    state = tmp_path / "replicate.json"
    state.write_text(json.dumps({"updated_at": time.time(), "queue_depth": 3, "connected": True,
                                 "lag_s": {"p50": 0.01, "p99": 0.05}, "last_error": ""}))
    node = Node(fake_engine, tmp_path / "store", SERVE)
    node.service.replication_state = state
    try:
        resp, data = node.client.request("GET", "/health")
        rep = body_json(data)["replication"]
        assert rep["queue_depth"] == 3 and rep["connected"] is True and rep["lag_s"]["p99"] == 0.05
        node.client.synth(text="指标")  # labelled series (cache results) appear once observed
        resp, data = node.client.request("GET", "/metrics")
        text = data.decode()
        assert "ttsha_replication_queue_depth 3.0" in text
        assert 'ttsha_replication_lag_seconds{quantile="p99"} 0.05' in text
        assert "ttsha_replication_connected 1.0" in text
        assert 'ttsha_node_status{status="ready"} 1.0' in text and 'ttsha_node_status{status="degraded"} 0.0' in text
        assert re.search(r"^ttsha_store_free_bytes [0-9.e+]+$", text, flags=re.M)
        # Every ttsha series the shipped alert rules and Grafana dashboard read is one this node exposes.
        exposed = set(re.findall(r"^(ttsha_[a-z0-9_]+)", text, flags=re.M))
        assert referenced_metrics() - exposed == set()
    finally:
        node.close()


def test_unpunctuated_text_is_said_in_pieces(make_node, embedded_engine):
    """200 characters without punctuation are past the model's 2048 frames in one pass."""
    node = make_node(embedded_engine, max_chars=400)
    resp, data = node.client.synth(text="的" * 200)
    assert resp.status == 200, data
    samples, rate = sf.read(io.BytesIO(data))
    assert 0.08 * 200 < len(samples) / rate < 1.0 * 200


def _raw_post(port: int, path: str, body: dict, timeout: float = 20) -> tuple[bytes, bytes]:
    """Headers and the raw (still chunk-encoded) body, read until the server closes."""
    import socket

    payload = json.dumps(body, ensure_ascii=False).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body_bytes = raw.partition(b"\r\n\r\n")
    return head, body_bytes


def test_stream_that_fails_midway_ends_without_the_last_chunk(make_node, fake_engine):
    node = make_node(fake_engine)
    fake_engine.fail_on_call = fake_engine.calls + 2  # the second sentence fails
    head, body = _raw_post(node.port, "/v1/synthesize?stream=1", {"text": "第一句。第二句。第三句。"})
    assert b" 200 " in head.split(b"\r\n")[0] and b"chunked" in head.lower()
    assert b"RIFF" in body  # the header and the first sentence went out
    assert not body.endswith(b"0\r\n\r\n"), "a failed stream must not look complete"
    rid = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
               if line.lower().startswith(b"x-audio-id"))
    assert node.service.store.get(rid) is None
    assert not list(node.service.store.root.rglob(f"{rid}*"))
    # The same text streamed when the engine works ends with the terminating chunk.
    fake_engine.fail_on_call = None
    head, body = _raw_post(node.port, "/v1/synthesize?stream=1", {"text": "第一句。第二句。第三句。"})
    assert body.endswith(b"0\r\n\r\n") and node.service.store.get(rid) is not None

"""Inputs that used to answer 500 or break the contract (issue 16, item 6):
each is a 4xx JSON with a reason, over a real socket."""

from __future__ import annotations

import http.client
import json
import threading

import pytest


def body_json(data: bytes) -> dict:
    return json.loads(data.decode())


def post_raw(node, path: str, body: bytes, headers: dict | None = None):
    return node.client.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                                 **(headers or {})})


@pytest.mark.parametrize(("body", "status", "error"), [
    ('{"text": "你好\\ud800"}'.encode(), 400, "invalid_unicode"),
    (b'{"text": "\\u4f60\\u597d", "speed": 1' + b"0" * 400 + b"}", 400, "bad_speed"),
    (b'{"text": "\\u4f60\\u597d", "speed": 1e999}', 400, "bad_speed"),
    (b'{"text": 123}', 400, "bad_text"),
    (b'{"text": "\\u4f60\\u597d", "sample_rate": 16000, "colour": 1}', 400, "unknown_keys"),
    (b"[" * 1800 + b"]" * 1800, 400, "invalid_json"),  # deeper than the parser's recursion limit
])
def test_bad_json_bodies_are_4xx_json(fake_node, body, status, error):
    resp, data = post_raw(fake_node, "/v1/synthesize", body)
    assert resp.status == status and resp.getheader("Content-Type") == "application/json"
    payload = body_json(data)
    assert payload["error"] == error and payload["message"]
    if error == "unknown_keys":
        assert "colour" in payload["message"] and "sample_rate" in payload["message"]


def test_the_openai_route_keeps_ignoring_keys_openai_clients_send(fake_node):
    resp, data = fake_node.client.request("POST", "/v1/audio/speech", body={
        "model": "tts-1", "input": "你好", "voice": "alloy", "response_format": "wav", "instructions": "x"})
    assert resp.status == 200 and data[:4] == b"RIFF"
    resp, data = fake_node.client.request("POST", "/v1/audio/speech", body={"model": "tts-1", "input": 5})
    assert resp.status == 400 and body_json(data)["error"]["code"] == "bad_text"  # OpenAI's error shape


def test_a_chunked_body_over_the_limit_is_413(fake_node):
    limit = fake_node.service.serve.max_body_bytes
    payload = json.dumps({"text": "你" * (limit // 2)}).encode()
    assert len(payload) > limit
    conn = http.client.HTTPConnection(fake_node.host, fake_node.port, timeout=10)
    conn.putrequest("POST", "/v1/synthesize")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for i in range(0, len(payload), 1000):
        block = payload[i:i + 1000]
        conn.send(b"%x\r\n%s\r\n" % (len(block), block))
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 413 and body_json(data)["error"] == "request_entity_too_large"


def test_a_small_chunked_body_still_works(fake_node):
    conn = http.client.HTTPConnection(fake_node.host, fake_node.port, timeout=10)
    conn.request("POST", "/v1/synthesize", body=iter([json.dumps({"text": "你好"}).encode()]),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read()[:4] == b"RIFF"
    conn.close()


def test_head_of_a_get_synthesis(fake_node):
    resp, data = fake_node.client.request("HEAD", "/v1/synthesize?text=%E4%BD%A0%E5%A5%BD")
    assert resp.status == 200 and resp.getheader("Content-Type") == "audio/wav" and data == b""


def test_double_slashes_are_not_a_bare_308(fake_node):
    resp, data = fake_node.client.request("GET", "//v1//voices")
    if resp.status in (301, 302, 307, 308):
        assert resp.getheader("Location", "").endswith("/v1/voices")
    else:
        assert 400 <= resp.status < 500
    assert resp.getheader("Content-Type") == "application/json" and body_json(data)["error"]


@pytest.mark.parametrize("query", ["speed=1e999", "speed=nan", "speed=abc"])
def test_bad_speed_in_the_query(fake_node, query):
    resp, data = fake_node.client.request("GET", f"/v1/synthesize?text=%E4%BD%A0&{query}")
    assert resp.status == 400 and body_json(data)["error"] == "bad_speed"


def test_a_result_removed_mid_read_is_404_never_500(fake_node):
    """The issue's race: `ttsha gc` removing a result while GETs read it."""
    resp, data = fake_node.client.synth(params={"return": "json"}, text="你好")
    rid = body_json(data)["id"]
    store = fake_node.service.store
    wav, meta = store.audio_path(rid).read_bytes(), json.loads(store.meta_path(rid).read_text())
    stop = threading.Event()
    cycles = [0]

    def churn() -> None:
        while not stop.is_set() and cycles[0] < 100000:
            for path in (store.audio_path(rid), store.meta_path(rid)):
                path.unlink(missing_ok=True)
            store.put(rid, wav, meta)
            cycles[0] += 1

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    statuses: dict[int, int] = {}
    try:
        for _ in range(300):
            resp, data = fake_node.client.request("GET", f"/v1/audio/{rid}.wav", timeout=10)
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status != 200:
                assert resp.status == 404 and body_json(data)["error"] == "not_found"
    finally:
        stop.set()
        thread.join(10)
    assert set(statuses) <= {200, 404} and cycles[0] > 0


@pytest.mark.parametrize(("method", "path", "unknown"), [
    ("GET", "/v1/synthesize?text=%E4%BD%A0&foo=1", "foo"),
    ("GET", "/v1/synthesize?text=%E4%BD%A0&sample_rate=16000&colour=red", "colour, sample_rate"),
    ("HEAD", "/v1/synthesize?text=%E4%BD%A0&foo=1", None),  # HEAD: the status alone
    ("GET", "/v1/voices?lang=zh", "lang"),
    ("GET", "/v1/audio/0123456789abcdef.wav?t=1", "t"),
    ("POST", "/v1/synthesize?text=%E4%BD%A0", "text"),  # a query text next to a JSON body would be ignored
])
def test_unknown_query_keys_on_our_own_routes_are_400_naming_them(fake_node, method, path, unknown):
    body = {"text": "你好"} if method == "POST" else None
    resp, data = fake_node.client.request(method, path, body=body)
    assert resp.status == 400 and resp.getheader("Content-Type") == "application/json"
    if unknown is not None:
        payload = body_json(data)
        assert payload["error"] == "unknown_keys" and f"unknown query keys: {unknown};" in payload["message"]


def test_known_query_keys_and_other_routes_still_work(fake_node):
    resp, data = fake_node.client.request(
        "GET", "/v1/synthesize?text=%E4%BD%A0&voice=alice&emotion=happy&speed=1.2&format=pcm&stream=0&return=json")
    assert resp.status == 200 and body_json(data)["id"]
    resp, data = fake_node.client.synth(params={"stream": "1", "return": "json"}, text="你好")
    assert resp.status == 200
    # The OpenAI route, /health and /metrics ignore the query (clients and load balancers add keys).
    resp, _ = fake_node.client.request("POST", "/v1/audio/speech?api-version=1",
                                       body={"model": "tts-1", "input": "你好"})
    assert resp.status == 200
    for path in ("/health?_=1", "/metrics?x=1", "/?utm_source=x"):
        assert fake_node.client.request("GET", path)[0].status == 200


@pytest.mark.parametrize(("query", "error"), [
    ("text=%ED%A0%80", "invalid_utf8"),  # werkzeug kept it as the text "%ED%A0%80", which was spoken
    ("text=%E4%BD%A0&voice=%FF", "invalid_utf8"),
    ("text=%E4%BD%A0&stream=maybe", "bad_stream"),  # was a silent "no"
])
def test_a_query_that_is_not_utf8_or_a_bad_flag_is_400(fake_node, query, error):
    resp, data = fake_node.client.request("GET", f"/v1/synthesize?{query}")
    assert resp.status == 400 and body_json(data)["error"] == error

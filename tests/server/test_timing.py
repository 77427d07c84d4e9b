"""Timestamps and subtitles on ttsha's own route (see ttsha.engine.timing)."""

from __future__ import annotations

import io
import json

import srt as srt_parser
import webvtt

from ttsha.store import normalize_key_text

from ..test_audio import decode

TEXT = "第一句。第二句，第三句！"


def _duration(client, rid: str) -> float:
    resp, wav = client.request("GET", f"/v1/audio/{rid}.wav")
    samples, rate = decode(wav, "wav")
    return len(samples) / rate


def test_srt_and_vtt_parse_and_fall_inside_the_audio(fake_node):
    resp, body = fake_node.client.synth(text=TEXT, format="srt")
    assert resp.status == 200, body
    assert resp.getheader("Content-Type").startswith("application/x-subrip")
    rid = resp.getheader("X-Audio-Id")
    duration = _duration(fake_node.client, rid)
    cues = list(srt_parser.parse(body.decode("utf-8")))
    assert [c.content for c in cues] == ["第一句", "第二句", "第三句"]
    for cue in cues:
        assert 0 <= cue.start.total_seconds() < cue.end.total_seconds() <= duration
    assert cues[-1].end.total_seconds() == duration  # the last piece ends the audio
    resp, body = fake_node.client.synth(text=TEXT, format="vtt")
    assert resp.status == 200 and resp.getheader("X-Cache") == "HIT"
    assert resp.getheader("Content-Type").startswith("text/vtt")
    captions = webvtt.from_buffer(io.StringIO(body.decode("utf-8"))).captions
    assert [c.text for c in captions] == ["第一句", "第二句", "第三句"]
    assert [c.start_time.in_milliseconds() for c in captions] == [
        round(c.start.total_seconds() * 1000) for c in cues]
    # The stored result's subtitles by id, as the audio is.
    resp, again = fake_node.client.request("GET", f"/v1/audio/{rid}.vtt")
    assert resp.status == 200 and again == body


def test_json_timestamps_from_an_engine_without_durations_say_why(fake_node):
    resp, data = fake_node.client.synth({"return": "json", "timestamps": "1"}, text=TEXT)
    result = json.loads(data)
    assert resp.status == 200 and result["timestamps"] is None
    assert "does not report" in result["timestamps_unavailable"]
    resp, data = fake_node.client.synth({"return": "json"}, text=TEXT)
    assert "timestamps" not in json.loads(data)


def test_bad_timestamps_and_subtitles_on_the_openai_route_are_refused(fake_node):
    resp, data = fake_node.client.synth(text=TEXT, timestamps="yes")
    assert resp.status == 400 and json.loads(data)["error"] == "bad_timestamps"
    resp, data = fake_node.client.request("GET", "/v1/synthesize?text=%E4%BD%A0&timestamps=maybe")
    assert resp.status == 400 and json.loads(data)["error"] == "bad_timestamps"
    resp, data = fake_node.client.request("POST", "/v1/audio/speech",
                                          body={"model": "tts-1", "input": TEXT, "voice": "alloy",
                                                "response_format": "srt"})
    assert resp.status == 400


def test_a_result_stored_without_timing_is_made_again_for_subtitles(fake_node, fake_engine):
    resp, _ = fake_node.client.synth(text=TEXT)
    rid = resp.getheader("X-Audio-Id")
    sidecar = fake_node.service.store.meta_path(rid)
    meta = json.loads(sidecar.read_text())
    del meta["timing"]  # as results stored before timing was kept
    sidecar.write_text(json.dumps(meta))
    resp, data = fake_node.client.request("GET", f"/v1/audio/{rid}.srt")
    assert resp.status == 404 and json.loads(data)["error"] == "no_timing"
    calls = fake_engine.calls
    resp, body = fake_node.client.synth(text=TEXT, format="srt")
    assert resp.status == 200 and fake_engine.calls > calls and len(list(srt_parser.parse(body.decode()))) == 3
    assert "timing" in json.loads(sidecar.read_text())


def test_embedded_timestamps_map_back_to_the_text_and_repeat_from_the_cache(make_node, embedded_engine):
    node = make_node(embedded_engine)
    text = "我有12个苹果，价格是￥12.50。"
    resp, data = node.client.synth({"return": "json", "timestamps": "1"}, text=text)
    first = json.loads(data)
    assert resp.status == 200 and first["cached"] is False, first
    stamps = first["timestamps"]
    # Offsets count characters of the text as the result's id knows it (NFKC: ￥ is ¥).
    assert first["text"] == normalize_key_text(text)
    assert [s["text"] for s in stamps] == ["我", "有", "12", "个", "苹", "果", "价", "格", "是", "¥12.50"]
    for stamp in stamps:
        assert first["text"][stamp["offset"] : stamp["offset"] + stamp["length"]] == stamp["text"]
        assert 0 <= stamp["start"] < stamp["end"] <= first["duration_s"] + 0.0005
    resp, data = node.client.synth({"return": "json", "timestamps": "1"}, text=text)
    again = json.loads(data)
    assert again["cached"] is True and again["timestamps"] == stamps

"""SSML on ttsha's own route: validated at the door, part of the result's id."""

from __future__ import annotations

import json
from urllib.parse import quote

DOC = '<speak>你好<break time="300ms"/>世界</speak>'


def test_ssml_is_said_and_its_markup_is_part_of_the_id(fake_node, fake_engine):
    resp, _ = fake_node.client.synth({"return": "json"}, text=DOC, ssml=True)
    first = resp.status
    resp, data = fake_node.client.synth({"return": "json"}, text=DOC, ssml=True)
    result = json.loads(data)
    assert first == 200 and result["cached"] is True
    other = DOC.replace("300ms", "600ms")
    resp, data = fake_node.client.synth({"return": "json"}, text=other, ssml=True)
    assert json.loads(data)["id"] != result["id"] and json.loads(data)["cached"] is False
    # The same characters as plain text are another request (and said as text: the tags are dropped).
    resp, data = fake_node.client.synth({"return": "json"}, text=DOC)
    assert resp.status == 200 and json.loads(data)["id"] != result["id"]
    meta = json.loads(fake_node.service.store.meta_path(result["id"]).read_text())
    assert meta["ssml"] is True and meta["timing"]["text"] == "你好世界"
    # The break is in the audio: 0.25 s per character, 0.3 s of silence.
    assert abs(result["duration_s"] - (4 * 0.25 + 0.3)) < 0.01


def test_get_takes_ssml_too(fake_node):
    resp, data = fake_node.client.request("GET", f"/v1/synthesize?ssml=1&return=json&text={quote(DOC)}")
    assert resp.status == 200, data
    resp, data = fake_node.client.synth(text=DOC, ssml=True, format="srt")
    assert resp.status == 200 and "你好\n\n2\n00:00:00,800 --> 00:00:01,300\n世界" in data.decode()  # two cues


def test_bad_ssml_is_a_400_naming_the_element(fake_node, fake_engine):
    for document, named in (("<speak><foo>你好</foo></speak>", "<foo>"),
                            ("<speak><prosody rate='x'>你好</prosody></speak>", "<prosody rate>"),
                            ("<speak>你好", "not well-formed"),
                            ('<!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>',
                             "DOCTYPE")):
        resp, data = fake_node.client.synth(text=document, ssml=True)
        body = json.loads(data)
        assert resp.status == 400 and body["error"] == "bad_ssml" and named in body["message"], body
    resp, data = fake_node.client.synth(text=DOC, ssml="yes")
    assert resp.status == 400 and json.loads(data)["error"] == "bad_ssml"
    assert fake_engine.calls <= 2  # the warm-up's canary only: nothing bad reached the engine

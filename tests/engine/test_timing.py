from __future__ import annotations

import io

import numpy as np
import pytest
import srt as srt_parser
import webvtt

from ttsha.engine.lexicon import parse
from ttsha.engine.normalize import normalize, normalize_tracked
from ttsha.engine.spans import Tracked
from ttsha.engine.timing import Timeline, srt, vtt


def _said(engine, text, **kw):
    timeline = Timeline()
    parts = list(engine.stream(text, timeline=timeline, **kw))
    samples = np.concatenate(parts)
    return timeline, len(samples) / engine.info.sample_rate


@pytest.mark.parametrize("text", ["我有12个苹果", "￥12.50", "1,234,567人", "3-5个", "v1.2.3版", "Ｈｅｌｌｏ，世界",
                                  "e\u0301t\u00e9", "\u1100\u1161"])
def test_normalized_characters_point_into_the_source(text):
    tracked = normalize_tracked(Tracked.of(text))
    assert tracked.text == normalize(text) and len(tracked.spans) == len(tracked.text)
    assert all(0 <= a < b <= len(text) for a, b in tracked.spans)
    starts = [a for a, _ in tracked.spans]
    assert starts == sorted(starts)


def test_a_rewritten_number_points_at_the_number():
    tracked = normalize_tracked(Tracked.of("我有12个"))
    assert tracked.text == "我有十二个"
    assert [tracked.spans[i] for i in range(5)] == [(0, 1), (1, 2), (2, 4), (2, 4), (4, 5)]


def test_every_character_is_timed_in_order_inside_the_audio(embedded_engine):
    text = "今天是2024年3月5日，我买了3-5个苹果。你好！"
    timeline, duration = _said(embedded_engine, text)
    stamps = timeline.timestamps()
    assert stamps is not None
    said = "".join(s["text"] for s in stamps)
    # Every Chinese character and every rewritten token is there once, in order; punctuation is not.
    assert said == "今天是2024年3月5日我买了3-5个苹果你好"
    for stamp in stamps:
        assert text[stamp["offset"] : stamp["offset"] + stamp["length"]] == stamp["text"]
        assert 0 <= stamp["start"] < stamp["end"] <= duration
    assert [s["start"] for s in stamps] == sorted(s["start"] for s in stamps)
    assert any(s["text"] == "3-5" for s in stamps)  # 三到五: one token, one mark


def test_a_slower_speed_stretches_the_times(embedded_engine):
    normal, _ = _said(embedded_engine, "欢迎使用语音合成服务")
    slow, _ = _said(embedded_engine, "欢迎使用语音合成服务", speed=0.5)
    assert normal.marks and slow.marks and len(normal.marks) == len(slow.marks) == 10
    ratio = slow.marks[-1].end_s / normal.marks[-1].end_s
    assert 1.6 < ratio < 2.4


def test_lexicon_words_and_latin_words_are_marked_whole(embedded_engine):
    lexicon = parse({"pinyin": {"曾小贤": "zeng1 xiao3 xian2"}}, "t")
    timeline = Timeline()
    list(embedded_engine.stream("曾小贤用iPhone和TTS", timeline=timeline, lexicon=lexicon))
    stamps = timeline.timestamps()
    assert stamps is not None
    assert [s["text"] for s in stamps] == ["曾小贤", "用", "iPhone", "和", "T", "T", "S"]


def test_subtitles_parse_with_standard_parsers_and_fall_inside_the_audio(embedded_engine):
    text = "第一句话。第二句话，还有第三句！"
    timeline, duration = _said(embedded_engine, text)
    cues = list(srt_parser.parse(srt(timeline)))
    assert [c.content for c in cues] == ["第一句话", "第二句话", "还有第三句"]
    for cue in cues:
        assert 0 <= cue.start.total_seconds() < cue.end.total_seconds() <= duration + 0.0005
    captions = webvtt.from_buffer(io.StringIO(vtt(timeline))).captions
    assert [c.text for c in captions] == ["第一句话", "第二句话", "还有第三句"]
    for cue, caption in zip(cues, captions, strict=True):
        assert caption.start_time.in_milliseconds() == round(cue.start.total_seconds() * 1000)
        assert caption.end_time.in_milliseconds() == round(cue.end.total_seconds() * 1000)


def test_vtt_escapes_markup_in_the_text():
    timeline = Timeline("a<b>&c --> d", [], None)
    timeline.add_piece((0, 12), 0.0, 1.0, None)
    body = vtt(timeline)
    assert "a&lt;b&gt;&amp;c --&gt; d" in body
    (caption,) = webvtt.from_buffer(io.StringIO(body)).captions
    assert caption.end_time.in_milliseconds() == 1000


def test_the_sidecar_form_round_trips_and_refuses_garbage(embedded_engine):
    timeline, _ = _said(embedded_engine, "你好，世界。")
    again = Timeline.from_json(timeline.to_json(), "你好，世界。")
    assert again is not None and again.timestamps() == timeline.timestamps() and again.cues == timeline.cues
    for bad in (None, {"version": 99}, {"version": 1, "cues": [["a", 1, 2, 3]], "marks": None},
                {"version": 1, "cues": [[0, 1, 2]], "marks": None}):
        assert Timeline.from_json(bad, "x") is None


def test_an_engine_without_durations_says_so_and_still_has_cues():
    from ..server.conftest import FakeEngine

    engine = FakeEngine()
    timeline, duration = _said(engine, "第一句。第二句。")
    assert timeline.timestamps() is None and "fake" in timeline.unavailable
    assert [(c.start, c.end) for c in timeline.cues] == [(0, 3), (4, 7)]
    assert timeline.cues[-1].end_s <= duration

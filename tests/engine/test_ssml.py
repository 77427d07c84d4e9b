"""ttsha's SSML subset: safe parsing, validation, and what the engine receives."""

from __future__ import annotations

import numpy as np
import pytest

from ttsha.engine import ssml
from ttsha.engine.ssml import SSMLError, parse
from ttsha.engine.timing import Timeline
from ttsha.errors import InputError

from ..server.conftest import FakeEngine


def _syllables(engine, document):
    return [s for piece in engine.pieces(document, ssml=True) for s in engine.mapper.syllables(piece.text)]


@pytest.fixture
def received(embedded_engine, monkeypatch):
    """Every call of the embedded acoustic model: the phone symbols it receives and its prosody."""
    calls = []
    real = embedded_engine._acoustic
    names = {v: k for k, v in embedded_engine.mapper.symbol_to_id.items()}

    def spy(ids, prosody):
        calls.append(([names[i] for i in ids], prosody))
        return real(ids, prosody)

    monkeypatch.setattr(embedded_engine, "_acoustic", spy)
    return calls


def test_phoneme_gives_the_acoustic_model_its_syllable(embedded_engine, received):
    list(embedded_engine.stream('<speak>银<phoneme alphabet="pinyin" ph="hang2">行</phoneme></speak>', ssml=True))
    list(embedded_engine.stream("<speak>行走</speak>", ssml=True))
    (with_phoneme, _), (plain, _) = received
    assert with_phoneme[3:6] == ["#0", "h", "ang2"] and len(with_phoneme) == 8
    assert plain[1:3] == ["x", "ing2"]


@pytest.mark.parametrize(("document", "expected"), [
    ('<speak>号码<say-as interpret-as="digits">2024</say-as></speak>', "hao4 ma3 er4 ling2 er4 si4"),
    ('<speak>拨<say-as interpret-as="telephone">110-12</say-as></speak>', "bo1 yao1 yao1 ling2 yao1 er4"),
    ('<speak><say-as interpret-as="date">2024-03-05</say-as></speak>',
     "er4 ling2 er4 si4 nian2 san1 yue4 wu3 ri4"),
    ('<speak><say-as interpret-as="date" format="mdy">3/5/2024</say-as></speak>',
     "er4 ling2 er4 si4 nian2 san1 yue4 wu3 ri4"),
    ('<speak><say-as interpret-as="characters">OK</say-as></speak>', "ou1 kei4"),
    ('<speak><sub alias="世界卫生组织">WHO</sub>说</speak>', "shi4 jie4 wei4 sheng1 zu3 zhi1 shuo1"),
    ("<speak>共2024人</speak>", "gong4 liang3 qian1 ling2 er4 shi2 si4 ren2"),
])
def test_readings(embedded_engine, document, expected):
    assert " ".join(_syllables(embedded_engine, document)) == expected


def test_characters_are_spelled_even_where_a_word_has_a_reading(embedded_engine):
    # "OK" as a plain word is ou1 kei4; say-as characters spells it letter by letter all the same.
    assert _syllables(embedded_engine, '<speak><say-as interpret-as="characters">ok</say-as></speak>') == [
        "ou1", "kei4"]
    assert _syllables(embedded_engine, '<speak><say-as interpret-as="characters">CPU1</say-as></speak>') == [
        "xi1", "pi1", "you1", "yi1"]


def test_prosody_reaches_the_acoustic_model(embedded_engine, received):
    list(embedded_engine.stream('<speak>你好<prosody rate="50%" pitch="+20%">你好</prosody></speak>', ssml=True))
    (first, normal), (second, changed) = received
    assert first == second
    assert changed.speed == pytest.approx(normal.speed * 0.5) and changed.f0 == pytest.approx(normal.f0 * 1.2)


def test_breaks_and_volume_shape_the_audio():
    engine = FakeEngine()
    plain = np.concatenate(list(engine.stream("<speak>你好</speak>", ssml=True)))
    parts = list(engine.stream('<speak>你好<break time="400ms"/><prosody volume="-6dB">你好</prosody></speak>',
                               ssml=True))
    first, pause, quiet = parts
    assert len(pause) == int(0.4 * 16000) and not pause.any()
    np.testing.assert_allclose(quiet, plain * 10 ** (-6 / 20), rtol=1e-5, atol=1e-6)
    # A break lasts its time whatever the speed; a clause's pause is shortened with the speech.
    fast = list(engine.stream('<speak>你好，<break time="400ms"/>你好</speak>', speed=2.0, ssml=True))
    assert len(fast[1]) == int((0.15 / 2 + 0.4) * 16000)
    leading = list(engine.stream('<speak><break time="1s"/>你好</speak>', ssml=True))
    assert len(leading[0]) == 16000 and not leading[0].any() and leading[1].any()


def test_timestamps_point_into_the_written_text(embedded_engine):
    timeline = Timeline()
    list(embedded_engine.stream('<speak>电话<say-as interpret-as="telephone">110</say-as>，'
                                '<sub alias="世界卫生组织">WHO</sub></speak>', ssml=True, timeline=timeline))
    assert timeline.text == "电话110，WHO"
    assert [s["text"] for s in timeline.timestamps() or []] == ["电", "话", "110", "WHO"]
    assert [timeline.text[c.start : c.end] for c in timeline.cues] == ["电话110", "WHO"]


@pytest.mark.parametrize(("document", "named"), [
    ("<speak>你好", "not well-formed"),
    ("你好", "not well-formed"),
    ("<speak>你好</speak><speak/>", "not well-formed"),
    ("<p>你好</p>", "<p>"),
    ("<speak><speak>你好</speak></speak>", "<speak>"),
    ("<speak><audio src='x'/>你好</speak>", "<audio>"),
    ("<speak><prosody speed='2'>你好</prosody></speak>", "<prosody speed>"),
    ("<speak><prosody rate='fastest'>你好</prosody></speak>", "<prosody rate>"),
    ("<speak><prosody rate='900%'>你好</prosody></speak>", "<prosody rate>"),
    ("<speak><prosody pitch='+2st'>你好</prosody></speak>", "<prosody pitch>"),
    ("<speak><prosody volume='+40dB'>你好</prosody></speak>", "<prosody volume>"),
    ("<speak>你<break time='forever'/>好</speak>", "<break time>"),
    ("<speak>你<break time='11s'/>好</speak>", "<break time>"),
    ("<speak>你<break strength='huge'/>好</speak>", "<break strength>"),
    ("<speak><say-as interpret-as='cardinal'>12</say-as></speak>", "<say-as interpret-as>"),
    ("<speak><sub>WHO</sub></speak>", "<sub alias>"),
    ("<speak><phoneme alphabet='ipa' ph='x'>行</phoneme></speak>", "<phoneme alphabet>"),
    ("<speak><phoneme alphabet='pinyin' ph='hang'>行</phoneme></speak>", "<phoneme ph>"),
    ("<speak><phoneme alphabet='pinyin' ph='xx9'>行</phoneme></speak>", "<phoneme ph>"),
    ("<speak><sub alias='a'><break/></sub></speak>", "<sub> holds text only"),
    ("<speak><sub alias='a'></sub>好</speak>", "<sub>: holds no text"),
])
def test_bad_ssml_names_the_element_or_attribute(document, named):
    with pytest.raises(SSMLError, match=named.replace("(", r"\(")) as caught:
        parse(document)
    assert caught.value.code == "bad_ssml" and isinstance(caught.value, InputError)


def test_entities_and_doctypes_are_refused():
    laughs = ('<?xml version="1.0"?><!DOCTYPE speak [<!ENTITY a "哈哈哈哈哈哈哈哈"><!ENTITY b "&a;&a;&a;&a;&a;&a;">'
              '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;">]><speak>&c;</speak>')
    external = '<!DOCTYPE speak [<!ENTITY x SYSTEM "file:///etc/passwd">]><speak>&x;</speak>'
    for document in (laughs, external, '<!DOCTYPE speak SYSTEM "http://127.0.0.1:9/x.dtd"><speak>好</speak>'):
        with pytest.raises(SSMLError, match="DOCTYPE"):
            parse(document)
    with pytest.raises(SSMLError, match="undefined entity"):
        parse("<speak>&nbsp;好</speak>")
    assert parse("<speak>a &amp; b &lt; c</speak>").text == "a & b < c"


def test_depth_and_size_are_bounded():
    deep = "<speak>" + "<prosody>" * ssml.MAX_DEPTH + "好" + "</prosody>" * ssml.MAX_DEPTH + "</speak>"
    with pytest.raises(SSMLError, match="deeper"):
        parse(deep)
    many = "<speak>" + "好<break time='1ms'/>" * ssml.MAX_ELEMENTS + "</speak>"
    with pytest.raises(SSMLError, match="more than"):
        parse(many)


@pytest.mark.parametrize("date", ["yesterday", "2024-13-40", "2024-02"])
def test_a_date_that_is_none_is_refused(date):
    with pytest.raises(SSMLError, match="say-as interpret-as=\"date\""):
        FakeEngine().pieces(f"<speak><say-as interpret-as='date'>{date}</say-as></speak>", ssml=True)


def test_pitch_is_refused_where_the_engine_cannot_change_it():
    with pytest.raises(SSMLError, match="cannot change pitch"):
        FakeEngine().pieces("<speak><prosody pitch='high'>你好</prosody></speak>", ssml=True)
    with pytest.raises(InputError, match="nothing to say"):
        FakeEngine().pieces("<speak><break time='1s'/></speak>", ssml=True)

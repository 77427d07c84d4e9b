from __future__ import annotations

import logging

import pytest

from ttsha.engine.embedded import find_asset_dir
from ttsha.engine.frontend import PhoneMapper, normalize, require_text, split_sentences
from ttsha.errors import InputError


@pytest.fixture(scope="module")
def mapper():
    return PhoneMapper.from_file(find_asset_dir() / "baker_mapper.json")


@pytest.mark.parametrize(
    "text, spoken",
    [
        ("2026年11月23日", "二零二六年十一月二十三日"),
        ("2026-11-23", "二零二六年十一月二十三日"),
        ("3月5号", "三月五号"),
        ("12:30", "十二点三十分"),
        ("8:05:09", "八点零五分九秒"),
        ("增长50%", "增长百分之五十"),
        ("-3.5℃", "负三点五摄氏度"),
        ("1/3", "三分之一"),
        ("13812345678", "幺三八幺二三四五六七八"),
        ("010-12345678", "零幺零幺二三四五六七八"),
        ("3kg", "三千克"),
        ("100 km/h", "一百千米每小时"),
        ("1205.5元", "一千二百零五点五元"),
        ("第1名", "第一名"),
        ("ＡＢＣ１２３", "ABC一百二十三"),
        ("１＋１＝２", "一加一等于二"),
    ],
)
def test_normalize(text, spoken):
    assert normalize(text) == spoken


def test_split_sentences_keeps_pauses_and_drops_empty_pieces():
    pieces = split_sentences("你好，世界！……今天。ok")
    assert [p.text for p in pieces] == ["你好", "世界", "今天"]
    assert [p.pause_s for p in pieces] == [0.15, 0.3, 0.0]


def test_phones_follow_the_voice_conventions(mapper):
    assert mapper.phones("中文") == ["sil", "zh", "ong1", "#0", "^", "uen2", "sil"]
    ids = mapper.ids("中文")
    assert ids[0] == mapper.symbol_to_id["sil"] and ids[-1] == mapper.symbol_to_id["eos"]


def test_tone_sandhi(mapper):
    assert mapper.syllables("你好") == ["ni2", "hao3"]
    assert mapper.syllables("一个") == ["yi2", "ge4"]
    assert mapper.syllables("不对") == ["bu2", "dui4"]


def test_neutral_tone_and_umlaut(mapper):
    assert mapper.syllables("绿色的") == ["lv4", "se4", "de5"]


def test_unsayable_characters_are_skipped_with_a_warning(mapper, caplog):
    with caplog.at_level(logging.WARNING):
        assert mapper.syllables("hi你好😀") == ["ni2", "hao3"]
    assert "😀" in caplog.text and "h" in caplog.text


def test_punctuation_is_silent(mapper, caplog):
    with caplog.at_level(logging.WARNING):
        assert mapper.syllables("《你好》“世界”") == ["ni2", "hao3", "shi4", "jie4"]
    assert caplog.text == ""


def test_nothing_sayable_gives_no_ids(mapper):
    assert mapper.ids("hello") == []


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_require_text_refuses_empty(text):
    with pytest.raises(InputError) as info:
        require_text(text)
    assert info.value.code == "empty_text"

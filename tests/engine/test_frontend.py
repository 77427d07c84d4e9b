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
        ("1205.5元", "一千二百零五元五角"),
        ("第1名", "第一名"),
        ("ＡＢＣ１２３", "ABC一二三"),
        ("１＋１＝２", "一加一等于二"),
    ],
)
def test_normalize(text, spoken):
    assert normalize(text) == spoken


def test_split_sentences_keeps_pauses_and_drops_empty_pieces():
    pieces = split_sentences("你好，世界！……今天。!!")
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
        assert mapper.syllables("hi你好😀") == ["ei1", "chi1", "ai4", "ni2", "hao3"]
    assert "😀" in caplog.text and "skipping" in caplog.text


def test_only_the_unsayable_is_warned_about(mapper, caplog):
    with caplog.at_level(logging.WARNING):
        mapper.syllables("我用iPhone和Python写了一个TTS demo，α粒子，《好》")
    assert caplog.text == ""


@pytest.mark.parametrize(
    "text, syllables",
    [
        # Words said as words; acronyms and unknown words spelled with the voice's syllables.
        ("我用iPhone和Python写了一个TTS demo",
         "wo3 yong4 ai4 feng1 he2 pai4 sen1 xie3 le5 yi2 ge4 ti4 ti4 ai4 si1 dei1 mou5"),
        ("CPU和GPU", "xi1 pi1 you1 he2 ji4 pi1 you1"),
        ("OK", "ou1 kei4"),
        ("iOS", "ai4 ou1 ai4 si1"),
        ("Wi-Fi", "wai1 fei1"),
        ("v1.2.3", "wei1 yi4 dian3 er4 dian3 san1"),
        ("$5", "wu3 mei3 yuan2"),
        ("3-5个", "san1 dao4 wu3 ge4"),
        ("¥12.50", "shi2 er4 yuan2 wu3 jiao3"),
        ("1,234,567人", "yi4 bai3 er4 shi2 san1 wan4 si4 qian1 wu3 bai3 liu4 shi2 qi1 ren2"),
        ("α粒子", "a1 er3 fa3 li4 zi5"),
    ],
)
def test_the_engine_receives_these_syllables(mapper, text, syllables):
    """What the acoustic model is given, through the whole front end (normalize, cut, map)."""
    from ttsha.engine.embedded import EmbeddedEngine

    engine = EmbeddedEngine()
    said = [s for piece in engine.pieces(text) for s in mapper.syllables(piece.text)]
    assert " ".join(said) == syllables


def test_punctuation_is_silent(mapper, caplog):
    with caplog.at_level(logging.WARNING):
        assert mapper.syllables("《你好》“世界”") == ["ni2", "hao3", "shi4", "jie4"]
    assert caplog.text == ""


def test_nothing_sayable_gives_no_ids(mapper):
    assert mapper.ids("😀…") == []
    assert len(mapper.ids("hello")) == len(mapper.phones("hello")) + 1  # spelled: 哈喽


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_require_text_refuses_empty(text):
    with pytest.raises(InputError) as info:
        require_text(text)
    assert info.value.code == "empty_text"


def test_long_numbers_never_overflow_the_reader():
    # cn2an refuses more than 16 digits; such numbers are read digit by digit.
    assert normalize("1" * 20 + ".5") == "一" * 20 + "点五"
    assert normalize("0" * 20 + "%") == "百分之" + "零" * 20
    assert normalize("12.34.56%") == "十二点三十四点五十六%"
    assert normalize("12-5%") == "百分之十二到百分之五"


#: Inputs that made a number pattern retry from every digit of a run (O(n^2)).
ADVERSARIAL = {
    "digits": lambda n: "1" * n,
    "digits then space": lambda n: "1" * (n - 1) + " ",
    "long decimal": lambda n: "1" * (n // 2) + "." + "1" * (n // 2),
    "percent signs": lambda n: "1%" * (n // 2),
    "units": lambda n: "1km/h " * (n // 6),
    "unit letters after digits": lambda n: ("1" * 50 + "k") * (n // 51),
    "dotted runs": lambda n: ("1" * 20 + ".") * (n // 21),
    "slashes": lambda n: ("1" * 20 + "/") * (n // 21),
    "signs": lambda n: "-1" * (n // 2),
    "dates": lambda n: "2026年11月" * (n // 9),
    "spaces before percent": lambda n: "1" + " " * (n - 2) + "x",
    "mixed": lambda n: ("12.5%3km/h 2026-11-23 7:30 1/2 -3.5℃ 13812345678 " * n)[:n],
    # The readings added for issue 19: each rule's worst case.
    "thousands groups": lambda n: "1" + ",234" * (n // 4),
    "thousands then a digit": lambda n: ("1" + ",234" * 10 + "5") * (n // 42),
    "broken thousands": lambda n: "1,23" * (n // 4),
    "money signs": lambda n: "$" * n,
    "money ranges": lambda n: "¥1.5-" * (n // 5),
    "currency codes": lambda n: "USD" * (n // 3),
    "amounts before codes": lambda n: "1" * (n - 3) + "US",
    "yuan decimals": lambda n: "1.5" * (n // 3) + "元",
    "range chains": lambda n: "1-" * (n // 2),
    "range with spaces": lambda n: "1" + " " * (n - 3) + "-x",
    "unit ranges": lambda n: "1kg-" * (n // 4),
    "year ranges": lambda n: "1990-" * (n // 5),
    "date dashes": lambda n: "日-" * (n // 2),
    "time ranges": lambda n: "9:00-" * (n // 5),
    "ratios": lambda n: "1:" * (n // 2),
    "versions": lambda n: "v" + "1." * (n // 2),
    "dotted numbers": lambda n: "1." * (n // 2),
    "model numbers": lambda n: ("AB" + "1" * 20) * (n // 22),
    "code words": lambda n: "电话" + "1" * (n - 2),
    "code words repeated": lambda n: "电话1" * (n // 3),
    "hyphenated letters": lambda n: "a-" * (n // 2),
    "domains": lambda n: "a." * (n // 2),
    "clock times": lambda n: "1 p" * (n // 3),
}


def _front_end_seconds(text: str, repeats: int = 5) -> float:
    """The fastest of a few runs of what the request thread does with new text.

    Counted in this thread's CPU time, not wall time: on a machine shared by
    busy test suites, wall time mostly measures the wait for a core.
    """
    import time

    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time()
        split_sentences(normalize(text), max_len=40)
        best = min(best, time.thread_time() - started)
    return best


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_front_end_is_linear_on_adversarial_text(name):
    """A scaling check, not a speed target: 8x the text may cost 8x the time, not 64x.

    Timed as the fastest of five runs at each size and allowed 3x slack over
    linear, so a busy 2-core machine does not fail it; the quadratic
    patterns this guards against took 16x-60x.
    """
    make = ADVERSARIAL[name]
    small, large = make(1000), make(8000)
    ratio = _front_end_seconds(large) / max(_front_end_seconds(small), 1e-5)
    growth = len(large) / len(small)
    assert ratio < 3 * growth, f"{name}: {growth:.0f}x the text took {ratio:.1f}x the time"


def test_unpunctuated_text_is_cut_into_sayable_pieces():
    pieces = split_sentences("的" * 200, max_len=40)
    assert [len(p.text) for p in pieces] == [40] * 5
    assert [p.pause_s for p in pieces] == [0.0] * 5
    pieces = split_sentences("你好，" + "我" * 50 + "。再见", max_len=40)
    assert [len(p.text) for p in pieces] == [2, 25, 25, 2]
    assert [p.pause_s for p in pieces] == [0.15, 0.0, 0.3, 0.0]


def test_cut_long_prefers_spaces_and_keeps_phrases_whole():
    from ttsha.engine.frontend import cut_long

    assert cut_long("一二三四 五六七八九", 8) == ["一二三四", "五六七八九"]
    # 银行 is read yin2 hang2 only as a phrase: the cut moves before it.
    assert cut_long("我我我我我银行我我我我", 8) == ["我我我我我", "银行我我我我"]
    assert cut_long("我我我我我我我我我我我", 8) == ["我我我我我我", "我我我我我"]
    assert cut_long("短句", 8) == ["短句"]

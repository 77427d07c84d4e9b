"""The pronunciation lexicon: loading, validation, and the phones the engine then receives."""

from __future__ import annotations

import time

import pytest

from ttsha.config import EngineConfig
from ttsha.engine import create_engine
from ttsha.engine.embedded import EmbeddedEngine, find_asset_dir
from ttsha.engine.frontend import PhoneMapper
from ttsha.engine.lexicon import EMPTY, MAX_WORD, load, parse, pinyin_marks, read_mark
from ttsha.errors import ConfigError

LEXICON = """
[pinyin]
"重庆" = "chong2 qing4"
"行长" = "hang2 zhang3"
"曾小贤" = "zeng1 xiao3 xian2"
"仇" = "qiu2"
GitHub = "ji1 te4 ha1 bu4"
"绿" = "lü4"

[text]
ttsha = "T T S 哈"
CEO = "首席执行官"
"""


@pytest.fixture(scope="module")
def mapper():
    return PhoneMapper.from_file(find_asset_dir() / "baker_mapper.json")


def said(text, mapper, lexicon=None):
    """The syllables the embedded engine's acoustic model is given for ``text``."""
    engine = EmbeddedEngine()
    return " ".join(s for piece in engine.pieces(text, lexicon) for s in mapper.syllables(piece.text))


@pytest.fixture
def lexicon(tmp_path):
    path = tmp_path / "lexicon.toml"
    path.write_text(LEXICON, encoding="utf-8")
    return load(path)


def test_entries_are_read(lexicon):
    assert lexicon.pinyin["重庆"] == ("chong2", "qing4")
    assert lexicon.pinyin["绿"] == ("lv4",)  # ü written as the voice writes it
    assert lexicon.text["ttsha"] == "T T S 哈"
    assert len(lexicon.fingerprint) == 16


def test_an_entry_changes_the_phones_the_engine_receives(lexicon, mapper):
    # Surnames pypinyin reads as the common word.
    assert said("曾小贤找仇先生", mapper) == "ceng2 xiao3 xian2 zhao3 chou2 xian1 sheng1"
    assert said("曾小贤找仇先生", mapper, lexicon) == "zeng1 xiao3 xian2 zhao3 qiu2 xian1 sheng1"
    ids = mapper.ids(EmbeddedEngine().pieces("曾小贤", lexicon)[0].text)
    assert ids[1:3] == [mapper.symbol_to_id[p] for p in ("z", "eng1")]


def test_latin_words_match_whole_and_in_any_case(lexicon, mapper):
    assert said("我在github上", mapper, lexicon) == "wo3 zai4 ji1 te4 ha1 bu4 shang4"
    # GitHubs is another word: spelled
    assert said("GitHubs", mapper, lexicon).startswith("ji4 ai4 ti4")


def test_replacement_text_is_read_as_text(lexicon, mapper):
    assert said("ttsha的CEO", mapper, lexicon) == "ti4 ti4 ai4 si1 ha1 de5 shou3 xi2 zhi2 xing2 guan1"


def test_the_longest_word_wins(tmp_path, mapper):
    lexicon = parse({"pinyin": {"行": "hang2", "行长": "xing2 zhang3"}}, "t")
    assert said("行长行", mapper, lexicon) == "xing2 zhang3 hang2"


def test_marks_survive_cutting_and_never_come_from_users(mapper):
    marks = pinyin_marks(["hang2", "lv4", "er5"])
    assert [read_mark(c) for c in marks] == ["hang2", "lv4", "er5"]
    # A user cannot forge a mark: the normalizer removes such characters.
    assert said("好" + marks, mapper) == "hao3"
    long_word = parse({"pinyin": {"行": "hang2"}}, "t")
    assert said("行" * 100, mapper, long_word) == " ".join(["hang2"] * 100)


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"pinyin": {"重庆": "chong qing4"}}, "pinyin.重庆: bad pinyin 'chong qing4': 'chong' has no tone number"),
        ({"pinyin": {"重庆": "chonq2 qing4"}}, "pinyin.重庆: bad pinyin 'chonq2 qing4': 'chonq2' is not a pinyin"),
        ({"pinyin": {"重庆": "chong6 qing4"}}, "pinyin.重庆: bad pinyin"),
        ({"pinyin": {"重庆": "chong2"}}, "pinyin.重庆: 2 characters but 1 syllables"),
        ({"pinyin": {"重庆": ""}}, "pinyin.重庆: bad pinyin '': no syllables"),
        ({"pinyin": {"重庆": 3}}, "pinyin.重庆: expected a string"),
        ({"pinyin": {"3Q": "san1 kiu1"}}, "pinyin.3Q: a [pinyin] word is Chinese characters and Latin letters only"),
        ({"pinyin": {"重": "chong2"}, "text": {"重": "虫"}}, "text.重: the word is listed twice"),
        ({"pinyin": {"x" * (MAX_WORD + 1): "a1"}}, "a word has at most"),
        ({"text": {" 空": "kong"}}, "cannot be empty or start or end with a space"),
        ({"readings": {}}, "readings: unknown table"),
        ({"pinyin": "重庆"}, "pinyin: expected a table"),
    ],
)
def test_a_bad_lexicon_is_refused_naming_the_entry(data, problem):
    with pytest.raises(ConfigError) as info:
        parse(data, "/etc/ttsha/lexicon.toml")
    assert info.value.message.startswith("/etc/ttsha/lexicon.toml: ")
    assert problem in info.value.message


def test_a_bad_file_is_refused_at_engine_creation(tmp_path):
    path = tmp_path / "lexicon.toml"
    path.write_text('[pinyin]\n"重庆" = "chong2 qing9"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"lexicon.toml: pinyin.重庆: bad pinyin"):
        create_engine(EngineConfig(lexicon=path))
    path.write_text("[pinyin\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a valid TOML lexicon"):
        create_engine(EngineConfig(lexicon=path))


def test_a_missing_file_is_an_empty_lexicon_until_it_appears(tmp_path, caplog):
    path = tmp_path / "lexicon.toml"
    lexicon = load(path)
    assert lexicon.fingerprint == "" and "does not exist" in caplog.text
    assert not lexicon.changed_on_disk()
    path.write_text(LEXICON, encoding="utf-8")
    assert lexicon.changed_on_disk()
    assert load(path).pinyin["重庆"] == ("chong2", "qing4")


def test_fingerprint_follows_the_entries_not_the_layout():
    one = parse({"pinyin": {"重庆": "chong2 qing4", "行": "hang2"}}, "t")
    same = parse({"pinyin": {"行": "HANG2", "重庆": "chong2  qing4"}}, "t")
    other = parse({"pinyin": {"重庆": "zhong4 qing4", "行": "hang2"}}, "t")
    assert one.fingerprint == same.fingerprint != other.fingerprint
    assert EMPTY.fingerprint == ""


def test_matching_is_linear_in_the_text():
    """A lexicon of many overlapping words costs at most its longest word per character."""
    words = {"行" * n: " ".join(["hang2"] * n) for n in range(1, MAX_WORD + 1)}
    words.update({"行" * (MAX_WORD - 1) + "x": " ".join(["hang2"] * (MAX_WORD - 1) + ["ai4"])})
    lexicon = parse({"pinyin": words}, "t")

    def cost(text):
        best = float("inf")
        for _ in range(5):
            started = time.thread_time()
            lexicon.mark_pinyin(text)
            best = min(best, time.thread_time() - started)
        return best

    small, large = "行" * 1000, "行" * 8000
    assert cost(large) / max(cost(small), 1e-5) < 3 * 8


def test_the_shipped_example_loads(mapper):
    from pathlib import Path

    example = load(Path(__file__).parents[2] / "conf" / "lexicon" / "lexicon.toml")
    assert example.pinyin["曾小贤"] == ("zeng1", "xiao3", "xian2") and example.text["CEO"] == "首席执行官"
    assert said("仇先生在GitHub", mapper, example) == "qiu2 xian1 sheng1 zai4 ji1 te4 ha1 bu4"


def test_the_loaded_engine_is_given_the_lexicon_reading(embedded_engine, monkeypatch):
    """Through the real engine's stream: the symbol ids its acoustic model receives."""
    lexicon = parse({"pinyin": {"曾小贤": "zeng1 xiao3 xian2"}}, "t")
    received = []
    real = embedded_engine._acoustic

    def spy(ids, prosody):
        received.append(ids)
        return real(ids, prosody)

    monkeypatch.setattr(embedded_engine, "_acoustic", spy)
    audio = list(embedded_engine.stream("曾小贤", lexicon=lexicon)) + list(embedded_engine.stream("曾小贤"))
    assert sum(len(a) for a in audio) > 0
    names = {v: k for k, v in embedded_engine.mapper.symbol_to_id.items()}
    with_lexicon, without = ([names[i] for i in ids] for ids in received)
    assert with_lexicon[1:3] == ["z", "eng1"] and without[1:3] == ["c", "eng2"]
    assert with_lexicon[3:] == without[3:]

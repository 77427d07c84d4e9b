"""``ttsha doctor``'s checks, called directly."""

from __future__ import annotations

from ttsha.config import parse
from ttsha.doctor import FAIL, OK, SKIP, WARN, check_lexicon


def test_lexicon_check(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    path = models / "lexicon.toml"

    def check(where=path):
        return check_lexicon(parse({"engine": {"lexicon": str(where)},
                                    "replicate": {"local_models": str(models)}}))

    assert check_lexicon(parse({})).status == SKIP
    assert check().status == WARN and "does not exist" in check().detail
    path.write_text('[pinyin]\n"重庆" = "chong2 qing4"\n', encoding="utf-8")
    assert check().status == OK and "1 readings" in check().detail
    path.write_text('[pinyin]\n"重庆" = "chong2"\n', encoding="utf-8")
    assert check().status == FAIL and "pinyin.重庆" in check().detail
    elsewhere = tmp_path / "lexicon.toml"
    elsewhere.write_text('[text]\nCEO = "首席执行官"\n', encoding="utf-8")
    assert check(elsewhere).status == WARN and "standby gets no copy" in check(elsewhere).detail

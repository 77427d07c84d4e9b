"""The drill's traffic: seeded texts, the mix, the schedule (pure)."""

from __future__ import annotations

import random

import pytest

from ttsha.drill.traffic import (
    HOT_TEXTS,
    KINDS,
    Mix,
    capacity_text,
    new_seed,
    new_text,
    rate_for_load,
    schedule,
    seeded_text,
    tag,
)
from ttsha.errors import UsageError


def test_new_texts_differ_between_runs_and_from_every_other_kind_of_text():
    a = {new_text(111111, i) for i in range(400)}
    b = {new_text(222222, i) for i in range(400)}
    assert len(a) == len(b) == 400  # unique within a run
    assert not a & b  # a second drill's new texts are new to the nodes, not cache hits
    assert not a & set(HOT_TEXTS)
    assert not a & {capacity_text(111111, i) for i in range(400)}
    assert not a & {seeded_text(111111, i) for i in range(1, 9)}
    assert all(tag(111111) in text for text in a)  # the report's seed is in the text


def test_a_seed_tag_is_short_and_names_one_seed():
    tags = {tag(seed) for seed in range(100_000, 1_000_000, 7)}
    assert len(tags) == len(range(100_000, 1_000_000, 7))
    assert len(tag(999_999)) == 3 and tag(0) == tag(0)[:1] and len(tag(123_456_789)) == 5


def test_seeds_are_fresh():
    seeds = {new_seed() for _ in range(50)}
    assert len(seeds) > 45 and all(100_000 <= s < 1_000_000 for s in seeds)


def test_schedule_is_evenly_spaced_bounded_and_follows_the_mix():
    plan = schedule(rate=20, duration=100, mix=Mix(0.5, 0.25, 0.25), rng=random.Random(7))
    assert len(plan) == 2000
    assert [p.at for p in plan[:3]] == [0.0, 0.05, 0.1] and plan[-1].at < 100
    share = {k: sum(p.kind == k for p in plan) / len(plan) for k in KINDS}
    assert share["new"] == pytest.approx(0.5, abs=0.05)
    assert share["hot"] == pytest.approx(0.25, abs=0.05) and share["fetch"] == pytest.approx(0.25, abs=0.05)
    # The same seed gives the same drill; another seed another one.
    assert schedule(20, 100, Mix(), random.Random(7)) == schedule(20, 100, Mix(), random.Random(7))
    assert schedule(20, 100, Mix(), random.Random(7)) != schedule(20, 100, Mix(), random.Random(8))
    assert len(schedule(1000, 10**6, Mix(), random.Random(1))) == 100_000  # bounded in count
    assert schedule(0, 10, Mix(), random.Random(1)) == []
    assert {p.kind for p in schedule(10, 10, Mix(new=1, hot=0, fetch=0), random.Random(1))} == {"new"}


def test_mix_parse_and_validation():
    assert Mix.parse("new=2,hot=1,fetch=1") == Mix(2, 1, 1)
    assert Mix.parse("new=1").share("new") == 1.0 and Mix.parse("new=1").share("fetch") == 0.0
    assert Mix(2, 1, 1).to_dict() == {"new": 0.5, "hot": 0.25, "fetch": 0.25}
    assert Mix().describe() == "50 % new, 25 % hot, 25 % fetch"
    for bad, message in (("new=-1,hot=1", "non-negative"), ("new=0,hot=0", "above 0"), ("cold=1", "KIND=WEIGHT"),
                         ("new", "KIND=WEIGHT"), ("new=x", "expected a number"), ("new=1,new=2", "twice"),
                         ("new=nan", "non-negative"), ("new=inf", "non-negative")):
        with pytest.raises(UsageError, match=message):
            Mix.parse(bad)


def test_rate_for_load_puts_the_asked_share_of_capacity_in_new_texts():
    assert rate_for_load(0.8, 10.0, Mix(0.5, 0.25, 0.25)) == pytest.approx(16.0)  # 8 new texts/s of 16
    assert rate_for_load(0.8, 10.0, Mix(1, 0, 0)) == pytest.approx(8.0)
    assert rate_for_load(0.5, 10.0, Mix(0, 1, 1)) == pytest.approx(5.0)

from __future__ import annotations

import errno
import os
import time

import pytest

from ttsha.errors import StoreError
from ttsha.store import AudioStore, normalize_key_text, result_id

BASE = dict(engine="embedded", model_version="v1", voice="baker", emotion="neutral", speed=1.0, sample_rate=24000,
            text="你好")


def test_ids_are_stable_and_depend_on_every_parameter():
    rid = result_id(**BASE)
    assert rid == result_id(**BASE) and AudioStore.valid_id(rid)
    assert result_id(**{**BASE, "text": " 你好 "}) == rid  # whitespace is not content
    assert result_id(**{**BASE, "text": "你好　"}) == rid  # nor full-width spaces
    for key, value in [("engine", "sambert"), ("model_version", "v2"), ("voice", "x"), ("emotion", "sad"),
                       ("speed", 1.1), ("sample_rate", 16000), ("text", "您好")]:
        assert result_id(**{**BASE, key: value}) != rid, key


def test_a_lexicon_is_part_of_the_id_and_no_lexicon_keeps_the_old_ids():
    rid = result_id(**BASE)
    assert result_id(**BASE, lexicon="") == rid
    # The id as it was computed before lexicons existed: results stored then stay hits.
    assert rid == "c035e83b3a68f936fbfb39dccd1050e3"
    one, two = result_id(**BASE, lexicon="0123456789abcdef"), result_id(**BASE, lexicon="fedcba9876543210")
    assert len({rid, one, two}) == 3


def test_normalize_key_text():
    assert normalize_key_text("ＡＢ  c\n d") == "AB c d"


def test_put_get_sidecar_first(tmp_path, monkeypatch):
    store = AudioStore(tmp_path)
    rid = result_id(**BASE)
    order = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append(os.path.basename(b)), real_replace(a, b)))
    stored = store.put(rid, b"RIFFdata", {"text": "你好"})
    assert order == [f"{rid}.json", f"{rid}.wav"]
    assert stored.path == tmp_path / rid[:2] / f"{rid}.wav"
    got = store.get(rid)
    assert got.path.read_bytes() == b"RIFFdata" and got.meta["text"] == "你好" and got.meta["id"] == rid
    assert oct(got.path.stat().st_mode & 0o777) == "0o644"
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize("bad", ["", "../../etc/passwd", "0" * 31, "g" * 32, "A" * 32, "0" * 33])
def test_malformed_ids_are_absent(tmp_path, bad):
    store = AudioStore(tmp_path)
    assert store.get(bad) is None
    with pytest.raises(ValueError):
        store.audio_path(bad)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    store = AudioStore(tmp_path)
    rid = result_id(**BASE)

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError):
        store.put(rid, b"x", {})
    assert store.get(rid) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_failed_audio_write_removes_the_sidecar_it_wrote(tmp_path, monkeypatch):
    import ttsha.store

    store = AudioStore(tmp_path)
    rid = result_id(**BASE)
    real = ttsha.store.atomic_write

    def audio_fails(path, data, *a, **kw):
        if str(path).endswith(".wav"):
            raise OSError(errno.EIO, "Input/output error")
        return real(path, data, *a, **kw)

    monkeypatch.setattr(ttsha.store, "atomic_write", audio_fails)
    with pytest.raises(StoreError) as caught:
        store.put(rid, b"RIFF", {})
    assert caught.value.errno == errno.EIO and "Input/output error" in caught.value.message
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no orphan sidecar, no temp file


def test_space_floor_and_write_probe(tmp_path):
    store = AudioStore(tmp_path, min_free=0)
    assert store.free_bytes() > 0 and store.space_problem() is None
    store.probe_write()
    assert not list(tmp_path.iterdir())  # the probe leaves nothing behind
    store.min_free = 2**60
    assert "below min_free" in store.space_problem()


def test_gc(tmp_path):
    store = AudioStore(tmp_path)
    now = time.time()
    old = result_id(**{**BASE, "text": "旧"})
    new = result_id(**{**BASE, "text": "新"})
    store.put(old, b"old", {})
    store.put(new, b"new", {})
    for path in (store.audio_path(old), store.meta_path(old)):
        os.utime(path, (now - 10 * 86400, now - 10 * 86400))
    stale_tmp = tmp_path / old[:2] / ".x.wav.abc.tmp"
    stale_tmp.write_bytes(b"partial")
    os.utime(stale_tmp, (now - 20 * 86400, now - 20 * 86400))
    young_tmp = tmp_path / new[:2] / ".y.wav.abc.tmp"
    young_tmp.write_bytes(b"being written")

    dry = store.gc(7 * 86400, dry_run=True, now=now)
    assert {e.id for e in dry} == {old, stale_tmp.name}
    assert store.get(old) is not None and stale_tmp.exists()  # dry run touches nothing

    meta_size = store.meta_path(old).stat().st_size
    removed = store.gc(7 * 86400, dry_run=False, now=now)
    assert {e.id for e in removed} == {old, stale_tmp.name}
    assert store.get(old) is None and not store.meta_path(old).exists() and not stale_tmp.exists()
    assert store.get(new) is not None and young_tmp.exists()
    entry = next(e for e in removed if e.id == old)
    assert entry.files[0].suffix == ".wav"  # audio goes before its sidecar
    assert entry.bytes == len(b"old") + meta_size

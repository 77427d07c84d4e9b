"""Only regular files inside the root leave the node (issue 16, item 3), on
both replication paths, against a real sshd."""

from __future__ import annotations

import os
import threading

import pytest

from ttsha.replicate.daemon import Replicator
from ttsha.replicate.link import peer_for
from ttsha.replicate.local import NotSendable, open_inside
from ttsha.replicate.sync import scan_local, sync
from ttsha.store import AudioStore

from ..replicate.test_audio import arrived, put_results, wait_for


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text("do not send me")
    return path


def test_inotify_path_does_not_follow_a_symlink_renamed_into_the_store(rep_config, secret):
    """The issue's attack: ln -s /etc/secret store/ab/.x.tmp && mv store/ab/.x.tmp store/ab/<id>.wav."""
    src, dst = rep_config.store.path, rep_config.replicate.remote_store
    store = AudioStore(src)
    replicator = Replicator(rep_config)
    thread = threading.Thread(target=replicator.run, kwargs={"install_signals": False, "models": False}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: replicator.links["standby"].connected, 30)
        (src / "ab").mkdir(exist_ok=True)
        link = src / "ab" / ".x.tmp"
        link.symlink_to(secret)
        os.rename(link, src / "ab" / ("ab" + "0" * 62 + ".wav"))
        # A directory symlinked into the store, then a real result: the result arrives, nothing else.
        (src / "cd").symlink_to(secret.parent, target_is_directory=True)
        ids = put_results(store, 0, 2)
        assert wait_for(lambda: arrived(src, dst, ids), 30)
        assert wait_for(lambda: replicator.links["standby"].queue.depth() == 0, 10)
    finally:
        replicator.stop()
        thread.join(10)
    sent = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()}
    assert not any("do not send me" in (dst / rel).read_text(errors="replace") for rel in sent)
    assert not (dst / "ab" / ("ab" + "0" * 62 + ".wav")).exists()
    assert not (dst / "cd").exists()


def test_scan_path_sends_only_regular_files_inside_the_root(rep_config, secret):
    src, dst = rep_config.store.path, rep_config.replicate.remote_store
    (src / "ab").mkdir()
    (src / "ab" / "real.wav").write_bytes(b"RIFF real")
    (src / "ab" / "out.wav").symlink_to(secret)
    (src / "ab" / "in.wav").symlink_to(src / "ab" / "real.wav")
    os.mkfifo(src / "ab" / "fifo.wav")
    (src / "ef").symlink_to(secret.parent, target_is_directory=True)
    assert set(scan_local(src)) == {"ab/real.wav", "ab/in.wav"}  # a link inside the root: its target's content
    peer = peer_for(rep_config, "standby", str(dst)).connect()
    try:
        result = sync(src, peer, delete=False)
    finally:
        peer.close()
    assert result.files_sent == 2
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == ["ab/in.wav", "ab/real.wav"]
    assert (dst / "ab" / "in.wav").read_bytes() == b"RIFF real"


def test_open_inside_refuses_links_at_any_level_and_special_files(tmp_path, secret):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"ok")
    (root / "a" / "inlink").symlink_to(root / "a" / "f")
    (root / "a" / "link").symlink_to(secret)
    (root / "dirlink").symlink_to(secret.parent, target_is_directory=True)
    os.mkfifo(root / "a" / "fifo")
    f, st = open_inside(root, "a/f")
    with f:
        assert f.read() == b"ok" and st.st_size == 2
    f, st = open_inside(root, "a/inlink")
    with f:
        assert f.read() == b"ok"
    for rel in ("a/link", "dirlink/secret.txt", "a/fifo"):
        with pytest.raises(NotSendable):
            open_inside(root, rel)
    with pytest.raises(FileNotFoundError):
        open_inside(root, "a/missing")
    with pytest.raises(Exception, match="leaves"):
        open_inside(root, "../outside/secret.txt")

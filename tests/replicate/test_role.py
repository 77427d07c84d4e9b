"""The models job follows the role the monitor gives this node (no sshd needed)."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import replace

import pytest

from ttsha.cli import main
from ttsha.config import Config, MonitorConfig, NodeConfig, ReplicateConfig, ServeConfig, to_toml
from ttsha.protocol import RoleVerifier
from ttsha.replicate import daemon
from ttsha.replicate.daemon import Replicator

from ..monitor.conftest import free_port
from ..server.conftest import SECRET, SERVE, FakeEngine, Node, RoleSigner


@pytest.fixture
def node(tmp_path):
    node = Node(FakeEngine(), tmp_path / "store", SERVE, roles=RoleVerifier(SECRET, "a"))
    node.monitor = RoleSigner()
    yield node
    node.close()


def tell(node: Node, role: str) -> None:
    """What the monitor's probe does (a signed claim)."""
    conn = http.client.HTTPConnection(node.host, node.port, timeout=5)
    conn.request("GET", "/health", headers=node.monitor.claim(role))
    conn.getresponse().read()
    conn.close()


def config_for(tmp_path, port: int, models: str = "primary") -> Config:
    (tmp_path / "models").mkdir(exist_ok=True)
    secret = tmp_path / "secret"
    if not secret.exists():
        secret.write_bytes(SECRET)
        secret.chmod(0o600)
    return Config(
        serve=ServeConfig(host="127.0.0.1", port=port),
        monitor=MonitorConfig(secret_file=secret),
        nodes={"a": NodeConfig(url=f"http://127.0.0.1:{port}"), "b": NodeConfig(url="http://127.0.0.3:8900")},
        replicate=ReplicateConfig(peer="b", models=models, local_models=tmp_path / "models",
                                  queue_file=tmp_path / "queue.sqlite", interval=3600.0),
    )


def test_models_follow_the_role_told_by_the_monitor(tmp_path, node):
    replicator = Replicator(config_for(tmp_path, node.port))
    turn, why = replicator.models_turn()
    assert not turn and why.startswith("role unknown")  # no probe yet
    tell(node, "backup")
    assert replicator.models_turn() == (False, "this node is backup in the gateway; models flow from the primary")
    tell(node, "primary")
    assert replicator.models_turn() == (True, "this node is the primary")
    tell(node, "nonsense")  # ignored: not a role
    assert replicator.models_turn()[0] is True
    tell(node, "active")  # a gateway routing active-active while this node's configuration says otherwise
    turn, why = replicator.models_turn()
    assert not turn and "set the same mode on the nodes" in why


def test_a_node_whose_canary_fails_sends_no_models_whatever_its_role(tmp_path, node):
    """Its model may be the damaged one: copied, it would replace the good one on the others."""
    replicator = Replicator(config_for(tmp_path, node.port))
    always = Replicator(config_for(tmp_path, node.port, "always"))
    tell(node, "primary")
    assert replicator.models_turn() == (True, "this node is the primary")
    node.engine.output = "silence"  # what a broken model says
    assert node.service._canary_once(blocking=True) is not None
    tell(node, "primary")
    for job in (replicator, always):
        turn, why = job.models_turn()
        assert not turn and why.startswith("the local serve's canary fails") and "damaged" in why, why
    node.engine.output = "speech"
    assert node.service._canary_once(blocking=True) is None
    assert replicator.models_turn() == (True, "this node is the primary")
    assert always.models_turn()[0] is True


def test_in_active_active_models_flow_from_the_models_source_only(tmp_path):
    """Every node of three runs the same configuration; only the source sends, whatever the roles say."""
    nodes = {name: NodeConfig(url=f"http://127.0.0.{i + 2}:8900") for i, name in enumerate(("a", "b", "c"))}
    base = replace(config_for(tmp_path, 8900), nodes=nodes, monitor=MonitorConfig(mode="active-active"),
                   replicate=ReplicateConfig(models_source="b", local_models=tmp_path / "models",
                                             queue_file=tmp_path / "queue.sqlite"))
    turns = {}
    for name in nodes:
        replicator = Replicator(replace(base, serve=replace(base.serve, node=name)))
        assert sorted(replicator.links) == sorted(set(nodes) - {name})  # to every other node
        turns[name] = replicator.models_turn()
    assert {name: turn for name, (turn, _) in turns.items()} == {"a": False, "b": True, "c": False}
    assert "models source b" in turns["a"][1]
    # Without models_source: the highest-priority node, the same on every node.
    nodes["c"] = replace(nodes["c"], priority=200)
    unset = replace(base, nodes=nodes, replicate=replace(base.replicate, models_source=""))
    assert [Replicator(replace(unset, serve=replace(unset.serve, node=n))).models_turn()[0] for n in nodes] == [
        False, False, True]


def test_a_role_the_monitor_stopped_repeating_is_unknown(tmp_path, node, monkeypatch):
    """A node cut off from the gateway stops sending models as a primary."""
    replicator = Replicator(config_for(tmp_path, node.port))
    tell(node, "primary")
    assert replicator.models_turn()[0] is True
    node.service.role_at -= daemon.ROLE_FRESH_S + 1
    turn, why = replicator.models_turn()
    assert not turn and why.startswith("role unknown")


def test_fixed_modes_and_an_unreachable_node(tmp_path):
    port = free_port()  # nothing listens there
    assert Replicator(config_for(tmp_path, port, "always")).models_turn()[0] is True
    assert Replicator(config_for(tmp_path, port, "never")).models_turn()[0] is False
    turn, why = Replicator(config_for(tmp_path, port)).models_turn()
    assert not turn and f"127.0.0.1:{port}" in why


def test_models_loop_sends_at_once_when_the_node_becomes_primary(tmp_path, node, monkeypatch):
    monkeypatch.setattr(daemon, "ROLE_CHECK_S", 0.05)
    replicator = Replicator(config_for(tmp_path, node.port))
    calls = []
    monkeypatch.setattr(replicator, "sync_models", lambda: calls.append(time.monotonic()) or _Result())
    tell(node, "backup")
    thread = threading.Thread(target=replicator._models_loop, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        assert calls == []  # a backup never sends
        tell(node, "primary")
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) == 1  # at once, not after the hour-long interval
        time.sleep(0.5)
        assert len(calls) == 1  # then every interval
        tell(node, "backup")
        deadline = time.monotonic() + 5
        while "backup" not in replicator.stats["models_turn"] and time.monotonic() < deadline:
            time.sleep(0.02)  # until the loop has seen it
        assert "backup" in replicator.stats["models_turn"]
        tell(node, "primary")  # primary again (a failback): sends again at once
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) == 2
    finally:
        replicator.stop()
        thread.join(5)
    assert "primary" in replicator.stats["models_turn"]


def test_a_new_term_as_primary_sends_even_if_the_loop_missed_the_backup_in_between(tmp_path, node, monkeypatch):
    """primary -> backup -> primary between two checks (a switchover and back): a new role_since, so it sends."""
    monkeypatch.setattr(daemon, "ROLE_CHECK_S", 0.5)
    replicator = Replicator(config_for(tmp_path, node.port))
    calls = []
    monkeypatch.setattr(replicator, "sync_models", lambda: calls.append(time.monotonic()) or _Result())
    tell(node, "primary")
    thread = threading.Thread(target=replicator._models_loop, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) == 1
        tell(node, "backup")
        tell(node, "primary")  # well within one check interval
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) == 2
    finally:
        replicator.stop()
        thread.join(5)


class _Result:
    files_sent = bytes_sent = deleted = 0


def test_once_models_is_refused_on_a_backup(tmp_path, node, capsys):
    cfg = tmp_path / "ttsha.toml"
    cfg.write_text(to_toml(config_for(tmp_path, node.port)))
    tell(node, "backup")
    code = main(["--config", str(cfg), "replicate", "--once", "models"])
    err = capsys.readouterr().err
    assert code == 6 and "this node is backup" in err and 'models = "always"' in err


def test_models_setting_is_validated(tmp_path):
    from ttsha.config import load
    from ttsha.errors import ConfigError

    cfg = tmp_path / "ttsha.toml"
    cfg.write_text('[replicate]\nmodels = true\n')
    with pytest.raises(ConfigError, match="replicate.models"):
        load(cfg)
    cfg.write_text('[replicate]\nmodels = "never"\n')
    assert load(cfg).replicate == replace(ReplicateConfig(), models="never")

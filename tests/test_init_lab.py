"""``ttsha init`` for two nodes and a gateway, against ``config check`` and the lab.

``ttsha lab up`` writes its own configurations (ttsha.lab.layout) and takes
none: instead of handing it init's files, this test holds init's output and
the lab's generated configurations equal key for key on what makes the
system work (who each host is, whom it replicates to, how the gateway reaches
and ranks the nodes). What the lab sets differently on purpose (paths under
its directory, its fast probe timings, one sshd port per node on loopback,
the drills' start commands) is listed in ``LAB_ONLY`` and left out.
"""

from __future__ import annotations

from fnmatch import fnmatch

import pytest

from ttsha.bootstrap import init_gateway, init_node
from ttsha.cli import main
from ttsha.config import load, parse, replication_peers, this_node
from ttsha.lab.layout import LabLayout, lab_settings, standby_settings
from ttsha.nginx import initial_roles, node_address

#: Keys the lab sets for a machine of its own, not for the system's shape: paths
#: under its directory, one sshd port per node on loopback, the drills' start
#: commands, fast timings for a shared machine, the role secret it generates.
LAB_ONLY = ("store.path", "replicate.local_models", "replicate.remote_*", "replicate.queue_file",
            "replicate.key_file", "replicate.known_hosts", "replicate.interval", "nodes.*.ssh_port",
            "nodes.*.ssh_user", "nodes.*.start_command", "nodes.*.power_on_command", "nodes.*.store",
            # The lab's node files double as its gateway's, which ranks the nodes; init ranks them in
            # the gateway's file only.
            "nodes.*.priority",
            "monitor.*", "nginx.*", "drill.*", "serve.drain_timeout")


def flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and key != "voices":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def node_shape(config) -> dict:
    """What a node's configuration must agree on: who it is, whom it copies to, what it serves."""
    return {
        "this node": this_node(config),
        "serve.host": config.serve.host,
        "serve.port": config.serve.port,
        "replication peers": replication_peers(config),
        "engine.engine": config.engine.engine,
        "replicate.models": config.replicate.models,
        "replicate.ack": config.replicate.ack,
        **{f"nodes.{name}.url": node.url for name, node in config.nodes.items()},
        **{f"nodes.{name}.ssh_host": node.ssh_host for name, node in config.nodes.items()},
    }


def gateway_shape(config) -> dict:
    """What a gateway's configuration must agree on: the nodes, how Nginx reaches them, who leads first."""
    return {
        "monitor.mode": config.monitor.mode,
        "nginx.listen": config.nginx.listen,
        "first roles": initial_roles(config.nodes),
        **{f"nodes.{name}.address": node_address(node) for name, node in config.nodes.items()},
        **{f"nodes.{name}.ssh_host": node.ssh_host for name, node in config.nodes.items()},
    }


@pytest.fixture
def lab(tmp_path):
    layout = LabLayout(root=tmp_path / "lab", node_ports={"primary": 18901, "standby": 18902}, gateway_port=18080,
                       ssh_port=18022)
    primary = lab_settings(layout, "nginx", "ttsha")
    return layout, parse(primary), parse(standby_settings(layout, primary))


def test_init_writes_what_config_check_accepts_and_the_lab_runs(lab, tmp_path, capsys):
    layout, lab_primary, lab_standby = lab
    urls = {name: layout.url(name) for name in ("primary", "standby")}
    # The lab's node names are role names on purpose: init must not confuse them either.
    written = {
        "primary": init_node("primary", urls["primary"], "standby", urls["standby"], "embedded",
                             tmp_path / "primary/ttsha.toml", tmp_path / "primary/id_ed25519"),
        "standby": init_node("standby", urls["standby"], "primary", urls["primary"], "embedded",
                             tmp_path / "standby/ttsha.toml", tmp_path / "standby/id_ed25519"),
        "gateway": init_gateway(dict(urls), layout.gateway_url.removeprefix("http://"),
                                tmp_path / "gateway/ttsha.toml", tmp_path / "gateway/id_ed25519",
                                address="127.0.0.1"),
    }
    for result in written.values():
        assert main(["config", "check", str(result.config_path)]) == 0
    capsys.readouterr()
    init = {name: load(result.config_path) for name, result in written.items()}

    for name, lab_config in (("primary", lab_primary), ("standby", lab_standby)):
        ours, theirs = node_shape(init[name]), node_shape(lab_config)
        assert ours == theirs, {k: (ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys()
                                if ours.get(k) != theirs.get(k)}
        # Every other key is the same, or one the lab sets for its own machine.
        mine, lab_keys = flat(init[name].to_dict()), flat(lab_config.to_dict())
        other = sorted(k for k in mine.keys() | lab_keys.keys() if mine.get(k) != lab_keys.get(k)
                       and not any(fnmatch(k, pattern) for pattern in LAB_ONLY))
        assert other == [], other
        assert ours["this node"] == name
        assert ours["replication peers"] == ["standby" if name == "primary" else "primary"]
    # The lab's gateway runs from the primary's file; init writes the gateway its own.
    ours, theirs = gateway_shape(init["gateway"]), gateway_shape(lab_primary)
    differ = {k: (ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
    # ssh_host: the gateway logs in to each node at its own address; so does the lab (one loopback address each).
    assert differ == {}, differ
    assert ours["first roles"] == {"primary": "primary", "standby": "backup"}
    # What to run on the other side names the right host each time.
    assert any("trust-host 127.0.0.3" in step for step in written["primary"].next_steps)
    assert any("trust-host 127.0.0.2" in step for step in written["standby"].next_steps)
    assert sum("trust-host" in step for step in written["gateway"].next_steps) == 2

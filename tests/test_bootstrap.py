"""``ttsha init``: configs that `config check` accepts, keys, next steps, refusals."""

from __future__ import annotations

import stat

import pytest

from ttsha.bootstrap import init_gateway, init_node, parse_nodes
from ttsha.cli import main
from ttsha.config import load
from ttsha.doctor import FAIL, OK, check_secret
from ttsha.errors import EXIT_REFUSED, EXIT_USAGE, Refused, UsageError

A, B = "http://192.0.2.11:8900", "http://192.0.2.12:8900"


def test_two_nodes_and_a_gateway_check_and_name_each_other(tmp_path):
    a = init_node("node-a", A, "node-b", B, "sambert", tmp_path / "a/ttsha.toml", tmp_path / "a/id_ed25519")
    b = init_node("node-b", B, "node-a", A, "embedded", tmp_path / "b/ttsha.toml", tmp_path / "b/id_ed25519")
    g = init_gateway(parse_nodes(f"node-a={A},node-b={B}"), "0.0.0.0:80", tmp_path / "g/ttsha.toml",
                     tmp_path / "g/id_ed25519", address="192.0.2.10")
    ca, cb, cg = (load(r.config_path) for r in (a, b, g))
    assert (ca.serve.host, ca.serve.port, ca.replicate.peer) == ("192.0.2.11", 8900, "node-b")
    assert (cb.serve.host, cb.replicate.peer, cb.engine.engine) == ("192.0.2.12", "node-a", "embedded")
    assert ca.replicate.key_file == tmp_path / "a/id_ed25519"
    assert ca.replicate.known_hosts == tmp_path / "a/known_hosts"
    assert list(cg.nodes) == ["node-a", "node-b"]
    assert cg.nodes["node-a"].priority > cg.nodes["node-b"].priority  # the first named is the preferred primary
    assert cg.nginx.listen == "0.0.0.0:80" and cg.nodes["node-b"].ssh_host == "192.0.2.12"
    for result in (a, b, g):
        assert stat.S_IMODE(result.key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(result.config_path.stat().st_mode) == 0o640
        assert result.public_key.startswith("ssh-ed25519 ")
    # What to run on the other side carries this host's public key, restricted to its address.
    assert any('from="192.0.2.11",' in s and a.public_key in s for s in a.next_steps)
    assert any("trust-host 192.0.2.12" in s for s in a.next_steps)
    assert sum('from="192.0.2.10",' in s and g.public_key in s for s in g.next_steps) == 2
    # One role secret: made on the gateway (0600), the same path in every file, each node told to copy it.
    secret = tmp_path / "g/monitor.secret"
    assert cg.monitor.secret_file == secret and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_text().strip()) == 64 and check_secret(cg).status == OK
    assert ca.monitor.secret_file == tmp_path / "a/monitor.secret" and not ca.monitor.secret_file.exists()
    assert any("role secret" in s and "install -m 600 -o ttsha" in s for s in a.next_steps)
    assert check_secret(ca).status == FAIL  # until it is copied: doctor says so
    # Only the gateway's file ranks the nodes; the two node files do not contradict each other.
    assert ca.nodes["node-a"].priority == ca.nodes["node-b"].priority


def test_every_key_is_written_with_its_help(tmp_path):
    result = init_node("a", A, "b", B, "embedded", tmp_path / "t.toml", tmp_path / "k")
    text = result.config_path.read_text()
    assert "# synthesis engine\nengine = \"embedded\"" in text
    assert 'retention = "7d"' in text  # durations in the units an admin writes


def test_an_existing_config_is_kept_unless_forced(tmp_path):
    out = tmp_path / "ttsha.toml"
    out.write_text("# mine\n")
    with pytest.raises(Refused):
        init_node("a", A, "b", B, "embedded", out, tmp_path / "k")
    assert out.read_text() == "# mine\n" and not (tmp_path / "k").exists()
    init_node("a", A, "b", B, "embedded", out, tmp_path / "k", force=True)
    assert load(out).replicate.peer == "b"


def test_an_existing_key_is_reused(tmp_path):
    first = init_node("a", A, "b", B, "embedded", tmp_path / "1.toml", tmp_path / "k")
    second = init_node("a", A, "b", B, "embedded", tmp_path / "2.toml", tmp_path / "k")
    assert first.public_key == second.public_key


@pytest.mark.parametrize("spec, message", [
    ("a=http://h:1", "at least two"),
    ("a=http://h:1,a=http://h:2", "named twice"),
    ("a,b=http://h:2", "NAME=URL"),
    ("a=http://h:99999,b=http://h:2", "invalid port"),
    ("a=ftp://h:1,b=http://h:2", "expected http://HOST:PORT"),
    ("a b=http://h:1,b=http://h:2", "node names"),
])
def test_bad_node_lists_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_nodes(spec)


def test_cli_exit_codes(tmp_path, capsys):
    out = tmp_path / "n.toml"
    argv = ["init", "node", "a", "--url", A, "--peer", f"b={B}", "--out", str(out), "--key", str(tmp_path / "k")]
    assert main(argv) == 0
    assert "next:" in capsys.readouterr().err
    assert main(argv) == EXIT_REFUSED
    assert main(["init", "node", "a", "--url", A, "--peer", "b", "--out", str(tmp_path / "x.toml")]) == EXIT_USAGE
    assert main(["init", "node", "a", "--url", A, "--peer", f"a={B}", "--out", str(tmp_path / "x.toml"),
                 "--key", str(tmp_path / "k2")]) == EXIT_USAGE
    assert not (tmp_path / "x.toml").exists()

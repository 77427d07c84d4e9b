"""``ttsha doctor``'s checks, called directly."""

from __future__ import annotations

import shutil
from pathlib import Path

from ttsha.bootstrap import init_node
from ttsha.cli import main
from ttsha.config import parse
from ttsha.doctor import (
    FAIL,
    GATEWAY,
    NODE,
    OK,
    SKIP,
    UNITS,
    WARN,
    Host,
    check_config,
    check_dirs,
    check_lexicon,
    check_nginx_config,
    check_ssh,
    check_store,
    check_units,
    check_user,
    host_roles,
)
from ttsha.nginx import prefix_commands, write_gateway_files

from .monitor.conftest import free_port, need


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


# A host end to end: roles, user, directories, SSH against a real sshd, nginx -t, units.

def _node_config(tmp_path, **replicate):
    """Node a (this host: [serve] matches its url) replicating to node b."""
    return parse({"serve": {"host": "127.0.0.2", "port": 8900},
                  "nodes": {"a": {"url": "http://127.0.0.2:8900"},
                            "b": {"url": "http://127.0.0.3:8900", "ssh_host": "127.0.0.3"}},
                  "replicate": {"peers": ["b"], "local_models": str(tmp_path / "models"),
                                "queue_file": str(tmp_path / "state/replicate.sqlite"), **replicate}})


def _gateway_config(tmp_path, nginx_binary="nginx"):
    test_command, reload_command = prefix_commands(nginx_binary, tmp_path / "gw")
    return parse({"nodes": {"a": {"url": "http://127.0.0.2:8900"}, "b": {"url": "http://127.0.0.3:8900"}},
                  "nginx": {"listen": "127.0.0.1:8080", "site_file": str(tmp_path / "site.conf"),
                            "upstream_file": str(tmp_path / "upstream.conf"),
                            "test_command": test_command, "reload_command": reload_command}})


def test_what_a_host_is_follows_the_config(tmp_path):
    assert host_roles(parse({"store": {"path": str(tmp_path)}})) == frozenset()
    assert host_roles(_node_config(tmp_path)) == {NODE}
    gateway = _gateway_config(tmp_path)
    assert host_roles(gateway) == {GATEWAY}  # [nodes] names no node at [serve]'s address
    # The lab's shape: a node whose host also carries the gateway's written site.
    both = parse({"serve": {"host": "127.0.0.2", "port": 8900}, "nodes": {"a": {"url": "http://127.0.0.2:8900"}},
                  "nginx": {"site_file": str(tmp_path / "site.conf")}})
    assert host_roles(both) == {NODE}
    (tmp_path / "site.conf").write_text("# rendered\n")
    assert host_roles(both) == {NODE, GATEWAY}
    assert "checked as gateway and node a" in check_config(both, Host(roles=host_roles(both), user="root")).detail
    assert "no host role" in check_config(parse({}), Host()).detail


def test_user_and_directories(tmp_path):
    config = _node_config(tmp_path)
    node = Host(roles=frozenset({NODE}), user="root")
    assert check_user(Host()).status == SKIP
    assert check_user(node).status == OK
    missing_user = check_user(Host(roles=frozenset({NODE}), user="ttsha-nobody-here"))
    assert missing_user.status == FAIL and "sysusers" in missing_user.hint
    # A directory that does not exist is not writable, whatever its parent allows.
    dirs = {c.name: c for c in check_dirs(config, node)}
    assert dirs["models dir"].status == FAIL and "does not exist" in dirs["models dir"].detail
    assert "tmpfiles" in dirs["models dir"].hint
    (tmp_path / "models").mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o700)
    assert [c.status for c in check_dirs(config, node)] == [OK, OK]
    # Owned by root, mode 0700: the service user (here nobody) cannot write it.
    nobody = check_dirs(config, Host(roles=frozenset({NODE}), user="nobody"))
    assert [c.status for c in nobody] == [FAIL, FAIL] and "chown -R nobody:" in nobody[0].hint
    store = check_store(parse({"store": {"path": str(tmp_path / "state")}}), Host(roles=frozenset({NODE}),
                                                                                  user="nobody"))
    assert store.status == FAIL and "not writable by nobody" in store.detail
    (tmp_path / "models").chmod(0o777)
    # Writable itself, but under pytest's private (0700) directory: nobody cannot reach it.
    assert check_dirs(config, Host(roles=frozenset({NODE}), user="nobody"))[0].status == FAIL
    import tempfile

    open_tree = Path(tempfile.mkdtemp(prefix="ttsha-doctor-"))
    try:
        open_tree.chmod(0o755)
        (open_tree / "models").mkdir(mode=0o777)
        (open_tree / "models").chmod(0o777)
        (open_tree / "state").mkdir()
        reachable = _node_config(open_tree)
        assert check_dirs(reachable, Host(roles=frozenset({NODE}), user="nobody"))[0].status == OK
    finally:
        shutil.rmtree(open_tree)
    assert check_dirs(config, Host()) == []  # not a node: nothing of a node's to check


def test_ssh_key_known_hosts_and_a_verified_login(tmp_path, sshd_running):
    sshd = sshd_running
    known = tmp_path / "known_hosts"
    user = "root"
    config = parse({"serve": {"host": "127.0.0.2", "port": 8900},
                    "nodes": {"a": {"url": "http://127.0.0.2:8900"},
                              "b": {"url": "http://127.0.0.3:8900", "ssh_host": "127.0.0.1",
                                    "ssh_port": sshd.port, "ssh_user": user}},
                    "replicate": {"peers": ["b"], "key_file": str(sshd.client_key), "known_hosts": str(known)}})
    node = Host(roles=frozenset({NODE}), user="root")

    def checks():
        return {c.name: c for c in check_ssh(config, node)}

    # No known_hosts yet: the peer is not trusted, and no login is tried.
    got = checks()
    assert got["ssh key"].status == OK
    assert got["known_hosts b"].status == FAIL and f"trust-host 127.0.0.1 --port {sshd.port}" in got[
        "known_hosts b"].hint
    assert "ssh b" not in got
    # A different key recorded for that address: the login refuses it.
    kind, other = (sshd.root / "id_ed25519.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} {other}\n")
    got = checks()
    assert got["known_hosts b"].status == OK and got["ssh b"].status == FAIL and "CHANGED" in got["ssh b"].detail
    # A damaged line (bad base64): a FAIL naming the file, not a traceback.
    known.write_text(f"[127.0.0.1]:{sshd.port} {kind} AAAA!!notbase64\n")
    got = checks()
    assert got["known_hosts"].status == FAIL and str(known) in got["known_hosts"].hint
    # The real host key: logged in, verified.
    known.write_text(sshd.known_hosts_line())
    got = checks()
    assert got["ssh b"].status == OK and "host key verified" in got["ssh b"].detail
    # A key others can read is refused before anything else.
    sshd.client_key.chmod(0o644)
    assert checks()["ssh key"].status == FAIL and f"chmod 600 {sshd.client_key}" == checks()["ssh key"].hint
    sshd.client_key.chmod(0o600)
    # The peer's sshd is gone.
    sshd.stop()
    got = checks()
    assert got["ssh b"].status == FAIL and "is sshd running on 127.0.0.1" in got["ssh b"].hint


def test_nginx_accepts_the_rendered_files(tmp_path):
    nginx_binary = need("nginx", "nginx")
    config = _gateway_config(tmp_path, nginx_binary)
    gateway = Host(roles=frozenset({GATEWAY}))
    assert check_nginx_config(config, Host(roles=frozenset({NODE}))).status == SKIP
    first = check_nginx_config(config, gateway)
    assert first.status == WARN and "is not written yet" in first.detail and "ttsha nginx render" in first.hint
    write_gateway_files(config)
    assert check_nginx_config(config, gateway).status == OK
    # The upstream file the monitor rewrites is tested too, as it is.
    (tmp_path / "upstream.conf").write_text("upstream ttsha_nodes { server ; }\n")
    broken = check_nginx_config(config, gateway)
    assert broken.status == FAIL and "nginx -t refuses it" in broken.detail
    write_gateway_files(config, force=True)
    (tmp_path / "site.conf").write_text((tmp_path / "site.conf").read_text() + "# edited by hand\n")
    assert "differs from what the configuration renders" in check_nginx_config(config, gateway).detail


def test_units_enabled_read_from_the_unit_files(tmp_path):
    systemctl = need("systemctl", "systemd")
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "timers.target.wants").mkdir(parents=True)
    for unit in UNITS[NODE]:
        shutil.copy(Path(__file__).parents[1] / "systemd" / unit, units / unit)
    node = Host(roles=frozenset({NODE}), root=root, systemctl=systemctl)
    got = {c.name: c for c in check_units(node)}
    assert [c.status for c in got.values()] == [FAIL] * 3
    assert got["ttsha-serve.service"].hint == "systemctl enable --now ttsha-serve.service"
    (units / "multi-user.target.wants/ttsha-serve.service").symlink_to("/etc/systemd/system/ttsha-serve.service")
    (units / "timers.target.wants/ttsha-gc.timer").symlink_to("/etc/systemd/system/ttsha-gc.timer")
    got = {c.name: c.status for c in check_units(node)}
    assert got == {"ttsha-serve.service": OK, "ttsha-replicate.service": FAIL, "ttsha-gc.timer": OK}
    gateway = {c.name: c for c in check_units(Host(roles=frozenset({GATEWAY}), root=root, systemctl=systemctl))}
    assert gateway["ttsha-monitor.service"].detail == "not installed"
    unknown = check_units(Host(roles=frozenset({NODE}), systemctl=None))
    assert len(unknown) == 1 and unknown[0].status == WARN and unknown[0].detail.startswith("unknown")


def test_cli_on_a_host_written_by_init(tmp_path, capsys):
    # Ports nothing listens on: the machine is shared, and the lab may be up on its fixed addresses.
    a, b = (f"http://127.0.0.1:{free_port()}" for _ in range(2))
    init_node("a", a, "b", b, "embedded", tmp_path / "ttsha.toml", tmp_path / "id_ed25519")
    argv = ["--config", str(tmp_path / "ttsha.toml"), "doctor"]
    assert main(argv) == 1  # no node answers, b's host key is not recorded: FAILs, each with its fix
    out = capsys.readouterr().out
    # (Long temp paths wrap inside the table's cells: only short words are looked for.)
    assert "known_hosts b" in out and "trust-host 127.0.0.1" in out and "known_hosts a" not in out
    assert main([*argv, "--role", "gateway"]) == 1
    out = capsys.readouterr().out
    assert "nginx -t" in out and "known_hosts a" in out  # a gateway logs in to every node

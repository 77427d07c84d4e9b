"""ttsha.lab.layout: tests."""

from __future__ import annotations

from ttsha import lab as lab_module


def test_the_lab_configs_are_built_as_tables_and_differ_only_where_the_standby_does(tmp_path):
    import dataclasses

    from ttsha.config import load

    layout = lab_module.LabLayout(tmp_path, {"primary": 8901, "standby": 8902}, 8081, 2222)
    lab_module.write_config(layout, "/usr/sbin/nginx")
    primary, standby = load(tmp_path / "ttsha.toml"), load(tmp_path / "ttsha-standby.toml")
    assert (primary.serve.host, primary.serve.port) == (lab_module.NODE_HOSTS["primary"], 8901)
    assert (standby.serve.host, standby.serve.port) == (lab_module.NODE_HOSTS["standby"], 8902)
    assert primary.nginx.test_command[:2] == ["/usr/sbin/nginx", "-t"] and primary.monitor.rise == 3
    assert (primary.replicate.peer, standby.replicate.peer) == ("standby", "primary")
    assert standby.replicate.remote_store == tmp_path / "primary" / "audio"
    assert standby.replicate.queue_file == tmp_path / "standby" / "replicate.sqlite"
    # Nothing else differs: the standby is the primary's configuration turned round.
    same = dataclasses.replace(standby, serve=primary.serve, replicate=primary.replicate)
    assert same == primary


def test_a_pair_s_gateways_differ_from_the_primary_only_in_their_gateway_settings(tmp_path):
    import dataclasses

    from ttsha.config import load
    from ttsha.lab.pair import LAB_NET

    layout = lab_module.LabLayout(tmp_path, {"primary": 8901, "standby": 8902}, 8080, 2222, gateways=2)
    lab_module.write_config(layout, "/usr/sbin/nginx")
    primary = load(tmp_path / "ttsha.toml")
    assert primary.serve.host == LAB_NET.node_address(0) and layout.gateway_url == f"http://{LAB_NET.vip}:8080"
    a, b = (load(tmp_path / name / "ttsha.toml") for name in ("gw-a", "gw-b"))
    assert (a.monitor.gateway_id, b.monitor.gateway_id) == ("gw-a", "gw-b")
    assert a.monitor.control_socket != b.monitor.control_socket and a.monitor.secret_file == b.monitor.secret_file
    assert a.vrrp == b.vrrp and a.vrrp.vip == f"{LAB_NET.vip}/24"
    assert a.gateways["gw-a"].priority > a.gateways["gw-b"].priority
    assert a.nginx.listen == "0.0.0.0:8080"  # serves the VIP wherever keepalived puts it
    same = dataclasses.replace(a, nginx=primary.nginx, monitor=primary.monitor, vrrp=primary.vrrp,
                               gateways=primary.gateways)
    assert same == primary

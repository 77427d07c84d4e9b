"""Reading back the roles an upstream file routes by (the rest of nginx.py: tests/monitor, tests/security)."""

from __future__ import annotations

from ttsha.config import NginxConfig, NodeConfig
from ttsha.nginx import UpstreamController, render_upstream, roles_of

NODES = {"a": NodeConfig(url="http://127.0.0.2:8900"), "b": NodeConfig(url="http://127.0.0.3:8900"),
         "c": NodeConfig(url="http://127.0.0.4:8900")}


def test_the_roles_written_are_the_roles_read_back():
    text = render_upstream(NODES, {"a": "backup", "b": "primary"}, "12.5")
    assert roles_of(text) == {"a": "backup", "b": "primary", "c": "down"}  # unnamed nodes are down


def test_a_file_from_before_the_roles_map_is_read_from_its_comments():
    text = render_upstream(NODES, {"c": "primary", "a": "backup"})
    legacy = "\n".join(line for line in text.splitlines() if "$ttsha_roles" not in line)
    assert roles_of(legacy) == {"a": "backup", "b": "down", "c": "primary"}


def test_the_controller_names_the_primary_of_the_file_on_disk(tmp_path):
    upstream = tmp_path / "up.conf"
    controller = UpstreamController(NginxConfig(upstream_file=upstream), NODES)
    assert controller.current_primary() is None  # no file yet
    upstream.write_text(render_upstream(NODES, {"b": "primary", "a": "backup"}))
    assert controller.current_primary() == "b" and controller.current_roles()["a"] == "backup"
    # A node no longer configured is not named, whatever the file says.
    assert UpstreamController(NginxConfig(upstream_file=upstream), {"a": NODES["a"]}).current_primary() is None

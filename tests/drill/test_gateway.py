"""A gateway drill's orchestration against a real HTTP node (the network moves are the lab's: e2e)."""

from __future__ import annotations

import signal

import pytest

from ttsha.drill import Mix, TrafficSettings, run_gateway_drill
from ttsha.errors import Refused
from ttsha.faults import GatewayFault

from ..monitor.conftest import NodeProcess, free_port


class _Pair:
    """Gateway hosts whose VIP moves (or not) when the holder is faulted."""

    def __init__(self, moves: bool) -> None:
        self.holder, self.moves, self.calls = "gw-a", moves, []

    def holders(self) -> list[str]:
        return [self.holder]

    def kill_gateway(self, name: str) -> list[int]:
        self.calls.append(("kill", name))
        if self.moves:
            self.holder = "gw-b"
        return [1]

    def signal_gateway(self, name: str, roles: tuple[str, ...], sig: signal.Signals) -> list[int]:
        self.calls.append((sig.name, name))
        return [1]

    def start_gateway(self, name: str) -> None:
        self.calls.append(("start", name))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = NodeProcess("127.0.0.1", free_port(), tmp_path_factory.mktemp("store"))
    n.start()
    yield n
    n.close()


TRAFFIC = TrafficSettings(seed=7, duration=3.0, rate=10.0, concurrency=4, mix=Mix(), min_before=1.0)


def test_the_report_counts_requests_before_and_after_the_move_and_restores_the_gateway(node):
    pair = _Pair(moves=True)
    report = run_gateway_drill(node.url, GatewayFault(pair, "gw-a", "gateway-kill"), pair.holders,
                               lambda: "primary", TRAFFIC, check_interval=1.0)
    assert pair.calls == [("kill", "gw-a"), ("start", "gw-a")]
    assert report.took_over == "gw-b" and report.vip_moved_s is not None and report.vip_moved_s < 1.0
    assert report.before_move + report.after_move == report.requests > 20
    assert report.after_move >= 10 and report.failed == 0
    assert report.answered_s is not None and report.answered_s >= report.vip_moved_s
    assert report.primary_before == report.primary_after == "primary"
    assert report.missed == [] and report.to_dict()["passed"]


def test_a_vip_that_never_moves_and_a_changed_primary_are_missed(node):
    pair = _Pair(moves=False)
    primaries = iter(["primary", "standby"])
    report = run_gateway_drill(node.url, GatewayFault(pair, "gw-a", "gateway-kill"), pair.holders,
                               lambda: next(primaries), TRAFFIC, check_interval=1.0)
    assert report.vip_moved_s is None and report.after_move == 0 and report.before_move == report.requests
    assert any("did not move" in m for m in report.missed)
    assert "the primary node changed: primary -> standby" in report.missed


def test_a_drill_refuses_when_the_faulted_gateway_does_not_hold_the_vip_alone(node):
    pair = _Pair(moves=True)
    with pytest.raises(Refused, match="does not hold the virtual IP"):
        run_gateway_drill(node.url, GatewayFault(pair, "gw-b", "gateway-kill"), pair.holders, lambda: "primary",
                          TRAFFIC, check_interval=1.0)
    assert pair.calls == []

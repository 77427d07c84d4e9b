"""The node's side of the role protocol, without a server: which claims win."""

from __future__ import annotations

from ttsha.protocol import CLAIM_HEADER, ROLE_HEADER, RoleVerifier, sign_claim

SECRET = b"s" * 32


def test_the_later_takeover_wins_and_the_deposed_gateway_cannot_take_turns():
    """Two gateways that both believe they hold the virtual IP (a partition
    between them): the nodes follow the one whose epoch (takeover time) is
    higher, whatever the other one keeps sending with fresh timestamps."""
    clock = [1000.0]
    verifier = RoleVerifier(SECRET, "a", clock=lambda: clock[0])

    def claim(gateway: str, epoch: int, role: str):
        clock[0] += 0.1
        headers = sign_claim(SECRET, role, "a", gateway, epoch, now=clock[0])
        return verifier.verify({ROLE_HEADER: headers[ROLE_HEADER], CLAIM_HEADER: headers[CLAIM_HEADER]})

    assert claim("gw1", 1_000, "primary").claim is not None
    assert claim("gw2", 2_000, "backup").claim is not None  # took over later
    for _ in range(5):  # the deposed gateway keeps probing: it never wins back
        verdict = claim("gw1", 1_000, "primary")
        assert verdict.claim is None and verdict.reason == "stale epoch"
        assert claim("gw2", 2_000, "backup").claim is not None
    # The same epoch from another gateway (clocks alike to the millisecond) is not a licence either.
    verdict = claim("gw3", 2_000, "primary")
    assert verdict.claim is None and verdict.reason == "epoch held by another gateway"
    assert claim("gw1", 3_000, "primary").claim is not None  # a new takeover outranks
    assert verifier.stats()["epoch"] == 3_000


def test_a_request_arrival_stamp_is_believed_only_within_the_horizon():
    from ttsha.protocol import request_arrival

    now = 1_800_000_000.0
    assert request_arrival(f"t={now - 3.25:.3f}", now, 20) == now - 3.25
    assert request_arrival(f"{now - 1:.3f}", now, 20) == now - 1  # the bare form some proxies send
    assert request_arrival(f"t={now + 2:.3f}", now, 20) == now + 2  # a gateway clock ahead: its order holds
    # A forged or far-off stamp is held to the horizon: it cannot jump older work.
    assert request_arrival("t=0.000", now, 20) == now - 20
    assert request_arrival(f"t={now + 999:.3f}", now, 20) == now + 20
    for junk in (None, "", "t=", "t=soon", "t=1e9", "t=-5", "t=nan", "t=1.2.3", "t=" + "9" * 40, "t=١٢٣"):
        assert request_arrival(junk, now, 20) == now, junk

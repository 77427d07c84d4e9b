"""RPO 0 on the lab: the whole primary host dies the instant a client holds an acknowledgement.

Each round sends a burst of new texts through the gateway; the moment a
client has a complete 200 from the primary, the primary's serve, replicator
and sshd (with its sessions) are SIGKILLed at once, as a power cut would.
Every result a client was given must then answer 200 through the gateway,
byte for byte, from the node that is left. The crashed node is restored and
becomes the standby; the next round crashes the other node.

This holds with ``[replicate] ack = "standby"`` (the default on a pair). With
``ack = "local"`` the same test is expected to lose results sometimes (an
answer goes out before the replicator has copied it; README and
docs/architecture.md say so, and bench/rpo.py counts the losses).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import threading
import time

import pytest

from ttsha.lab import NODE_HOSTS, Lab, descendants, health

from .conftest import running_lab

pytestmark = pytest.mark.e2e

ROUNDS = 10
CLIENTS = 3
#: Each client goes on after the crash until this many answers (bounded in count and time).
AFTER_CRASH = 2


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory, "rpo-lab") as started:
        yield started


def node_health(lab: Lab, name: str) -> dict:
    conn = http.client.HTTPConnection(NODE_HOSTS[name], lab.layout().node_ports[name], timeout=2)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    except (OSError, ValueError):
        return {}
    finally:
        conn.close()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ready_for_a_round(lab: Lab) -> str:
    """Both nodes up in the monitor's eyes, the primary's acknowledgements synchronous; the primary."""
    def ready() -> bool:
        state = lab.monitor_state() or {}
        primary = state.get("primary")
        nodes = state.get("nodes", {})
        return (primary in NODE_HOSTS and all(nodes.get(n, {}).get("status") == "up" for n in NODE_HOSTS)
                and node_health(lab, primary).get("replication", {}).get("ack", {}).get("state") == "sync")

    wait_for(ready, 120, "both nodes up and the primary's acknowledgements synchronous")
    return lab.monitor_state()["primary"]


def crash(victims: list[int]) -> None:
    """SIGKILL all of a node's processes at once: its host is gone."""
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def restore(lab: Lab, name: str) -> None:
    """The host is back: its sshd first (the peer's replicator is waiting to send), then serve and its replicator."""
    lab.start_sshd(name)
    lab.start_node(name)
    lab.start_replicate(name)


def burst(lab: Lab, primary: str, round_no: int) -> tuple[list[tuple[str, str, str]], float | None]:
    """New texts from CLIENTS clients; crash ``primary`` at its first acknowledgement.

    Returns every acknowledgement (id, sha256 of the body, node address) and
    when the crash happened (None if the primary never answered).
    """
    layout = lab.layout()
    address = f"{NODE_HOSTS[primary]}:{layout.node_ports[primary]}"
    sshd = lab.pid(f"sshd-{primary}")
    # Its sessions too (the peer's replicator is connected through one): computed
    # now, since a killed sshd's children are no longer found below it.
    victims = [lab.pid(primary), lab.pid(f"replicate-{primary}"), sshd, *descendants(sshd)]
    acked: list[tuple[str, str, str]] = []
    crashed_at: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 60

    def client(n: int) -> None:
        after = 0
        conn = None
        for i in range(40):
            if after >= AFTER_CRASH or time.monotonic() > stop_at:
                return
            text = f"第{round_no}轮，客户端{n}的第{i}句新文本。"
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", layout.gateway_port, timeout=30)
                conn.request("POST", "/v1/synthesize", body=json.dumps({"text": text}),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()  # IncompleteRead unless the whole answer arrived
            except (OSError, http.client.HTTPException):
                conn = None
                continue  # not an acknowledgement
            if resp.status != 200:
                continue
            upstream = (resp.headers.get("X-Upstream") or "").split(",")[-1].strip()
            with lock:
                acked.append((resp.headers["X-Audio-Id"], hashlib.sha256(body).hexdigest(), upstream))
                if not crashed_at and upstream == address:
                    crash(victims)  # the instant a client holds the primary's answer
                    crashed_at.append(time.monotonic())
                elif crashed_at:
                    after += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return acked, (crashed_at[0] if crashed_at else None)


def test_no_acknowledged_result_is_lost_when_the_whole_primary_dies(lab):
    layout = lab.layout()
    totals = {"rounds": 0, "acked": 0, "from_crashed": 0}
    started = time.monotonic()
    for round_no in range(ROUNDS):
        primary = ready_for_a_round(lab)
        acked, crashed_at = burst(lab, primary, round_no)
        assert crashed_at is not None, f"round {round_no}: the primary never answered"
        address = f"{NODE_HOSTS[primary]}:{layout.node_ports[primary]}"
        lost = []
        for rid, digest, _ in acked:
            conn = http.client.HTTPConnection("127.0.0.1", layout.gateway_port, timeout=30)
            conn.request("GET", f"/v1/audio/{rid}.wav")
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status != 200 or hashlib.sha256(body).hexdigest() != digest:
                lost.append((rid, resp.status))
        assert lost == [], f"round {round_no}: acknowledged results lost after the crash of {primary}: {lost}"
        totals["rounds"] += 1
        totals["acked"] += len(acked)
        totals["from_crashed"] += sum(1 for *_, upstream in acked if upstream == address)
        restore(lab, primary)
        wait_for(lambda primary=primary: health(layout.url(primary)) == "ready", 120, f"{primary} back")
    print(f"\n{totals['rounds']} crashes, {totals['acked']} acknowledged results "
          f"({totals['from_crashed']} from the node that crashed), none lost, {time.monotonic() - started:.0f} s")
    assert totals["from_crashed"] >= ROUNDS

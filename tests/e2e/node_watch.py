"""An observer of the nodes' roles, run where the nodes are (e.g. ``ip netns exec``).

    python -m tests.e2e.node_watch SECRET NAME=URL[,NAME=URL...] SECONDS OUT.jsonl
        every 50 ms, each node's /health role, role_gateway and role_epoch
    python -m tests.e2e.node_watch SECRET NAME=URL
        one /health, printed as JSON (status 0 when it does not answer)

A node shows those details only to callers that sign like a gateway (a
role-less claim changes nothing), so the observer signs with the shared secret.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ttsha.failover import get_json
from ttsha.protocol import load_secret, probe_headers


def health(secret: bytes | None, name: str, url: str) -> dict:
    status, body, _ = get_json(url.rstrip("/") + "/health", 2.0, probe_headers(secret, name, "observer"))
    return {"status": status, **body}


def main(argv: list[str]) -> None:
    secret = load_secret(Path(argv[0]))
    nodes = dict(item.split("=", 1) for item in argv[1].split(","))
    if len(argv) == 2:
        (name, url), = nodes.items()
        print(json.dumps(health(secret, name, url)))
        return
    deadline = time.monotonic() + float(argv[2])
    with open(argv[3], "w", encoding="utf-8") as out:
        while time.monotonic() < deadline:
            for name, url in nodes.items():
                h = health(secret, name, url)
                out.write(json.dumps({"at": time.time(), "node": name, "role": h.get("role"),
                                      "gateway": h.get("role_gateway"), "epoch": h.get("role_epoch")}) + "\n")
            out.flush()
            time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1:])

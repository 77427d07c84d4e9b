"""keepalived's track script on a ttsha gateway: do this host's Nginx and monitor answer?

keepalived runs it every ``[vrrp] check_interval`` as::

    python -I -S .../ttsha/monitor/selfcheck.py LISTEN CONTROL_SOCKET

It needs the standard library and three small ttsha modules only
(``httpclient``, ``localsocket``, ``errors``), so it starts
in tens of milliseconds on a busy gateway; the full ``ttsha`` command line
takes several times longer, and a check slower than keepalived's timeout
would move the virtual IP away from a gateway that is fine. ``ttsha
keepalived check`` runs the same :func:`problems`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by keepalived: find the ttsha package beside it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ttsha import httpclient  # noqa: E402  (after the path above)
from ttsha.localsocket import NoAnswer, ask  # noqa: E402


def problems(listen: str, control_socket: Path, timeout: float = 0.8) -> list[str]:
    """Why this gateway should not hold the virtual IP (empty: it may)."""
    found = []
    host, _, port = listen.rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "*") else host.strip("[]")
    served = httpclient.get(httpclient.host_url(host, int(port), "/ttsha_generation"), timeout=timeout)
    if not served.status:
        found.append(f"nginx on {listen} does not answer: {served.error}")
    elif served.status != 200:
        found.append(f"nginx answered /ttsha_generation with {served.status}")
    try:
        reply = ask(Path(control_socket), {"op": "ping"}, timeout)
        if not reply.get("ok"):
            found.append(f"monitor answered {reply}")
    except NoAnswer as exc:
        found.append(f"monitor does not answer on {control_socket}: "
                     + ("no monitor listens" if exc.absent else exc.reason))
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: selfcheck.py LISTEN CONTROL_SOCKET", file=sys.stderr)
        return 2
    found = problems(args[0], Path(args[1]))
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

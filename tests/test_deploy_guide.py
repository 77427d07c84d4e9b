"""docs/deploy.md's commands, run wherever one machine can run them.

Every ``sh`` block of the guide is marked on the line before its fence:
``<!-- runnable -->`` blocks run here exactly as written, as root, in a
private mount namespace whose ``/etc``, ``/var/lib`` and ``/opt`` are
overlays on a scratch directory (what they write lands there; the machine's
own files are untouched); ``<!-- real hosts: why -->`` blocks need hosts
this machine cannot stand in for and are listed with their reason. The
nftables ruleset is checked with ``nft -c``.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ttsha.config import load

from .monitor.conftest import need, need_root

GUIDE = Path(__file__).parents[1] / "docs" / "deploy.md"
OVERLAID = ("/etc", "/var/lib", "/opt")
_BLOCK = re.compile(r"(?:<!-- (?P<mark>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    mark: str
    body: str
    line: int


def blocks() -> list[Block]:
    text = GUIDE.read_text(encoding="utf-8")
    return [Block(m["lang"], (m["mark"] or "").strip(), m["body"], text.count("\n", 0, m.start("body")))
            for m in _BLOCK.finditer(text)]


def shell_blocks() -> list[Block]:
    return [b for b in blocks() if b.lang == "sh"]


def runnable() -> list[Block]:
    return [b for b in shell_blocks() if b.mark == "runnable"]


def test_every_shell_block_is_run_or_says_why_not(capsys):
    unmarked = [b.line for b in shell_blocks() if b.mark != "runnable" and not b.mark.startswith("real hosts: ")]
    assert unmarked == [], f"docs/deploy.md lines {unmarked}: mark <!-- runnable --> or <!-- real hosts: why -->"
    assert len(runnable()) >= 3  # at least the three `ttsha init` blocks
    needs_hosts = [b for b in shell_blocks() if b.mark != "runnable"]
    assert needs_hosts and all(len(b.mark) > len("real hosts: ") + 5 for b in needs_hosts)  # a reason, not a tag
    with capsys.disabled():  # the list of what only real hosts can run, in the test log
        print("".join(f"\n  docs/deploy.md:{b.line}: {b.mark}" for b in needs_hosts))


def _isolated(tmp_path: Path) -> list[str]:
    """Shell lines that overlay OVERLAID on tmp_path inside the namespace the block runs in."""
    lines = []
    for where in OVERLAID:
        up, work = tmp_path / "up" / where.strip("/"), tmp_path / "work" / where.strip("/")
        up.mkdir(parents=True)
        work.mkdir(parents=True)
        lines.append(f"mount -t overlay overlay -o lowerdir={where},upperdir={up},workdir={work} {where}")
    return lines


@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"line{b.line}")
def test_runnable_block(block, tmp_path):
    need_root("the guide's commands run as root (and the overlays need it)")
    unshare = need("unshare", "util-linux")
    script = "\n".join(["set -euo pipefail", *_isolated(tmp_path), block.body])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("TTSHA_CONFIG", None)
    proc = subprocess.run([unshare, "--mount", "--propagation", "private", "--", "bash", "-c", script],
                          cwd=GUIDE.parents[1], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"docs/deploy.md line {block.line}:\n{block.body}\n{proc.stdout}\n{proc.stderr}"
    etc = tmp_path / "up" / "etc" / "ttsha"
    if "ttsha init" in block.body:
        config = load(etc / "ttsha.toml")
        # What the guide says init leaves: the config, the key (0600), the role secret's path.
        assert stat.S_IMODE((etc / "id_ed25519").stat().st_mode) == 0o600
        assert config.replicate.key_file == Path("/etc/ttsha/id_ed25519")
        assert config.monitor.secret_file == Path("/etc/ttsha/monitor.secret")
        assert "next:" in proc.stderr
        if "init gateway" in block.body:
            assert stat.S_IMODE((etc / "monitor.secret").stat().st_mode) == 0o600
            assert list(config.nodes) == ["node-a", "node-b"] and config.nginx.listen == "0.0.0.0:80"
        else:
            name = block.body.split("ttsha init node ", 1)[1].split()[0]
            assert f"{name}: " in " ".join(f"{n}: {c.url}" for n, c in config.nodes.items())
            assert config.replicate.peers == [{"node-a": "node-b", "node-b": "node-a"}[name]]


def test_firewall_ruleset_is_valid_nftables(tmp_path):
    nft = need("nft", "nftables")
    need_root("nft -c needs root")
    (ruleset,) = [b.body for b in blocks() if b.lang == "nft"]
    path = tmp_path / "ttsha.nft"
    path.write_text(ruleset)
    proc = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # The node ports are closed to all but the gateway and the peer, as the guide says.
    assert "tcp dport 8900 drop" in ruleset and "tcp dport 22 drop" in ruleset


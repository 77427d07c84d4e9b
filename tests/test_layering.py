"""The two sides of the system stay apart: node code never imports gateway code (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ttsha"

#: What runs on a node (ttsha serve, ttsha replicate, the node's half of drills).
NODE = ("engine", "server", "replicate", "store", "nodeproc", "audio")
#: What runs on a gateway only.
GATEWAY = ("monitor", "nginx", "failover", "drill", "keepalived", "lab", "cli")  # alert: both sides send alerts


def _modules(part: str) -> list[Path]:
    path = PACKAGE / part
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _imports(path: Path) -> set[str]:
    """Top-level ttsha modules ``path`` imports (absolute or relative)."""
    found = set()
    depth = len(path.relative_to(PACKAGE).parts) - 1  # how many dots reach ttsha/
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").startswith("ttsha."):
                found.add(node.module.split(".")[1])
            elif node.level and node.level - 1 == depth:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.level and node.level - 1 < depth and depth >= 1:
                found.add(path.relative_to(PACKAGE).parts[0])  # inside its own subpackage
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ttsha."))
    return found


def test_node_code_never_imports_gateway_code():
    offences = {str(path.relative_to(PACKAGE)): sorted(_imports(path) & set(GATEWAY))
                for part in NODE for path in _modules(part)}
    assert not {k: v for k, v in offences.items() if v}


def test_the_check_sees_an_import_when_there_is_one():
    assert "nginx" in _imports(PACKAGE / "failover.py") and "protocol" in _imports(PACKAGE / "server" / "app.py")

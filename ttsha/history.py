"""The failover history: switchovers and drills, one JSON line each.

Next to the monitor's state file (``failover-history.jsonl``), appended by
``ttsha failover`` and ``ttsha failover --drill``; read back by
:func:`entries`. A write that fails is logged, never raised: the event it
records has already happened.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from .config import Config

log = logging.getLogger(__name__)

FILE_NAME = "failover-history.jsonl"


def history_file(config: Config) -> Path:
    return Path(config.monitor.state_file).with_name(FILE_NAME)


def record(config: Config, entry: dict[str, Any]) -> None:
    """Append ``entry`` with its time (``at``, epoch seconds)."""
    path = history_file(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"at": time.time(), **entry}, ensure_ascii=False) + "\n")
    except OSError as exc:
        log.warning("cannot record the event in %s: %s", path, exc)


def entries(config: Config) -> list[dict[str, Any]]:
    """Every recorded event, oldest first (a line cut short by a crash is skipped)."""
    try:
        lines = history_file(config).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            found.append(entry)
    return found

"""Logging: rich on a terminal, one ``key=value`` line per event under systemd."""

from __future__ import annotations

import logging
import os
import sys


class _KeyValueFormatter(logging.Formatter):
    """``level=info logger=ttsha.engine msg="engine loaded engine=embedded …"``.

    journald adds its own timestamp, so none is written here.
    """

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace("\n", "\\n").replace('"', '\\"')
        line = f'level={record.levelname.lower()} logger={record.name} msg="{msg}"'
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", "\\n")
            line += f' exc="{exc}"'
        return line


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    return bool(os.environ.get("JOURNAL_STREAM")) or bool(os.environ.get("INVOCATION_ID"))


def setup(verbose: int = 0, force_plain: bool = False) -> None:
    """Configure the root logger once: WARNING, INFO with -v, DEBUG with -vv."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if not force_plain and sys.stderr.isatty() and not under_journald():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    # werkzeug's per-request lines carry terminal colours; ttsha keeps metrics instead.
    logging.getLogger("werkzeug").setLevel(logging.WARNING if verbose < 2 else logging.INFO)

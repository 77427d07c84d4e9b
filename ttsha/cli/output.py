"""Terminal output shared by the commands."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

#: Width of tables when output goes to a pipe, a log or CI rather than a terminal.
PIPED_WIDTH = 200


def literal(value: object, style: str = "") -> Text:
    """``value`` as text rich prints as is: no markup read from user or config
    text (``[engine]`` in a message stays ``[engine]``)."""
    return Text(str(value), style=style)


def error_line(message: str) -> Text:
    """``error: message`` with only the prefix styled."""
    return Text.assemble(("error:", "red"), " ", str(message))


def table_console() -> Console:
    """A console for tables: the terminal's width, or :data:`PIPED_WIDTH`
    when piped (rich would assume 80 columns and cut paths and hints)."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=PIPED_WIDTH)
    return console

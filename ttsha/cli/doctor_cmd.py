"""``ttsha doctor``."""

from __future__ import annotations

import click

from .. import doctor as checks
from . import Context, pass_ctx

_STYLE = {checks.OK: "green", checks.FAIL: "bold red", checks.WARN: "yellow", checks.SKIP: "dim"}


@click.command()
@pass_ctx
def doctor(ctx: Context) -> None:
    """Check this machine against the configuration: engine data, torch,
    modelscope, store, and Nginx/nodes/SSH when configured.

    Exits 1 when any check fails.

    \b
    Example:
      ttsha --config /etc/ttsha/ttsha.toml doctor
    """
    from rich.table import Table

    from .output import literal, table_console

    results = checks.run(ctx.config)
    table = Table(title="ttsha doctor")
    for column in ("check", "status", "detail", "hint"):
        table.add_column(column)
    for check in results:
        style = _STYLE.get(check.status, "")
        table.add_row(literal(check.name), literal(check.status, style), literal(check.detail), literal(check.hint))
    # Piped output (logs, CI) is not wrapped at 80 columns: hints stay on one line.
    table_console().print(table)
    if any(check.status == checks.FAIL for check in results):
        raise click.exceptions.Exit(1)

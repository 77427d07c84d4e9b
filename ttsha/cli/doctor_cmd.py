"""``ttsha doctor``."""

from __future__ import annotations

import click

from .. import doctor as checks
from . import Context, pass_ctx

_STYLE = {checks.OK: "green", checks.FAIL: "bold red", checks.WARN: "yellow", checks.SKIP: "dim"}


@click.command()
@click.option("--role", type=click.Choice(["auto", "node", "gateway", "both", "none"]), default="auto",
              show_default=True, help="Check this host as a node, a gateway, both or neither; auto: a node when "
              "[nodes] names it, a gateway when it names other nodes or the Nginx site is written here.")
@pass_ctx
def doctor(ctx: Context, role: str) -> None:
    """Check this host end to end against the configuration: engine data,
    torch, modelscope, store; on a node or gateway also the ttsha user, its
    directories, the SSH key, known_hosts and a verified login to each peer,
    nginx -t on the rendered files (gateway) and the units enabled.

    Each line says OK, WARN or FAIL (SKIP: does not apply) and the fix.
    Exits 1 when any check fails.

    \b
    Example:
      ttsha --config /etc/ttsha/ttsha.toml doctor
      ttsha doctor --role gateway
    """
    from rich.table import Table

    from .output import literal, table_console

    roles = {"node": {checks.NODE}, "gateway": {checks.GATEWAY}, "both": {checks.NODE, checks.GATEWAY},
             "none": set()}.get(role)
    host = checks.Host(roles=checks.host_roles(ctx.config) if roles is None else frozenset(roles))
    results = checks.run(ctx.config, host)
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

"""``ttsha keepalived render|check|notify``: the gateway pair's VRRP."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from .. import keepalived as vrrp
from ..fsutil import atomic_write
from . import Context, pass_ctx


@click.group()
def keepalived() -> None:
    """Two gateways share one virtual IP through Debian's keepalived.

    \b
    Examples:
      ttsha keepalived render --gateway gw-a      # /etc/keepalived/keepalived.conf, checked with keepalived -t
      ttsha keepalived check                      # keepalived's track script
    """


@keepalived.command()
@click.option("--gateway", "name", help="Which [gateways.NAME] this host is (default: the one whose address is local).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("/etc/keepalived/keepalived.conf"), show_default=True,
              help="Where to write; '-' prints it.")
@click.option("--ttsha", "ttsha_bin", help="Path of ttsha in the hooks (default: this ttsha).")
@pass_ctx
def render(ctx: Context, name: str | None, out: Path, ttsha_bin: str | None) -> None:
    """Write this gateway's keepalived.conf, after `keepalived -t` accepted it."""
    config = ctx.config
    name, _ = vrrp.this_gateway(config, name)
    binary = ttsha_bin or shutil.which("ttsha") or str(Path(sys.argv[0]).resolve())
    source = config.source.resolve() if config.source else None
    text = vrrp.render(config, name, ttsha_bin=binary, config_path=source)
    vrrp.validate(text)
    if str(out) == "-":
        click.echo(text, nl=False)
        return
    atomic_write(out, text, mode=0o640)  # it may hold the VRRP version 2 secret
    click.echo(f"wrote {out} for gateway {name}; reload keepalived: systemctl reload keepalived", err=True)


@keepalived.command()
@pass_ctx
def check(ctx: Context) -> None:
    """Exit 0 when this host's Nginx and monitor answer (keepalived's track script), else 1 with the reason."""
    problems = vrrp.check(ctx.config)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise click.exceptions.Exit(1)


@keepalived.command()
@click.option("--gateway", "name", required=True, help="This gateway's name.")
@click.argument("state", type=click.Choice(vrrp.STATES))
@pass_ctx
def notify(ctx: Context, name: str, state: str) -> None:
    """Raise the alert for a VRRP state change (keepalived's notify hook)."""
    vrrp.notify(ctx.config, name, state)

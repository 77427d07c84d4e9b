"""``ttsha config check|show``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import load, to_toml
from . import Context, pass_ctx


@click.group()
def config() -> None:
    """Validate or print the configuration.

    \b
    Examples:
      ttsha config check /etc/ttsha/ttsha.toml
      ttsha --config conf/ttsha.toml config show
    """


@config.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def check(ctx: Context, path: Path | None) -> None:
    """Validate a configuration file (default: the one in use).

    \b
    Example:
      ttsha config check /etc/ttsha/ttsha.toml
    """
    cfg = load(path) if path else ctx.config
    where = cfg.source or "built-in defaults"
    click.echo(f"{where}: OK", err=True)


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@pass_ctx
def show(ctx: Context, as_json: bool) -> None:
    """Print the effective configuration (file values over defaults).

    \b
    Example:
      ttsha config show --json
    """
    if as_json:
        click.echo(json.dumps(ctx.config.to_dict(), indent=2, ensure_ascii=False))
        return
    click.echo(to_toml(ctx.config), nl=False)


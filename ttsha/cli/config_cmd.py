"""``ttsha config check|show``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import load
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
    data = ctx.config.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    click.echo(_to_toml(data), nl=False)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    return json.dumps(str(value), ensure_ascii=False)


def _to_toml(data: dict) -> str:
    lines: list[str] = []
    for section, values in data.items():
        if section == "nodes":
            for name, node in values.items():
                lines.append(f"[nodes.{name}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in node.items()]
                lines.append("")
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)

"""``ttsha serve`` and ``ttsha gc``."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import parse_duration
from ..errors import UsageError
from . import Context, pass_ctx


@click.command()
@click.option("--host", help="Address to listen on (default: [serve] host).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default: [serve] port).")
@click.option("--store", "store_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Audio store directory (default: [store] path).")
@pass_ctx
def serve(ctx: Context, host: str | None, port: int | None, store_dir: Path | None) -> None:
    """Serve synthesis over HTTP on this node (API, health, metrics, web page).

    Binds at once, loads and warms up the model, then reports ready
    (/health answers 503 "starting" until then). SIGTERM drains in-flight
    requests; SIGHUP re-reads the configuration.

    \b
    Examples:
      ttsha serve --host 0.0.0.0 --port 8900
      curl -o hi.wav "http://127.0.0.1:8900/v1/synthesize?text=你好"
    """
    from ..log import setup
    from ..server.daemon import ServeDaemon

    setup(max(ctx.verbose, 1))  # a daemon logs its events
    cfg = ctx.config
    daemon = ServeDaemon(
        cfg,
        host or cfg.serve.host,
        cfg.serve.port if port is None else port,
        store_dir or cfg.store.path,
    )
    raise click.exceptions.Exit(daemon.run())


@click.command()
@click.option("--older-than", "older_than", metavar="DURATION", help="Age limit, e.g. 7d (default: [store] retention).")
@click.option("--store", "store_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Audio store directory (default: [store] path).")
@click.option("--yes", is_flag=True, help="Delete; without it, only show what would go.")
@pass_ctx
def gc(ctx: Context, older_than: str | None, store_dir: Path | None, yes: bool) -> None:
    """Remove stored results older than a limit (a dry run unless --yes).

    \b
    Examples:
      ttsha gc --older-than 7d
      ttsha gc --older-than 30d --yes
    """
    from ..store import AudioStore

    try:
        limit = parse_duration(older_than) if older_than else ctx.config.store.retention
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    store = AudioStore(store_dir or ctx.config.store.path)
    entries = store.gc(limit, dry_run=not yes)
    total = sum(e.bytes for e in entries)
    for entry in entries:
        click.echo(f"{'removed' if yes else 'would remove'} {entry.id} "
                   f"({entry.bytes} bytes, {entry.age_s / 86400:.1f} days old)")
    verb = "removed" if yes else "would remove (dry run; --yes deletes)"
    click.echo(f"{verb}: {len(entries)} results, {total / 2**20:.1f} MiB", err=True)

"""``ttsha replicate``: copy models and audio to the other nodes over SSH."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import UsageError
from . import Context, pass_ctx


@click.group(invoke_without_command=True)
@click.option("--once", type=click.Choice(["models", "audio"]), help="Run one job to completion instead of the daemon.")
@click.option("--dry-run", is_flag=True, help="With --once: list what would change (rsync -i style), change nothing.")
@click.option("--force", is_flag=True,
              help="With --once models: send (and delete on the peer) even when this node is not the primary.")
@click.option("--store", "store_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Audio store (default: [store] path).")
@click.pass_context
def replicate(click_ctx: click.Context, once: str | None, dry_run: bool, force: bool, store_dir: Path | None) -> None:
    """Replicate the model cache (every [replicate] interval) and the audio
    store (in real time, via inotify) to every node of [replicate] peers, over
    one verified SSH connection and one durable queue per peer. Nothing queued
    is lost across restarts or peer outages.

    \b
    Examples:
      ttsha replicate
      ttsha replicate --once models --dry-run
      ttsha replicate trust-host standby.example --port 22
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Context = click_ctx.obj
    from ..log import setup
    from ..replicate.daemon import Replicator

    if dry_run and once is None:
        raise UsageError("--dry-run needs --once models or --once audio")
    setup(max(ctx.verbose, 1))
    replicator = Replicator(ctx.config, store_dir)
    if once is None:
        raise click.exceptions.Exit(replicator.run())
    if once == "models":
        _once_models(replicator, dry_run, force)
    else:
        _once_audio(replicator, dry_run)


def _once_models(replicator, dry_run: bool, force: bool) -> None:
    from rich.progress import Progress

    if dry_run:  # changes nothing: it may look from any node
        for name, result in replicator.sync_models(dry_run=True).items():
            _print_changes(name, result)
        return
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("models", total=None)
        results = replicator.send_models_once(
            force=force, warn=lambda why: click.echo(f"warning: {why}", err=True),
            progress=lambda change, sent: progress.update(task, completed=sent))
    for name, result in results.items():
        click.echo(f"models to {name}: {result.files_sent} files sent ({result.bytes_sent} bytes), "
                   f"{result.deleted} deleted, {result.seconds:.2f} s", err=True)


def _once_audio(replicator, dry_run: bool) -> None:
    for name, result in replicator.sync_audio(dry_run=dry_run).items():
        if dry_run:
            _print_changes(name, result)
        else:
            click.echo(f"audio to {name}: {len(result.changes)} changes, {result.files_sent} files sent", err=True)


def _print_changes(peer: str, result) -> None:
    for change in result.changes:
        click.echo(change.itemize())
    click.echo(f"dry run for {peer}: {len(result.changes)} changes", err=True)


@replicate.command("trust-host")
@click.argument("host")
@click.option("--port", type=int, default=22, show_default=True)
@click.option("--yes", is_flag=True, help="Record without asking (after checking the fingerprint elsewhere).")
@pass_ctx
def trust_host(ctx: Context, host: str, port: int, yes: bool) -> None:
    """Show HOST's SSH key fingerprint and record it in [replicate] known_hosts.

    \b
    Example:
      ttsha replicate trust-host 10.0.0.2 --port 22
    """
    from ..errors import PeerUnreachable
    from ..replicate.transport import fetch_host_key, record_host_key

    try:
        key = fetch_host_key(host, port)
    except OSError as exc:
        raise PeerUnreachable(f"cannot reach {host}:{port}: {exc}") from None
    click.echo(f"{host}:{port} presents {key.get_name()} key {key.fingerprint}", err=True)
    if not yes and not click.confirm("Record it as trusted?", err=True):
        raise click.exceptions.Exit(1)
    record_host_key(ctx.config.replicate.known_hosts, host, port, key)
    click.echo(f"recorded in {ctx.config.replicate.known_hosts}", err=True)

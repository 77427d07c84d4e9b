"""``ttsha replicate``: copy models and audio to the standby over SSH."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import Refused, UsageError
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
    store (in real time, via inotify) to [replicate] peer over one verified
    SSH connection. Nothing queued is lost across restarts or peer outages.

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

    if dry_run:
        result = replicator.sync_models(dry_run=True)
        for change in result.changes:
            click.echo(change.itemize())
        click.echo(f"dry run: {len(result.changes)} changes", err=True)
        return
    turn, why = replicator.models_turn()  # a dry run changes nothing: it may look from any node
    if not turn:
        # Only a node the monitor made primary (a signed claim) pushes with deletes: a stale cache
        # sent from anywhere else would remove the primary's newer files.
        if not force:
            raise Refused(f"not sending models from this node: {why}. Run it on the primary, add --force "
                          'to send once regardless, or set [replicate] models = "always".')
        click.echo(f"warning: {why}; sending anyway (--force)", err=True)
    with Progress(transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("models", total=None)
        result = replicator.sync_models(progress=lambda change, sent: progress.update(task, completed=sent))
    click.echo(f"models: {result.files_sent} files sent ({result.bytes_sent} bytes), {result.deleted} deleted, "
               f"{result.seconds:.2f} s", err=True)


def _once_audio(replicator, dry_run: bool) -> None:
    from ..replicate.daemon import peer_for
    from ..replicate.sync import sync

    rc = replicator.config.replicate
    peer = peer_for(replicator.config, str(rc.remote_store)).connect()
    try:
        result = sync(replicator.store, peer, delete=False, checksum=rc.checksum, include=rc.include,
                      exclude=rc.exclude, dry_run=dry_run)
    finally:
        peer.close()
    if dry_run:
        for change in result.changes:
            click.echo(change.itemize())
    click.echo(f"audio: {len(result.changes)} changes, {result.files_sent} files sent", err=True)


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

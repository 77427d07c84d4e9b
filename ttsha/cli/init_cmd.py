"""``ttsha init node|gateway``: a host's configuration and SSH key."""

from __future__ import annotations

from pathlib import Path

import click

from .. import bootstrap
from ..config import DEFAULT_PATH

_out = click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_PATH,
                    show_default=True, help="Where to write the configuration.")
_key = click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=Path("/etc/ttsha/id_ed25519"),
                    show_default=True, help="SSH key for replication and drills (generated if missing; "
                    "known_hosts goes beside it).")
_force = click.option("--force", is_flag=True, help="Replace an existing configuration file.")


def _report(result: bootstrap.InitResult) -> None:
    click.echo(f"wrote {result.config_path}; key {result.key_path}", err=True)
    click.echo("next:", err=True)
    for step in result.next_steps:
        click.echo(f"- {step}", err=True)


@click.group()
def init() -> None:
    """Write a complete, commented configuration for this host and its SSH key.

    \b
    Examples:
      ttsha init node node-a --url http://192.0.2.11:8900 --peer node-b=http://192.0.2.12:8900
      ttsha init gateway --nodes node-a=http://192.0.2.11:8900,node-b=http://192.0.2.12:8900
    """


@init.command("node")
@click.argument("name")
@click.option("--url", required=True, help="This node's serve URL as the gateway reaches it (http://HOST:PORT).")
@click.option("--peer", "peer", required=True, metavar="NAME=URL", help="The other node, which receives copies.")
@click.option("--engine", type=click.Choice(["embedded", "sambert"]), default="sambert", show_default=True,
              help="Synthesis engine.")
@_out
@_key
@_force
def node(name: str, url: str, peer: str, engine: str, out: Path, key: Path, force: bool) -> None:
    """A synthesis node NAME that replicates to its peer."""
    peer_name, sep, peer_url = peer.partition("=")
    if not sep:
        raise click.BadParameter(f"expected NAME=URL, got {peer!r}", param_hint="--peer")
    _report(bootstrap.init_node(name, url, peer_name, peer_url, engine, out, key, force))


@init.command("gateway")
@click.option("--nodes", "nodes", required=True, metavar="NAME=URL,…",
              help="Every node, the preferred primary first.")
@click.option("--listen", default="0.0.0.0:80", show_default=True, help="Where Nginx accepts clients.")
@click.option("--address", help="This gateway's address as the nodes see it (restricts its key on them).")
@_out
@_key
@_force
def gateway(nodes: str, listen: str, address: str | None, out: Path, key: Path, force: bool) -> None:
    """A gateway host: Nginx, monitor, switchovers and drills."""
    _report(bootstrap.init_gateway(bootstrap.parse_nodes(nodes), listen, out, key, force, address))

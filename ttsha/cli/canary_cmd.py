"""``ttsha canary record|check``: the canary's golden fingerprint (ttsha.quality)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import EngineError
from . import Context, pass_ctx

_GOLDEN = click.option("--golden", type=click.Path(path_type=Path, dir_okay=False),
                       help="The golden file (default: [serve] canary_golden, else in [replicate] local_models).")


@click.group()
def canary() -> None:
    """Record or check the canary's golden fingerprint (speech quality monitor)."""


@canary.command("record")
@_GOLDEN
@pass_ctx
def record_cmd(ctx: Context, golden: Path | None) -> None:
    """Synthesize the canary sentence with this node's model and store its fingerprint.

    Run it on a node known to be good after installing or upgrading a model;
    replication copies the file to the other node with the models.

    \b
    Example:
      ttsha canary record && ttsha replicate --once models
    """
    from .. import quality

    recorded, path = quality.record(ctx.config, golden)
    click.echo(f"recorded {path}: {recorded.engine} model {recorded.model_version}, "
               f"{recorded.mel.shape[0]} frames", err=True)


@canary.command("check")
@_GOLDEN
@pass_ctx
def check_cmd(ctx: Context, golden: Path | None) -> None:
    """Synthesize the canary now and compare it with the golden (exit 1 when it differs).

    \b
    Example:
      ttsha canary check
    """
    from .. import quality

    reference, result = quality.check(ctx.config, golden)
    line = (f"distance {result.distance_db:.2f} dB (limit {ctx.config.serve.canary_max_distance:g} dB), "
            f"{result.frames[0]} frames against {result.frames[1]}; golden for model {reference.model_version}")
    if result.reason:
        raise EngineError(f"canary differs from the golden: {result.reason}")
    click.echo(line)

"""The ``ttsha`` command line: a thin click layer over the library.

Commands parse options, call one function of the core and print the result
with rich. Every :class:`~ttsha.errors.TTSHAError` is caught once, in
:func:`main`, printed as one red line and turned into its exit code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .. import __version__
from ..config import DEFAULT_PATH, Config, load
from ..errors import EXIT_INTERRUPTED, TTSHAError
from ..log import setup as setup_logging


@dataclass
class Context:
    """What the group callback prepares for every command."""

    config_path: Path | None
    verbose: int
    _config: Config | None = None

    @property
    def config(self) -> Config:
        """The configuration, loaded on first use so ``--help`` never reads it."""
        if self._config is None:
            self._config = load(self.config_path)
        return self._config


pass_ctx = click.make_pass_decorator(Context)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=f"Configuration: --config, else {DEFAULT_PATH} when present, else built-in defaults.",
)
@click.version_option(__version__, "--version", prog_name="ttsha")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TTSHA_CONFIG",
    help=f"Configuration file (default: {DEFAULT_PATH} if it exists).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int) -> None:
    """Highly available Chinese text-to-speech: synthesis, gateway failover, replication.

    \b
    Example:
      ttsha synth "欢迎使用语音合成服务" -o hello.wav
    """
    setup_logging(verbose)
    ctx.obj = Context(config_path=config_path, verbose=verbose)


def _register() -> None:
    from . import (
        canary_cmd,
        config_cmd,
        doctor_cmd,
        failover_cmd,
        gateway_cmd,
        init_cmd,
        keepalived_cmd,
        lab_cmd,
        replicate_cmd,
        serve_cmd,
        synth,
    )

    cli.add_command(synth.synth)
    cli.add_command(synth.voices)
    cli.add_command(config_cmd.config)
    cli.add_command(doctor_cmd.doctor)
    cli.add_command(init_cmd.init)
    cli.add_command(serve_cmd.serve)
    cli.add_command(serve_cmd.gc)
    cli.add_command(gateway_cmd.nginx)
    cli.add_command(gateway_cmd.monitor)
    cli.add_command(gateway_cmd.status)
    cli.add_command(keepalived_cmd.keepalived)
    cli.add_command(failover_cmd.failover)
    cli.add_command(lab_cmd.lab)
    cli.add_command(replicate_cmd.replicate)
    cli.add_command(canary_cmd.canary)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and map errors to exit codes."""
    try:
        # Without standalone mode click returns ctx.exit(code) values instead of exiting.
        result = cli.main(args=argv, prog_name="ttsha", standalone_mode=False)
    except TTSHAError as exc:
        from rich.console import Console

        from .output import error_line

        # The message holds user and config text: printed literally, never as markup.
        Console(stderr=True, highlight=False, soft_wrap=True).print(error_line(exc.message))
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (ttsha synth ... -o - | head): not our failure.
        sys.stderr.close()
        return 0
    return result if isinstance(result, int) else 0

"""``ttsha synth`` and ``ttsha voices``: offline synthesis, no server, no network."""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

import click

from ..errors import UsageError
from . import Context, pass_ctx

_ENGINES = click.Choice(["embedded", "sambert"])


def _read_text(text: str | None, file: Path | None) -> str:
    if file is not None and text is not None:
        raise UsageError("give the text as an argument or with --file, not both")
    if file is not None:
        try:
            return file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{file}: not UTF-8 text") from None
        except OSError as exc:
            raise UsageError(f"{file}: {exc.strerror or exc}") from None
    if text is None:
        raise UsageError('no text: give it as an argument, "-" for standard input, or --file')
    if text == "-":
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError("standard input is not UTF-8 text") from None
    return text


def _write_wav(path: str, samples, rate: int) -> None:
    """Write WAV to a file atomically, or to stdout for ``-``."""
    from ..audio import wav_bytes
    from ..fsutil import atomic_write

    wav = wav_bytes(samples, rate)  # the one WAV writer, as serve's
    if path == "-":
        sys.stdout.buffer.write(wav)
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"{target}: directory {directory} does not exist")
    umask = os.umask(0)
    os.umask(umask)
    atomic_write(target, wav, mode=0o666 & ~umask, sync_dir=False)


@click.command()
@click.argument("text", required=False)
@click.option("-o", "--output", metavar="FILE", help="WAV file to write; '-' for standard output.")
@click.option("-f", "--file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read the text from FILE.")
@click.option("--voice", help="Voice (see 'ttsha voices'); default: the engine's.")
@click.option("--emotion", help="Emotion (embedded: prosody preset); default: neutral.")
@click.option("--speed", type=float, help="Speaking rate, 1.0 normal, 0.5-2.0.")
@click.option("--engine", "engine_name", type=_ENGINES, help="Engine to use instead of the configured one.")
@click.option("--sample-rate", type=click.IntRange(8000, 192000), help="Resample the output to this rate (Hz).")
@pass_ctx
def synth(
    ctx: Context,
    text: str | None,
    output: str | None,
    file: Path | None,
    voice: str | None,
    emotion: str | None,
    speed: float | None,
    engine_name: str | None,
    sample_rate: int | None,
) -> None:
    """Synthesize TEXT to a WAV file, offline ('-' reads standard input).

    Duration and real-time factor are printed to standard error.

    \b
    Examples:
      ttsha synth "欢迎使用语音合成服务" -o hello.wav
      echo "今天天气很好。" | ttsha synth - -o - > out.wav
      ttsha synth --file article.txt --emotion happy --speed 1.2 -o article.wav
    """
    if output is None:
        if sys.stdout.isatty():
            raise UsageError("no output: use -o FILE (or -o - to write WAV to standard output)")
        output = "-"
    content = _read_text(text, file)
    # The engine's imports (pypinyin's dictionaries, torch) and its model make
    # about a million objects that live as long as the process; each full
    # collection of the cyclic GC walks them all again (measured: a sixth of a
    # short sentence's CPU time). So none runs while they are made, and they
    # are frozen out of the collections that follow.
    gc.disable()
    try:
        from ..engine import create_engine

        engine = create_engine(ctx.config.engine, engine_name)
        started = time.perf_counter()
        engine.load()
    finally:
        gc.freeze()
        gc.enable()
    loaded = time.perf_counter()
    audio = engine.synthesize(content, voice=voice, emotion=emotion, speed=speed)
    elapsed = time.perf_counter() - loaded
    samples, rate = audio.samples, audio.sample_rate
    if sample_rate and sample_rate != rate:
        from ..audio import resample

        samples, rate = resample(samples, rate, sample_rate), sample_rate
    _write_wav(output, samples, rate)
    rtf = elapsed / audio.duration_s if audio.duration_s else float("nan")
    where = "standard output" if output == "-" else output
    click.echo(
        f"{where}: {audio.duration_s:.2f} s of audio at {rate} Hz, "
        f"synthesized in {elapsed:.2f} s (RTF {rtf:.3f}; model load {loaded - started:.1f} s)",
        err=True,
    )


@click.command()
@click.option("--engine", "engine_name", type=_ENGINES, help="Show this engine instead of the configured one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def voices(ctx: Context, engine_name: str | None, as_json: bool) -> None:
    """List the engine's voices and emotions (loads the model).

    \b
    Example:
      ttsha voices --json
    """
    import dataclasses
    import json

    from ..engine import create_engine

    info = create_engine(ctx.config.engine, engine_name).load()
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(info), ensure_ascii=False, indent=2))
        return
    from rich.table import Table

    from .output import literal, table_console

    table = Table(title=literal(f"engine {info.engine} ({info.model_id}, version {info.model_version}, "
                                f"{info.sample_rate} Hz)"))
    table.add_column("voice")
    table.add_column("emotions")
    for name in info.voices:
        label = f"{name} (default)" if name == info.default_voice else name
        table.add_row(literal(label), literal(", ".join(info.emotions)))
    table_console().print(table)

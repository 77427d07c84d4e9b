"""Regenerate man/man5/ttsha.toml.5 from the configuration dataclasses (make man).

The key descriptions live once, next to the types, in ttsha/config.py; a
test checks the page documents every key.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from ttsha import __version__, config

OUT = Path(__file__).resolve().parent.parent / "man" / "man5" / "ttsha.toml.5"


def esc(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\\&" + text if text[:1] in ("'", ".") else text


def _size(value: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def main() -> None:
    lines = [
        f'.TH TTSHA.TOML 5 "2026-11-23" "ttsha {__version__}" "File Formats"',
        ".SH NAME",
        "ttsha.toml \\- ttsha configuration file",
        ".SH DESCRIPTION",
        "One TOML file with a table per subsystem. Every key has a default that runs on one machine;",
        "unknown keys, wrong types and bad values are errors naming the file and the key",
        "(check a file with \\fBttsha config check\\fR \\fIFILE\\fR).",
        'Durations are strings such as \\fB"250ms"\\fR, \\fB"2s"\\fR, \\fB"5m"\\fR, \\fB"7d"\\fR, or numbers of seconds.',
        'Sizes are strings such as \\fB"512MiB"\\fR, \\fB"2GB"\\fR, or numbers of bytes.',
        "Paths shown under \\fI/var/lib/ttsha\\fR default to systemd's StateDirectory, to",
        "\\fI/var/lib/ttsha\\fR for root, else to \\fI~/.local/state/ttsha\\fR.",
        "The commented example \\fIconf/ttsha.toml\\fR in the source shows every key with its default.",
    ]
    hints = typing.get_type_hints(config.Config)
    for f in dataclasses.fields(config.Config):
        if f.name in ("source", "present"):
            continue
        cls = config.NodeConfig if f.name == "nodes" else hints[f.name]
        lines.append(f'.SH "[{"nodes.NAME" if f.name == "nodes" else f.name}]"')
        if f.name == "nodes":
            lines.append("One table per node; the monitor chooses the primary by health, then priority.")
        defaults = cls()
        types = typing.get_type_hints(cls)
        for g in dataclasses.fields(cls):
            value = getattr(defaults, g.name)
            if types[g.name] is config.Duration:
                value = f"{value:g}s"
            elif types[g.name] is config.Size:
                value = _size(value)
            elif isinstance(value, Path):
                value = str(value).replace(str(config.state_dir()), "/var/lib/ttsha")
            elif value is None:
                value = '""'
            help_text = g.metadata.get("help", "")
            choices = g.metadata.get("choices")
            extra = f" One of: {', '.join(map(str, choices))}." if choices else ""
            lines += [".TP", f".B {g.name}", esc(f"{help_text[0].upper()}{help_text[1:]}.{extra}") + f" Default: \\fB{esc(str(value))}\\fR."]
    lines += [".SH FILES", ".I /etc/ttsha/ttsha.toml", ".SH SEE ALSO", ".BR ttsha (1)"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

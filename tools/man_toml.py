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


def main() -> None:
    lines = [
        f'.TH TTSHA.TOML 5 "2026-11-23" "ttsha {__version__}" "File Formats"',
        ".SH NAME",
        "ttsha.toml \\- ttsha configuration file",
        ".SH DESCRIPTION",
        "One TOML file with a table per subsystem. Every key has a default that runs on one machine;",
        "unknown keys, wrong types and bad values are errors naming the file and the key",
        "(check a file with \\fBttsha config check\\fR \\fIFILE\\fR).",
        'Durations are strings such as \\fB"250ms"\\fR, \\fB"2s"\\fR, \\fB"5m"\\fR, \\fB"7d"\\fR, '
        'or numbers of seconds.',
        'Sizes are strings such as \\fB"512MiB"\\fR, \\fB"2GB"\\fR, or numbers of bytes.',
        "Paths shown under \\fI/var/lib/ttsha\\fR default to systemd's StateDirectory, to",
        "\\fI/var/lib/ttsha\\fR for root, else to \\fI~/.local/state/ttsha\\fR.",
        "The commented example \\fIconf/ttsha.toml\\fR in the source shows every key with its default.",
    ]
    hints = typing.get_type_hints(config.Config)
    for f in dataclasses.fields(config.Config):
        if f.name in ("source", "present"):
            continue
        tables = {"nodes": config.NodeConfig, "gateways": config.GatewayConfig}
        cls = tables.get(f.name) or hints[f.name]
        lines.append(f'.SH "[{f.name + ".NAME" if f.name in tables else f.name}]"')
        if f.name == "nodes":
            lines.append("One table per node; the monitor chooses the primary by health, then priority.")
        if f.name == "gateways":
            lines.append("One table per gateway host of a pair sharing [vrrp] vip (see \\fBttsha keepalived\\fR).")
        defaults = cls()
        for g in dataclasses.fields(cls):
            value = getattr(defaults, g.name)
            if isinstance(value, Path):  # as documented, not as resolved for whoever runs make man
                value = Path(str(value).replace(str(config.state_dir()), "/var/lib/ttsha"))
            # Exactly what to write in the file: true, "", "2s", ["nginx", "-t"].
            value = config.toml_literal(value)
            help_text = g.metadata.get("help", "")
            choices = g.metadata.get("choices")
            extra = f" One of: {', '.join(map(str, choices))}." if choices else ""
            lines += [".TP", f".B {g.name}",
                      esc(f"{help_text[0].upper()}{help_text[1:]}.{extra}") + f" Default: \\fB{esc(str(value))}\\fR."]
    lines += [".SH FILES", ".I /etc/ttsha/ttsha.toml", ".SH SEE ALSO", ".BR ttsha (1)"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

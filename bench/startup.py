"""Startup benchmark: a short sentence from the shell, whole process, beside its baselines.

Each round runs, as separate processes in an order rotated every round:

* ``ttsha synth "你好。" -o x.wav`` with its prepared model already kept (the usual case);
* the same with an empty cache directory (the first run after an install or a new voice);
* ``python -c "import torch"``: the floor ttsha cannot go under while the engine runs in torch;
* ``python -c pass``: the interpreter alone;
* the original .tflite pair under TF 2.15 (``tools/tflite_reference.py``: TensorFlow's import, the
  interpreters and the same sentence's phone ids), when the reference venv exists.

Wall time is what the target names (a short sentence in <= 2 s); on a shared machine it swings
with the load, so the report gives medians, the CPU seconds of each process (what the load cannot
inflate much) and ratios to ``import torch`` measured in the same rounds.

    python bench/startup.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = Path(os.environ.get("TTSHA_REFERENCE_PYTHON", ROOT / ".venv-reference" / "bin" / "python"))
TEXT = "你好。"
TARGET_S = 2.0


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, children included) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def measure(rounds: int = 5) -> dict:
    """Every case once per round, order rotated; medians of wall and CPU seconds."""
    from ttsha.engine.embedded import find_asset_dir
    from ttsha.engine.frontend import PhoneMapper

    python = sys.executable
    ttsha = str(Path(python).with_name("ttsha"))
    base_env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "TTSHA_CONFIG")}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "x.wav")
        warm_state, cold_state = Path(tmp) / "warm", Path(tmp) / "cold"
        config = Path(tmp) / "ttsha.toml"
        config.write_text("")  # built-in defaults, whatever /etc/ttsha holds
        # The prepared model goes to the state directory's cache (systemd's StateDirectory wins).
        warm_env = {**base_env, "STATE_DIRECTORY": str(warm_state)}
        cold_env = {**base_env, "STATE_DIRECTORY": str(cold_state)}
        synth = [ttsha, "--config", str(config), "synth", TEXT, "-o", out]
        subprocess.run(synth, env=warm_env, check=True, stderr=subprocess.DEVNULL, timeout=300)

        def cold() -> tuple[float, float]:
            shutil.rmtree(cold_state, ignore_errors=True)
            return _timed(synth, cold_env)

        cases = {
            "ttsha synth": lambda: _timed(synth, warm_env),
            "ttsha synth, first run (no prepared model)": cold,
            "import torch": lambda: _timed([python, "-c", "import torch"], base_env),
            "python": lambda: _timed([python, "-c", "pass"], base_env),
        }
        original = REF_PYTHON.exists()
        if original:
            asset = find_asset_dir()
            ids = Path(tmp) / "ids.json"
            ids.write_text(json.dumps({"s": {"ids": PhoneMapper.from_file(asset / "baker_mapper.json").ids(TEXT)}}))
            ref = [str(REF_PYTHON), str(ROOT / "tools" / "tflite_reference.py"), "bench", str(asset), str(ids),
                   str(Path(tmp) / "ref.json")]
            ref_env = {**base_env, "BENCH_THREADS": "2", "BENCH_REPEAT": "0"}
            cases["original (TF 2.15)"] = lambda: _timed(ref, ref_env)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        names = list(cases)
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                runs[name].append(cases[name]())
    result: dict = {"rounds": rounds, "text": TEXT, "target_s": TARGET_S, "original": original, "cases": {}}
    for name, values in runs.items():
        result["cases"][name] = {"wall": statistics.median(w for w, _ in values),
                                 "cpu": statistics.median(c for _, c in values),
                                 "walls": [w for w, _ in values]}
    torch_runs = runs["import torch"]
    result["wall_over_torch"] = statistics.median(
        w / t for (w, _), (t, _) in zip(runs["ttsha synth"], torch_runs, strict=True))
    # What ttsha adds to torch's import, in CPU seconds (the load hardly changes them).
    result["cpu_beyond_torch"] = result["cases"]["ttsha synth"]["cpu"] - result["cases"]["import torch"]["cpu"]
    if original:
        result["original_over_ttsha"] = statistics.median(
            o / t for (o, _), (t, _) in zip(runs["original (TF 2.15)"], runs["ttsha synth"], strict=True))
    return result


def table(r: dict) -> list[str]:
    """Markdown rows for the report."""
    synth = r["cases"]["ttsha synth"]
    met = "met" if synth["wall"] <= r["target_s"] else "MISSED"
    rows = [
        f"| process ({r['rounds']} rounds, order rotated) | wall, median | CPU, median | wall of each round |",
        "|---|---|---|---|",
    ]
    for name, c in r["cases"].items():
        command, _, note = name.partition(", ")
        label = f'`{command} "{r["text"]}"`' if command.startswith("ttsha") else f"`{command}`"
        label += f", {note}" if note else ""
        rows.append(f"| {label} | {c['wall']:.2f} s | {c['cpu']:.2f} s | "
                    f"{', '.join(f'{w:.2f}' for w in c['walls'])} |")
    rows.append(f"| target: short sentence <= {r['target_s']:.0f} s wall | {synth['wall']:.2f} s {met} | "
                f"{r['cpu_beyond_torch']:+.2f} s beside `import torch` | "
                f"wall / `import torch` {r['wall_over_torch']:.2f} (median of rounds) |")
    if r["original"]:
        rows.append(f"| original / ttsha, wall | {r['original_over_ttsha']:.2f}x | | |")
    else:
        rows.append("| original | not measured: no reference venv (make reference-venv) | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = measure(args.rounds)
    print("\n".join(table(result)))
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

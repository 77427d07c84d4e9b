"""Engine benchmark: ttsha's torch port vs the original .tflite pair, same run.

Both synthesize the same phone-id sequences (from ttsha's front end) with the
same thread count, each in a fresh process so peak RSS and cold start are
their own, in alternating rounds. The original needs the dev-only reference venv (``make
reference-venv``); without it only ttsha's figures are reported.

Then the contention check: ttsha's throughput alone and while a busy process
takes one core, in alternating rounds of the same run, with all cores' threads
(as ``ttsha synth``) and with one (as each of serve's default workers).

    python bench/engine.py [--repeat N] [--threads N] [--rounds N] [--no-hog]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = Path(os.environ.get("TTSHA_REFERENCE_PYTHON", ROOT / ".venv-reference" / "bin" / "python"))

SENTENCES = [
    "欢迎使用语音合成服务",
    "当主节点失去响应时网关会在两秒内把流量切换到备用节点",
    "今天是二零二六年十一月二十三日星期一天气晴朗气温零下三度",
    "语音合成服务已经成为智能客服有声阅读和虚拟主播等产品链路中的关键环节一旦服务中断将直接影响用户体验",
    "你好",
]


def _ids() -> dict[str, dict]:
    from ttsha.engine.embedded import find_asset_dir
    from ttsha.engine.frontend import PhoneMapper

    mapper = PhoneMapper.from_file(find_asset_dir() / "baker_mapper.json")
    return {f"s{i}": {"ids": mapper.ids(text)} for i, text in enumerate(SENTENCES)}


def child(ids_json: Path, out: Path, repeat: int, threads: int) -> None:
    """Runs in a fresh process: load, one cold synthesis, then timed warm runs."""
    import torch

    from ttsha.engine.embedded import EmbeddedEngine, Prosody

    t0 = time.perf_counter()
    engine = EmbeddedEngine(threads=threads)
    engine.load()
    cases = json.loads(ids_json.read_text())

    parts = {"acoustic_seconds": 0.0, "vocoder_seconds": 0.0}

    def one(ids: list[int]) -> int:
        t0 = time.perf_counter()
        mel = engine.mel(ids, Prosody())
        t1 = time.perf_counter()
        samples = len(engine.vocoder(torch.from_numpy(mel)[None]))
        parts["acoustic_seconds"] += t1 - t0
        parts["vocoder_seconds"] += time.perf_counter() - t1
        return samples

    one(next(iter(cases.values()))["ids"])
    cold = time.perf_counter() - t0
    parts = dict.fromkeys(parts, 0.0)
    samples = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        for case in cases.values():
            samples += one(case["ids"])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.write_text(json.dumps({"seconds": elapsed, "audio_seconds": samples / 24000, "cold_seconds": cold,
                               "peak_rss": rss, "cpu_seconds": cpu, **parts}))


#: Figures summed over rounds when every run has them (the original reports fewer).
_SUMMED = ("cpu_seconds", "acoustic_seconds", "vocoder_seconds", "process_cpu_seconds")


def _combine(runs: list[dict]) -> dict:
    """One engine's rounds: totals for speed, the median cold start, the largest RSS."""
    combined = {
        **{key: sum(r[key] for r in runs) for key in _SUMMED if all(key in r for r in runs)},
        "seconds": sum(r["seconds"] for r in runs),
        "audio_seconds": sum(r["audio_seconds"] for r in runs),
        "cold_seconds": statistics.median(r["cold_seconds"] for r in runs),
        "peak_rss": max(r["peak_rss"] for r in runs),
    }
    combined["rtf"] = combined["seconds"] / combined["audio_seconds"]
    return combined


def _run_ours(ids: Path, out: Path, repeat: int, threads: int) -> dict:
    subprocess.run([sys.executable, __file__, "--child", str(ids), str(out), "--repeat", str(repeat),
                    "--threads", str(threads)], check=True)
    return json.loads(out.read_text())


def measure_contention(repeat: int = 1, threads: int = 2, rounds: int = 3) -> dict:
    """ttsha's throughput (audio seconds per second) alone and beside a busy
    process taking one core, alternating, in one run. Losing one of ``cores``
    cores should cost at most that share: the floor is ``(cores - 1) / cores``."""
    cores = os.cpu_count() or 1
    runs: dict[str, list[dict]] = {"alone": [], "hog": []}
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "ids.json"
        ids.write_text(json.dumps(_ids()))
        out = Path(tmp) / "out.json"
        for r in range(rounds):
            for case in (("alone", "hog") if r % 2 == 0 else ("hog", "alone")):
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if case == "hog" else None
                try:
                    runs[case].append(_run_ours(ids, out, repeat, threads))
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
    speed = {case: [r["audio_seconds"] / r["seconds"] for r in rs] for case, rs in runs.items()}
    ratios = [h / a for a, h in zip(speed["alone"], speed["hog"], strict=True)]
    return {
        "cores": cores, "threads": threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "throughput_alone": statistics.median(speed["alone"]), "throughput_hog": statistics.median(speed["hog"]),
        "cpu_per_audio_second_alone": statistics.median(r["cpu_seconds"] / r["audio_seconds"] for r in runs["alone"]),
        "ratios": ratios, "ratio": statistics.median(ratios), "floor": (cores - 1) / cores,
    }


def contention_rows(checks: list[dict]) -> list[str]:
    """Markdown rows for the contention checks (one per thread count)."""
    rows = [
        f"| engine throughput (audio s per s), OMP_WAIT_POLICY={checks[0]['omp_wait_policy']} | alone | "
        "beside a 1-core hog | hog / alone (floor: the CPU share left) |",
        "|---|---|---|---|",
    ]
    for c in checks:
        # One thread loses no core of its own to a 1-core hog while another is free; its
        # floor is still the machine's share left, since the scheduler may put both together.
        met = "met" if c["ratio"] >= c["floor"] else "MISSED"
        rows.append(f"| {c['threads']} torch thread{'s' if c['threads'] > 1 else ''} | {c['throughput_alone']:.2f} | "
                    f"{c['throughput_hog']:.2f} | {c['ratio']:.2f} {met}, floor {c['floor']:.2f} "
                    f"(rounds: {', '.join(f'{x:.2f}' for x in c['ratios'])}) |")
    return rows


def measure(repeat: int = 2, threads: int = 2, rounds: int = 3, hog: bool = True) -> dict:
    """Both engines' figures, side by side: ``rounds`` alternating pairs of
    fresh processes (order flipped each round), so that a noisy stretch of
    the machine hits both; the speed-up is the median of the rounds' ratios."""
    from ttsha.engine.embedded import find_asset_dir

    results: dict = {"threads": threads, "repeat": repeat, "rounds": rounds, "sentences": len(SENTENCES)}
    runs: dict[str, list[dict]] = {"ttsha": [], "original": []}
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "ids.json"
        ids.write_text(json.dumps(_ids()))
        out = Path(tmp) / "out.json"

        def ours() -> dict:
            return _run_ours(ids, out, repeat, threads)

        def original() -> dict:
            subprocess.run(
                [str(REF_PYTHON), str(ROOT / "tools" / "tflite_reference.py"), "bench", str(find_asset_dir()), str(ids),
                 str(out)],
                check=True, env={**os.environ, "BENCH_THREADS": str(threads), "BENCH_REPEAT": str(repeat)},
                stderr=subprocess.DEVNULL,
            )
            return json.loads(out.read_text())

        engines = {"ttsha": ours, **({"original": original} if REF_PYTHON.exists() else {})}
        for r in range(rounds):
            for name in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
                # CPU time is what a busy machine cannot take away from a measurement.
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                run = engines[name]()
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                run["process_cpu_seconds"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                runs[name].append(run)
    results["ttsha"] = _combine(runs["ttsha"])
    if runs["original"]:
        results["original"] = _combine(runs["original"])
        ratios = [(o["seconds"] / o["audio_seconds"]) / (t["seconds"] / t["audio_seconds"])
                  for t, o in zip(runs["ttsha"], runs["original"], strict=True)]
        results["speedups"] = ratios
        results["speedup"] = statistics.median(ratios)
        results["rss_ratio"] = results["ttsha"]["peak_rss"] / results["original"]["peak_rss"]
        results["cold_ratio"] = results["ttsha"]["cold_seconds"] / results["original"]["cold_seconds"]
    if hog:
        results["contention"] = [measure_contention(1, t, rounds) for t in sorted({threads, 1}, reverse=True)]
    return results


def table(results: dict) -> list[str]:
    """Markdown rows for the report."""
    rows = [
        "| metric | ttsha (torch) | original (.tflite, TF 2.15) | ratio |",
        "|---|---|---|---|",
    ]
    ours, ref = results["ttsha"], results.get("original")

    def cell(r, key, fmt):
        return fmt.format(r[key]) if r else "n/a (no reference venv)"

    spread = f" (rounds: {', '.join(f'{x:.2f}' for x in results['speedups'])})" if ref else ""
    rows.append(f"| real-time factor (lower is faster) | {ours['rtf']:.4f} | {cell(ref, 'rtf', '{:.4f}')} | "
                + (f"{results['speedup']:.2f}x faster{spread} |" if ref else "|"))
    rows.append(f"| peak RSS | {ours['peak_rss'] / 2**20:.0f} MiB | "
                + (f"{ref['peak_rss'] / 2**20:.0f} MiB | {results['rss_ratio']:.2f} |" if ref else "n/a | |"))
    rows.append(f"| cold start (load + first sentence) | {ours['cold_seconds']:.2f} s | "
                + (f"{ref['cold_seconds']:.2f} s | {results['cold_ratio']:.2f} |" if ref else "n/a | |"))
    rows.append(f"| audio synthesized | {ours['audio_seconds']:.1f} s | "
                + (f"{ref['audio_seconds']:.1f} s | |" if ref else "n/a | |"))
    rows.append(f"| ttsha's synthesis: acoustic + vocoder | {ours['acoustic_seconds']:.2f} + "
                f"{ours['vocoder_seconds']:.2f} s of {ours['seconds']:.2f} s (CPU {ours['cpu_seconds']:.2f} s) | | |")
    cpu_ours, cpu_ref = ours["process_cpu_seconds"], ref["process_cpu_seconds"] if ref else 0.0
    rows.append(f"| CPU seconds of the whole process (load included) | {cpu_ours:.2f} s | "
                + (f"{cpu_ref:.2f} s | {cpu_ref / cpu_ours:.2f}x less |" if ref else "n/a | |"))
    if ref:
        rows.append(f"| synthesis time (sum of rounds) | {ours['seconds']:.2f} s | {ref['seconds']:.2f} s | |")
    else:
        rows.append("| original | not measured: no reference venv (make reference-venv) | | |")
    if ref:
        met = "met" if results["speedup"] >= 3 else "MISSED"
        rows.append(f"| target: >= 3x the original's speed | {results['speedup']:.2f}x {met} | | |")
    if "contention" in results:
        rows += ["", *contention_rows(results["contention"])]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, type=Path, metavar=("IDS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-hog", action="store_true", help="skip the throughput check beside a 1-core CPU hog")
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.repeat, args.threads)
        return
    results = measure(args.repeat, args.threads, args.rounds, hog=not args.no_hog)
    print("\n".join(table(results)))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""`tracenas bench MODEL_DIR`: latency, throughput and memory of a pruned model vs its base."""

from __future__ import annotations

import argparse

from tracenas.runtime.config import add_config_arguments, config_from_args

NAME = "bench"
HELP = "time to first token, time per output token, throughput and peak memory: pruned vs base"


def register(parser: argparse.ArgumentParser) -> None:
    from tracenas.bench.config import BenchConfig

    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="exported model directory, or a run directory (uses RUN_DIR/model)")
    add_config_arguments(parser, BenchConfig)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value / 1e6:.2f}M"
    return f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    models = report["models"]
    names = list(models)
    rows = [("parameters", "params", 0), ("TTFT (ms)", "ttft_ms", 2), ("TPOT (ms)", "tpot_ms", 2),
            ("throughput (tok/s)", "throughput_tok_s", 1), ("peak memory (MB)", "peak_mem_mb", 1)]
    speed = report.get("speedup") or {}
    ratio = {"ttft_ms": speed.get("prefill"), "tpot_ms": speed.get("decode"),
             "throughput_tok_s": speed.get("throughput"), "params": speed.get("params"),
             "peak_mem_mb": speed.get("memory")}
    header = f"{'':20}" + "".join(f"{n:>14}" for n in names) + (f"{'pruned/base':>14}" if speed else "")
    lines = [header]
    for label, key, digits in rows:
        line = f"{label:20}" + "".join(f"{_fmt(models[n][key], digits):>14}" for n in names)
        if speed:
            r = ratio[key]
            line += f"{'-' if r is None else f'{r:.2f}x':>14}"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tracenas.bench.report import format_speedup
    from tracenas.bench.runner import run_bench
    from tracenas.bench.config import BenchConfig

    cfg = config_from_args(BenchConfig, args)
    report = run_bench(args.model_dir, cfg)
    c = report["config"]
    print(f"{report['device']}, {c['dtype']}, prompt {c['prompt_len']} tokens, {c['gen_len']} new tokens, "
          f"batch {c['batch_size']}, median of {c['trials']} trials after {c['warmup']} warm-up")
    print(format_table(report))
    if report.get("speedup"):
        s = report["speedup"]
        print(f"speedup: {format_speedup(s)}")
    print(f"wrote {report['path']}")
    return 0

"""Export a hand-made ~60% SmolLM2-135M and benchmark it against the base model (the paper's Table 8).

    python benchmarks/bench_pruned.py --out runs/bench60                 # CPU-sized defaults
    python benchmarks/bench_pruned.py --out runs/bench60 --prompt-len 4096 --gen-len 128 --trials 20   # GPU

The architecture is fixed (not searched): 5 of 30 blocks dropped, 2 of 3 query heads per KV group in odd
blocks, MLP widths cycling through ~40/50/60%. Heads and channels are picked by activation-weighted
importance on 8 x 256 calibration tokens of the embedded Wikipedia split. The numbers measure what the
*shape* buys at inference; quality needs a searched architecture and recovery (`tracenas run`).
Prints the same table as `tracenas bench` and writes OUT/bench.json.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tracenas.arch import Genome, SearchSpace
from tracenas.bench.runner import BenchConfig, run_bench
from tracenas.commands.bench import format_table
from tracenas.data import token_batches
from tracenas.export.checkpoint import export_pruned
from tracenas.prune.masking import compute_importance, select
from tracenas.models import DEFAULT_MODEL, get_adapter, load_model


def sixty_percent(space: SearchSpace) -> Genome:
    n = space.shape.num_layers
    drop = {round(k * n / 6) + 3 for k in range(5)}  # 3, 8, 13, 18, 23 for 30 blocks
    return space.snap(Genome(tuple(i not in drop for i in range(n)), tuple(0.67 if i % 2 else 1.0 for i in range(n)),
                             tuple(0.4 + 0.1 * (i % 3) for i in range(n))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench60", help="directory for model/ and bench.json")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base model (default: embedded SmolLM2-135M)")
    parser.add_argument("--prompt-len", type=int)
    parser.add_argument("--gen-len", type=int)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    out = Path(args.out)
    model_dir = out / "model"
    if not (model_dir / "config.json").is_file():
        model, tok, source = load_model(args.model)
        adapter = get_adapter(model)
        space = SearchSpace(adapter.shape())
        genome = sixty_percent(space)
        batches = token_batches(tok, num_sequences=8, seq_len=256)
        selection = select(space, genome, compute_importance(model, adapter, batches))
        export_pruned(model, tok, selection, model_dir,
                      card={"source_model": source.spec, "how": "fixed ~60% shape (benchmarks/bench_pruned.py)"})
        print(f"exported {space.params(genome):,} of {space.base_params():,} parameters "
              f"({space.params(genome) / space.base_params():.1%}) to {model_dir}")
        del model
    cfg = BenchConfig(base=args.model, out=str(out / "bench.json"), prompt_len=args.prompt_len, gen_len=args.gen_len,
                      trials=args.trials, warmup=args.warmup, device=args.device, dtype=args.dtype, threads=args.threads)
    report = run_bench(model_dir, cfg)
    c = report["config"]
    print(f"{report['device']}, {c['dtype']}, prompt {c['prompt_len']}, {c['gen_len']} new tokens, "
          f"median of {c['trials']} trials")
    print(format_table(report))
    print(f"wrote {report['path']}")


if __name__ == "__main__":
    main()

"""Speed in llama.cpp on this CPU: the base SmolLM2-135M vs ~80 % and ~60 % pruned, as f16 and q8_0 GGUF files.

    npm install --omit=optional --prefix tools/llamacpp            # llama.cpp (prebuilt CPU binaries)
    python benchmarks/bench_llamacpp.py --out runs/bench_llamacpp  # prints a markdown table, writes OUT/bench.json

What a user running the model on a laptop gets: prompt processing (one batch of `--prompt` tokens) and
generation (`--generate` single-token steps, KV cache growing) in tokens/s, median of `--repeat` runs, in
llama.cpp itself (tracenas.export.gguf.llamacpp). The pruned shapes are fixed, not searched (as in bench_pruned.py): a few
blocks dropped, 2 of 3 query heads per KV group in odd blocks, MLP widths varied per block and scaled to land
just under the parameter fraction; heads and channels picked by activation-weighted importance. Speed
depends on the shapes, not on which heads are kept. Every model, base included, goes through the same GGUF
writer (llama.cpp's per-layer `deci` architecture), so only the sizes differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from tracenas.arch import Genome, SearchSpace
from tracenas.data import token_batches
from tracenas.export.gguf.writer import write_gguf
from tracenas.export.gguf.llamacpp import run_tasks, version
from tracenas.prune.masking import compute_importance, select, slice_model
from tracenas.models import DEFAULT_MODEL, get_adapter, load_model


def shape_at(space: SearchSpace, fraction: float) -> Genome:
    """A non-uniform genome with at most `fraction` of the base parameters, as close to it as the grid allows."""
    n = space.shape.num_layers
    n_drop = max(0, round((1 - fraction) * n / 4))
    drop = {n - 2 - 2 * k for k in range(n_drop)}  # late blocks, every other one (they matter least)
    attn = tuple(0.67 if i % 2 else 1.0 for i in range(n))
    limit = fraction * space.base_params()

    def genome(scale: float) -> Genome:
        mlp = tuple(min(1.0, scale * (0.8 + 0.2 * (i % 3))) for i in range(n))
        return space.snap(Genome(tuple(i not in drop for i in range(n)), attn, mlp))

    lo, hi = 0.02, 1.25
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if space.params(genome(mid)) <= limit else (lo, mid)
    return genome(lo)


def bench(path: Path, prompt: int, generate: int, repeat: int, threads: int) -> dict:
    (out,) = run_tasks(path, [{"op": "bench", "prompt": prompt, "generate": generate, "repeat": repeat}],
                       threads=threads, context=prompt + generate + 8)
    return {"pp": statistics.median(out["pp_tokens_per_s"]), "tg": statistics.median(out["tg_tokens_per_s"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_llamacpp", help="directory for the GGUF files and bench.json")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="base model (default: embedded SmolLM2-135M)")
    parser.add_argument("--fractions", default="0.8,0.6", help="parameter fractions of the pruned models")
    parser.add_argument("--types", default="f16,q8_0", help="GGUF weight types")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens (one batch)")
    parser.add_argument("--generate", type=int, default=64, help="generated tokens (one at a time)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per model; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok, source = load_model(args.model)
    source_gguf = Path(source.path) / source.gguf_file if source.gguf_file else None
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    importance = compute_importance(model, adapter, token_batches(tok, num_sequences=8, seq_len=256))
    types = args.types.split(",")
    variants = [("base", 1.0, model)]
    for fraction in (float(f) for f in args.fractions.split(",")):
        genome = shape_at(space, fraction)
        small = slice_model(model, adapter, select(space, genome, importance)).eval()
        variants.append((f"{fraction:.0%}", space.params(genome) / space.base_params(), small))
    rows = []
    for name, frac, m in variants:
        for qtype in types:
            path = write_gguf(m, out / f"{name.rstrip('%')}-{qtype}.gguf", qtype=qtype, source_gguf=source_gguf,
                              hf_tokenizer=None if source_gguf else tok)
            speed = bench(path, args.prompt, args.generate, args.repeat, args.threads)
            rows.append({"model": name, "params_fraction": round(frac, 4), "type": qtype,
                         "size_mb": round(path.stat().st_size / 1e6, 1), **speed})
            print(json.dumps(rows[-1]), flush=True)
    base = {r["type"]: r for r in rows if r["model"] == "base"}
    print(f"\n{version()}, {args.threads} thread(s), prompt {args.prompt} tokens, {args.generate} generated, "
          f"median of {args.repeat}\n")
    print("| model | params | GGUF | size (MB) | prompt tok/s | speedup | generation tok/s | speedup |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        b = base[r["type"]]
        print(f"| {r['model']} | {r['params_fraction']:.1%} | {r['type']} | {r['size_mb']} | {r['pp']:.0f} | "
              f"{r['pp'] / b['pp']:.2f}x | {r['tg']:.1f} | {r['tg'] / b['tg']:.2f}x |")
    (out / "bench.json").write_text(json.dumps({"llama_cpp": version(), "threads": args.threads, "prompt": args.prompt,
                                                "generate": args.generate, "repeat": args.repeat, "rows": rows},
                                               indent=2) + "\n")


if __name__ == "__main__":
    main()

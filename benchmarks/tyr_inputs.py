"""Which inputs should a tyr supernet be calibrated on? The round-0 centre candidate (uniform at the budget),
assembled from round-0 supernets built on each input regime, and its held-out perplexity.

    OMP_NUM_THREADS=1 python benchmarks/tyr_inputs.py runs/tyr-inputs --sequences 16 --seq-len 128
    python benchmarks/tyr_inputs.py runs/tyr-inputs --regimes expected dense   # a subset; finished ones are kept

Writes OUT/<sequences>x<seq_len>.json and prints one line per regime (perplexity on 16k tokens of the eval
split in 512-token windows, build seconds). Supernets are kept in OUT/<sequences>x<seq_len>/<regime> (resumable).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tracenas.arch import SearchSpace
from tracenas.prune.database import INPUT_REGIMES, DatabaseSpec, LevelAssembler, build_database
from tracenas.eval.evaluate import eval_tokens
from tracenas.runtime.perplexity import perplexity
from tracenas.models import get_adapter, load_model
from tracenas.search.strategies.tyr import TyrConfig, TyrSearch, round_space, uniform_centre


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--budget", default="0.6")
    ap.add_argument("--regimes", nargs="+", default=list(INPUT_REGIMES), choices=INPUT_REGIMES)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tag = f"{args.sequences}x{args.seq_len}"
    path = args.out / f"{tag}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    model, tok, _ = load_model(None, dtype=torch.float32, device="cpu")
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape(), min_layers=adapter.shape().num_layers // 2)
    cfg = TyrConfig(offspring=2, survivors=(1,), eval_tokens=(2,))
    search = TyrSearch(cfg, space, space.resolve_budget(args.budget), lambda b, t: [])
    levels, centre = round_space(space, cfg, 0, *uniform_centre(space, search.window))
    stream = eval_tokens(tok, None, 16384)
    for regime in args.regimes:
        if regime in results:
            print(regime, results[regime])
            continue
        t = time.perf_counter()
        spec = DatabaseSpec((), (), sequences=args.sequences, seq_len=args.seq_len, micro_batch=1, inputs=regime,
                            per_block=levels.per_block)
        db = build_database(model, adapter, tok, args.out / tag / regime, spec, progress=False)
        assembler = LevelAssembler(model, adapter, db)
        assembler.apply(centre)
        with torch.no_grad():
            ppl = perplexity(model, stream, 512, 4)["ppl"]
        assembler.reset()
        results[regime] = {"ppl": ppl, "build_s": round(time.perf_counter() - t)}
        path.write_text(json.dumps(results, indent=1))
        print(regime, results[regime], flush=True)


if __name__ == "__main__":
    main()

"""When does `--compile` pay? Recompilations and seconds per candidate over a stream of different candidates.

    python benchmarks/compile_check.py                                 # CPU: SmolLM2-135M shape, 4 blocks, 2x128
    python benchmarks/compile_check.py --layers 0 --num-sequences 16 --seq-len 4096 --candidates 20   # GPU, all blocks

Scores the same `--candidates` random in-budget genomes (widths differ per block and candidate, as in a
search) eagerly and with every decoder block `torch.compile`d, and prints per candidate the seconds and the
number of graphs dynamo has compiled so far. A sliced block changes shape with its width: dynamo compiles a
block once, recompiles it with dynamic sizes at the first new width, and reuses that graph afterwards, so
the compile cost is paid in the first candidates; `--compile` pays when (eager - compiled) x candidates
exceeds it. Random weights: timing only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import SHAPES, build, sync  # noqa: E402

from tracenas.arch import Genome, SearchSpace  # noqa: E402
from tracenas.runtime.device import resolve_device, resolve_dtype  # noqa: E402
from tracenas.prune.masking import compute_importance  # noqa: E402
from tracenas.models import get_adapter  # noqa: E402
from tracenas.proxies.traces import Scorer, TraceProbes  # noqa: E402
from tracenas.search.strategies.operators import BudgetRepair  # noqa: E402
from tracenas.prune.sliced import compile_blocks  # noqa: E402


def genomes(space: SearchSpace, count: int, fraction: float, seed: int = 0) -> list[Genome]:
    """`count` distinct random genomes at `fraction` of the block parameters (embeddings left out of the budget:
    with a few blocks of a large-vocabulary shape they alone exceed any fraction of the total)."""
    rng, repair, out = np.random.default_rng(seed), BudgetRepair(space, int(space.base_cost() * fraction), 0.05), []
    n = space.shape.num_layers
    for _ in range(1000 * count):
        if len(out) == count:
            break
        g = repair(Genome((True,) * n, tuple(rng.uniform(0.2, 1, n)), tuple(rng.uniform(0.2, 1, n))))
        if g is not None and g.key() not in {x.key() for x in out}:
            out.append(g)
    if len(out) < count:
        raise SystemExit(f"could not draw {count} distinct genomes at {fraction} of the block parameters")
    return out


def run(args, compiled: bool, device, dtype) -> list[tuple[float, int]]:
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    spec = dict(SHAPES[args.shape])
    if args.layers:
        SHAPES["_check"] = {**spec, "num_hidden_layers": args.layers}
    model = build("_check" if args.layers else args.shape, device, dtype, "sdpa")
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape(), min_layers=1, include_embeddings=False)
    batches = torch.randint(0, space.shape.vocab_size, (args.num_sequences, args.seq_len),
                            generator=torch.Generator().manual_seed(0))
    imp = compute_importance(model, adapter, batches[:1])
    if compiled:
        compile_blocks(adapter, backend=args.backend)
    probes = TraceProbes(model, adapter, rank=args.rank)
    base, _ = probes.trace(batches, args.micro_batch)
    scorer = Scorer(model, adapter, space, imp, batches, args.proxy, probes, base, micro_batch=args.micro_batch)
    out = []
    for g in genomes(space, args.candidates, args.budget):
        sync(device)
        t = time.perf_counter()
        scorer.score(g)
        sync(device)
        out.append((time.perf_counter() - t, int(counters["stats"]["unique_graphs"])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="SmolLM2-135M", choices=list(SHAPES))
    ap.add_argument("--layers", type=int, default=4, help="blocks to keep of the shape (0: all)")
    ap.add_argument("--num-sequences", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--proxy", default="phi")
    ap.add_argument("--budget", type=float, default=0.6)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="inductor", help="torch.compile backend; 'eager' counts dynamo's graphs "
                    "(recompilations) without code generation, fast on a CPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    eager = run(args, False, device, dtype)
    comp = run(args, True, device, dtype)
    print(f"# {args.shape} ({args.layers or 'all'} blocks), {device}, {str(dtype).replace('torch.', '')}, "
          f"backend {args.backend}, "
          f"{args.num_sequences}x{args.seq_len}, proxy {args.proxy}, {args.candidates} candidates; random weights")
    print("candidate  eager s  compiled s  graphs compiled so far")
    for i, ((e, _), (c, graphs)) in enumerate(zip(eager, comp)):
        print(f"{i:9d} {e:8.3f} {c:11.3f} {graphs:8d}")
    steady = slice(len(eager) // 2, None)
    e_s = statistics.median(x for x, _ in eager[steady])
    c_s = statistics.median(x for x, _ in comp[steady])
    overhead = sum(c for c, _ in comp) - c_s * len(comp)
    verdict = (f"pays after about {overhead / (e_s - c_s):.0f} candidates" if e_s > c_s
               else "never pays here (not faster once compiled)")
    print(f"steady state (second half): eager {e_s:.3f} s, compiled {c_s:.3f} s per candidate; compile overhead "
          f"{overhead:.1f} s -> {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

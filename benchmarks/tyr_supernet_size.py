"""Disk and working memory of one `--strategy tyr` supernet round, computed from a model's shape (not measured).

    python benchmarks/tyr_supernet_size.py                                   # Llama-3.1-8B at 50 %, paper preset
    python benchmarks/tyr_supernet_size.py --shapes SmolLM2-135M --budget 0.6 --tokens 2048

The model is built on the meta device (no weights), the round tables come from the strategy's own code
(`tyr.uniform_centre`, `tyr.round_space`: round 0 centred on the uniform distribution at the budget; later
rounds have the same number of levels or fewer), and the disk size from `database.planned_bytes`, the count
a build writes (checked against a real build of SmolLM2-135M in docs/tyr.md). Working memory while a block
is calibrated: the two hidden-state streams (dense and expected) over the calibration tokens, the dense
stream's consumer inputs of one block (the expected stream's are computed per micro-batch and not kept), and the float64 Gram matrices of the expected regime (H, H_dense and the
cross term) of the larger consumer plus the OBS workspace (inverse and a float64 copy of the weight).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import SHAPES  # noqa: E402

from tracenas.arch import SearchSpace  # noqa: E402
from tracenas.prune.database import planned_bytes  # noqa: E402
from tracenas.models import get_adapter  # noqa: E402
from tracenas.search.strategies.tyr import TyrConfig, TyrSearch, round_space, uniform_centre  # noqa: E402


def shape_of(name: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[name])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return get_adapter(model).shape()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["Llama-3.1-8B"], choices=list(SHAPES))
    ap.add_argument("--budget", default="0.5")
    ap.add_argument("--tokens", type=int, default=32 * 4096, help="calibration tokens (paper preset: 32 x 4096)")
    ap.add_argument("--levels", type=int, default=9)
    args = ap.parse_args()
    gb = 1e9
    print(f"| model | budget | round | stored levels per block (attn + MLP) | disk float32 | disk bfloat16 | "
          f"streams ({args.tokens:,} tokens) | one block's inputs + statistics |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.shapes:
        shape = shape_of(name)
        space = SearchSpace(shape, min_layers=max(1, shape.num_layers // 2))
        cfg = TyrConfig(offspring=2, survivors=(1,), eval_tokens=(2,), levels=args.levels)
        search = TyrSearch(cfg, space, space.resolve_budget(args.budget), lambda b, t: [])
        attn, mlp = uniform_centre(space, search.window)
        streams = 2 * args.tokens * shape.hidden_size * 4
        d_attn, d_mlp = shape.num_heads * shape.head_dim, shape.intermediate_size
        inputs = args.tokens * (d_attn + d_mlp) * 4  # the dense stream's, kept for the block; the expected one's streams by
        grams = 3 * max(d_attn, d_mlp) ** 2 * 8 + 2 * max(d_attn, d_mlp) ** 2 * 8 + shape.hidden_size * d_mlp * 8
        for rnd in range(4):
            ls, _ = round_space(space, cfg, rnd, attn, mlp)
            stored = sum(len(a) + len(m) for a, m in ls.per_block) / shape.num_layers
            print(f"| {name} | {float(args.budget):.0%} | {rnd} | {stored:.1f} | "
                  f"{planned_bytes(shape, ls.per_block, 4) / gb:.1f} GB | {planned_bytes(shape, ls.per_block, 2) / gb:.1f} GB | "
                  f"{streams / gb:.2f} GB | {(inputs + grams) / gb:.2f} GB |")


if __name__ == "__main__":
    main()

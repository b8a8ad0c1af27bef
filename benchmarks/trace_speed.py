"""Speed of one gradient trace (the cost of scoring one candidate) on the current device.

    python benchmarks/trace_speed.py                         # default model, CPU-sized settings
    python benchmarks/trace_speed.py --num-sequences 16 --seq-len 4096 --micro-batch 4   # paper setting, GPU

Prints seconds per trace, tokens/s and achieved TFLOP/s. FLOP model (per token, matmuls only):
forward 2·(block params + vocab·hidden) + causal attention 2·L·ctx·d_q (QKᵀ and AV, half masked);
the backward pass computes activation gradients only (weights are frozen; LoRA-B gradients are tiny),
about the same again, plus the lm_head forward recomputed by the chunk checkpointing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tracenas.arch import Genome, SearchSpace
from tracenas.data import token_batches
from tracenas.prune.masking import compute_importance
from tracenas.models import get_adapter, load_model
from tracenas.proxies.traces import Scorer, TraceProbes
from tracenas.search.recipes.runner import resolve_device, resolve_dtype


def trace_flops(shape, tokens: int, seq_len: int, keep: int) -> float:
    h = shape.hidden_size
    block = shape.num_heads * shape.q_head_params + shape.num_kv_heads * shape.kv_head_params
    block += shape.intermediate_size * shape.mlp_channel_params
    head = shape.vocab_size * h
    attn = 2 * keep * (seq_len / 2) * shape.num_heads * shape.head_dim * 2  # QK^T and AV, causal half
    fwd = tokens * (2 * (keep * block + head) + attn)
    return 2 * fwd + tokens * 2 * head  # + activation backward, + lm_head recompute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--num-sequences", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--loss-chunk", type=int, default=1024)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder (GPU)")
    args = ap.parse_args()

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model, tok, _ = load_model(args.model, dtype=dtype, device=device)
    adapter = get_adapter(model)
    shape = adapter.shape()
    space = SearchSpace(shape, min_layers=1)
    try:
        batches = token_batches(tok, None, split="calibration", num_sequences=args.num_sequences,
                                seq_len=args.seq_len)
    except Exception:  # noqa: BLE001 - larger than the embedded corpus: random tokens measure speed as well
        batches = torch.randint(0, shape.vocab_size, (args.num_sequences, args.seq_len))
    imp = compute_importance(model, adapter, batches[: args.micro_batch], micro_batch=args.micro_batch)
    if args.compile:
        model.model = torch.compile(model.model)
    probes = TraceProbes(model, adapter, rank=args.rank)
    base, _ = probes.trace(batches, args.micro_batch, args.loss_chunk)  # warm-up + anchor
    scorer = Scorer(model, adapter, space, imp, batches, "phi", probes, base, micro_batch=args.micro_batch,
                    loss_chunk=args.loss_chunk)
    n = shape.num_layers
    genome = space.snap(Genome(tuple(i % 5 != 4 for i in range(n)), (0.67,) * n, (0.6,) * n))
    for name, g in (("full model", Genome.full(n)), ("60% candidate", genome)):
        times = []
        for _ in range(args.trials):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            scorer.score(g)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        sec = statistics.median(times)
        tokens = batches.numel()
        flops = trace_flops(shape, tokens, args.seq_len, sum(g.keep))
        print(f"{name:14s}: {sec:.3f} s/candidate, {tokens / sec:,.0f} tokens/s, "
              f"{flops / sec / 1e12:.3f} TFLOP/s achieved ({flops / 1e12:.3f} TFLOP per trace) "
              f"[{device}, {str(dtype).replace('torch.', '')}, {args.num_sequences}x{args.seq_len}, "
              f"micro-batch {args.micro_batch}, threads {torch.get_num_threads()}]")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()

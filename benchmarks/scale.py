"""Seconds per candidate at real model shapes, without downloads: random-initialised models from published configs.

    python benchmarks/scale.py                                   # CPU: SmolLM2-135M at 4x256 tokens, 1 thread
    python benchmarks/scale.py --shapes all --num-sequences 16 --seq-len 4096 --micro-batch 4   # GPU: all that fit

For every shape and proxy (`phi`: one LoRA-B gradient trace; `kl`: one forward pass against the cached
dense outputs) and budget (40 %, 60 % of the parameters), one candidate is scored on its physically
sliced blocks (what the search does) and, for reference, under masks on the dense model (what the paper's
code does). Printed: seconds per candidate (median of `--trials` after one warm-up), the FLOPs the
sliced pass actually runs (counted by `torch.utils.flop_counter`, plus the fused cross-entropy's matmuls,
which it cannot see), achieved TFLOP/s and its share of the
device's bf16 peak (`--peak-tflops`; H100/H200 SXM dense 989), peak memory (CUDA: allocator peak; CPU:
process peak RSS), and the largest shape that ran. A shape that runs out of memory is reported and skipped.

Random weights: timing and memory are real, scores are not (a random model's Φ and KL mean nothing).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from tracenas.arch import Genome, SearchSpace
from tracenas.runtime.device import resolve_device, resolve_dtype
from tracenas.runtime.losses import ce_impl, set_ce_impl
from tracenas.prune.masking import compute_importance
from tracenas.models import get_adapter
from tracenas.proxies.traces import Scorer, TraceProbes
from tracenas.search.strategies.operators import BudgetRepair
from tracenas.prune.sliced import compile_blocks

# Published configs (the fields that set the compute; rope scaling and the like do not change the cost).
SHAPES: dict[str, dict] = {
    "SmolLM2-135M": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "Llama-3.2-1B": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                         head_dim=64),
    "Qwen2.5-1.5B": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Llama-2-7B": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "Qwen2.5-14B": dict(model_type="qwen2", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}
SMALL = ("SmolLM2-135M",)


def build(name: str, device: torch.device, dtype: torch.dtype, attn: str) -> torch.nn.Module:
    """The shape's model with random weights (transformers' own init), built directly on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[name])
    cfg = AutoConfig.for_model(spec.pop("model_type"), max_position_embeddings=32768, **spec)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
    return model.eval()


def candidate(space: SearchSpace, fraction: float) -> Genome:
    """A realistic candidate at `fraction` of the parameters: every 8th block dropped, widths scaled into
    the budget window by the search's own repair."""
    n = space.shape.num_layers
    budget = int(space.base_params() * fraction)
    keep = tuple(i % 8 != 7 for i in range(n))
    genome = BudgetRepair(space, budget, 0.02)(Genome(keep, (1.0,) * n, (1.0,) * n))
    if genome is None:  # a shape whose depth cannot reach it: all blocks kept
        genome = BudgetRepair(space, budget, 0.02)(Genome.full(n))
    return genome


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(scorer: Scorer, genome: Genome, trials: int, device: torch.device) -> tuple[float, float]:
    scorer.score(genome)  # warm-up (and compilation, with --compile)
    times = []
    for _ in range(trials):
        sync(device)
        t = time.perf_counter()
        scorer.score(genome)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def counted_flops(scorer: Scorer, genome: Genome) -> int:
    """FLOPs of one scoring pass, counted by torch's FlopCounterMode. The fused cross-entropy is invisible to
    the counter, so its logits and input-gradient matmuls (2 x 2 x rows x hidden x vocab) are added."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        scorer.score(genome)
    flops = counter.get_total_flops()
    if scorer.method.needs_probes and ce_impl() == "fused":
        rows = scorer.batches.shape[0] * (scorer.batches.shape[1] - 1)
        flops += 4 * rows * scorer.space.shape.hidden_size * scorer.space.shape.vocab_size
    return flops


@dataclass
class Row:
    shape: str
    params: int
    proxy: str
    budget: float
    kept_params: int
    sliced_s: float
    masked_s: float | None
    tflop: float
    tflops: float
    peak_fraction: float | None
    peak_gib: float

    def line(self) -> str:
        masked = f"{self.masked_s:8.3f}" if self.masked_s is not None else "       -"
        speed = f"{self.masked_s / self.sliced_s:5.2f}x" if self.masked_s is not None else "     -"
        frac = f"{100 * self.peak_fraction:5.1f}%" if self.peak_fraction is not None else "     -"
        return (f"{self.shape:14s} {self.params / 1e9:6.2f}B {self.proxy:4s} {int(100 * self.budget):3d}% "
                f"{self.kept_params / 1e9:6.2f}B {self.sliced_s:9.3f} {masked} {speed} {self.tflop:8.2f} "
                f"{self.tflops:8.2f} {frac} {self.peak_gib:7.2f}")


HEADER = ("shape          params proxy budget kept   sliced s masked s  gain  TFLOP/c  TFLOP/s  %peak "
          "peak GiB")


def run_shape(name: str, args, device: torch.device, dtype: torch.dtype) -> list[Row]:
    model = build(name, device, dtype, args.attn)
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape(), min_layers=max(1, adapter.shape().num_layers // 2))
    g = torch.Generator().manual_seed(0)
    batches = torch.randint(0, space.shape.vocab_size, (args.num_sequences, args.seq_len), generator=g)
    importance = compute_importance(model, adapter, batches[:1, : min(args.seq_len, 512)])
    if args.compile:
        compile_blocks(adapter)
    rows = []
    for proxy in args.proxies:
        probes = base = None
        if proxy != "kl":
            probes = TraceProbes(model, adapter, rank=args.rank, seed=0)
            base, _ = probes.trace(batches, args.micro_batch, args.loss_chunk)
        scorers = {on: Scorer(model, adapter, space, importance, batches, proxy, probes, base,
                              micro_batch=args.micro_batch, loss_chunk=args.loss_chunk, score_on=on)
                   for on in (("sliced", "masked") if args.compare_masked else ("sliced",))}
        for fraction in args.budgets:
            genome = candidate(space, fraction)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sliced_s, _ = timed(scorers["sliced"], genome, args.trials, device)
            peak = peak_gib(device)
            masked_s = timed(scorers["masked"], genome, args.trials, device)[0] if args.compare_masked else None
            try:
                flops = counted_flops(scorers["sliced"], genome)
            except AssertionError as err:  # torch < 2.13's counter rejects SDPA with grouped KV heads (enable_gqa)
                print(f"  FLOPs not counted: {err}", flush=True)
                flops = float("nan")
            tflops = flops / sliced_s / 1e12
            rows.append(Row(name, space.base_params(), proxy, fraction, space.params(genome), sliced_s, masked_s,
                            flops / 1e12, tflops, tflops / args.peak_tflops if args.peak_tflops else None, peak))
            print(rows[-1].line(), flush=True)
        if probes is not None:
            probes.remove()
        del scorers, probes, base
    if args.compile:
        from torch._dynamo.utils import counters

        print(f"  torch.compile: {counters['stats']['unique_graphs']} graphs compiled so far "
              f"(a new sliced width recompiles)")
    del model, adapter
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=None, help=f"comma-separated of {', '.join(SHAPES)}, or 'all' "
                    "(default: all on a GPU, the small ones on CPU)")
    ap.add_argument("--proxies", default="phi,kl")
    ap.add_argument("--budgets", default="0.4,0.6", help="fractions of the parameters")
    ap.add_argument("--num-sequences", type=int, default=None, help="default 16 on GPU, 4 on CPU")
    ap.add_argument("--seq-len", type=int, default=None, help="default 4096 on GPU, 256 on CPU")
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--loss-chunk", type=int, default=1024)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    ap.add_argument("--ce", default="auto", choices=("auto", "fused", "chunked"), help="cross-entropy implementation")
    ap.add_argument("--compile", action="store_true", help="torch.compile every decoder block")
    ap.add_argument("--no-masked", dest="compare_masked", action="store_false",
                    help="skip the masked reference timing (halves the run)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device bf16 dense peak for the %%peak column (default: 989 on H100/H200, else none)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.set_num_threads(args.threads)
    set_ce_impl(args.ce)
    gpu = device.type == "cuda"
    args.num_sequences = args.num_sequences or (16 if gpu else 4)
    args.seq_len = args.seq_len or (4096 if gpu else 256)
    args.proxies = [p for p in args.proxies.split(",") if p]
    args.budgets = [float(b) for b in args.budgets.split(",")]
    names = (list(SHAPES) if gpu else list(SMALL)) if args.shapes is None else (
        list(SHAPES) if args.shapes == "all" else args.shapes.split(","))
    if args.peak_tflops is None and gpu and any(k in torch.cuda.get_device_name() for k in ("H100", "H200")):
        args.peak_tflops = 989.0
    where = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"# {where}, {str(dtype).replace('torch.', '')}, {args.num_sequences}x{args.seq_len} tokens, micro-batch "
          f"{args.micro_batch}, attention {args.attn}, cross-entropy {ce_impl()}, compile {args.compile}, "
          f"torch {torch.__version__}")
    print("# random weights: timing and memory are real, scores are not")
    print(HEADER)
    rows, largest = [], None
    for name in names:
        try:
            rows += run_shape(name, args, device, dtype)
            largest = name
        except torch.cuda.OutOfMemoryError as err:
            print(f"{name:14s} does not fit: {str(err).splitlines()[0][:120]}", flush=True)
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()
    print(f"# largest shape that ran: {largest}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": where, "dtype": str(dtype), "tokens": [args.num_sequences, args.seq_len],
                       "ce": ce_impl(), "compile": args.compile, "largest": largest,
                       "rows": [r.__dict__ for r in rows]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The calibration loss alone: torch's fused `F.linear_cross_entropy` vs the chunked, checkpointed fallback.

    python benchmarks/ce_speed.py                                   # SmolLM2's head (576 x 49152), 4 x 256 rows, fp32
    python benchmarks/ce_speed.py --hidden 4096 --vocab 128256 --rows 16384 --dtype bfloat16 --device cuda

Forward + backward to the hidden states (the head is frozen, as in a trace), the two implementations
interleaved trial by trial so that a busy machine slows both alike; prints the median seconds of each, the
speedup, and the largest difference of loss and gradient.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn

from tracenas.runtime.device import resolve_device, to_torch_dtype
from tracenas.runtime.losses import next_token_loss, set_ce_impl


def one(impl: str, hidden: torch.Tensor, targets: torch.Tensor, head: nn.Linear, chunk: int, device) -> tuple:
    set_ce_impl(impl)
    h = hidden.clone().requires_grad_(True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    loss = next_token_loss(h, targets, head, chunk)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, float(loss.detach()), h.grad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rows", type=int, default=255, help="positions per sequence")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), to_torch_dtype(args.dtype)
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(args.hidden, args.vocab, bias=False).to(device, dtype).requires_grad_(False)
    with torch.no_grad():
        head.weight.normal_(0, 0.02)
    hidden = torch.randn(args.batch, args.rows, args.hidden, generator=g).to(device, dtype)
    targets = torch.randint(0, args.vocab, (args.batch, args.rows), generator=g).to(device)
    times: dict[str, list[float]] = {"fused": [], "chunked": []}
    last = {}
    for _ in range(args.trials + 1):  # the first round warms up
        for impl in times:
            sec, loss, grad = one(impl, hidden, targets, head, args.chunk, device)
            times[impl].append(sec)
            last[impl] = (loss, grad)
    set_ce_impl("auto")
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    diff = float((last["fused"][1].float() - last["chunked"][1].float()).abs().max())
    print(f"head {args.hidden} x {args.vocab}, {args.batch} x {args.rows} rows, {device}, {args.dtype}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}: fused {med['fused']:.3f} s, chunked "
          f"{med['chunked']:.3f} s ({med['chunked'] / med['fused']:.2f}x); |loss diff| "
          f"{abs(last['fused'][0] - last['chunked'][0]):.1e}, max |grad diff| {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

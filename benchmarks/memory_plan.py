"""What a search keeps resident on one GPU, per published shape: the memory plan of docs/scale.md.

    python benchmarks/memory_plan.py                      # 80 GB, 16 x 4096 tokens, bf16, budgets 40 % / 60 %
    python benchmarks/memory_plan.py --gpu-gib 141 --shapes Qwen2.5-14B

Activations are *measured*, not guessed: a 1-block and a 2-block model of each shape's real widths are
built on the CPU in bf16 (small vocabulary; the output layer is counted apart) and torch's saved-tensor
hooks count the bytes autograd keeps for the trace's backward, per token and block, with and without
activation checkpointing (`tracenas.prune.memory`). The rest is exact arithmetic from the shape: bf16 weights,
the sliced copy of a candidate's kept blocks, the probes (A, B, B.grad), the fp32 base and candidate
traces, `kl`'s cached dense outputs, the fused cross-entropy's logits chunk. CPU attention (SDPA math)
saves about what CUDA's flash/efficient kernels save (O(tokens), never the L x L matrix); allocator
overhead is covered by a 10 % margin. Printed: the largest micro-batch that fits, without and with
checkpointing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import SHAPES  # noqa: E402

from tracenas.prune.memory import checkpoint_blocks, saved_bytes  # noqa: E402
from tracenas.models import get_adapter  # noqa: E402
from tracenas.proxies.traces import TraceProbes  # noqa: E402

PLAN_SHAPES = {**SHAPES, "Llama-3.1-70B": dict(model_type="llama", hidden_size=8192, intermediate_size=28672,
                                                num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                                                vocab_size=128256, tie_word_embeddings=False)}
GiB = 2**30


def _model(spec: dict, layers: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = {**spec, "num_hidden_layers": layers, "vocab_size": 256}
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02) if p.dim() == 2 else p.fill_(1.0)
    model.model.rotary_emb.__init__(model.config)  # its inv_freq buffer was left empty by to_empty
    return model.eval()


def activation_bytes(spec: dict, rank: int, tokens: int = 64, checkpointed: bool = False) -> float:
    """Bytes autograd keeps per token and block for a LoRA-B trace (bf16), measured."""
    out = []
    for layers in (1, 2):
        model = _model(spec, layers)
        adapter = get_adapter(model)
        if checkpointed:
            checkpoint_blocks(adapter)
        probes = TraceProbes(model, adapter, rank=rank)
        model.requires_grad_(False)
        for b in probes.B.values():
            b.requires_grad_(True)
        ids = torch.randint(0, 256, (1, tokens))
        out.append(saved_bytes(lambda a=adapter, x=ids: a.final_hidden(x), exclude=list(model.parameters())))
        del model, adapter, probes
    return (out[1] - out[0]) / tokens


def plan(name: str, args) -> None:
    s = PLAN_SHAPES[name]
    h, inter, n = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    heads, kv, vocab = s["num_attention_heads"], s["num_key_value_heads"], s["vocab_size"]
    hd = s.get("head_dim", h // heads)
    proj_out = [heads * hd, kv * hd, kv * hd, h, inter, inter, h]
    proj_in = [h, h, h, heads * hd, h, h, inter]
    block = sum(o * i for o, i in zip(proj_out, proj_in)) + 2 * h
    embed = vocab * h * (1 if s["tie_word_embeddings"] else 2)
    params = n * block + embed + h
    act = activation_bytes(s, args.rank)
    act_ckpt = activation_bytes(s, args.rank, checkpointed=True)
    tokens_seq = args.seq_len
    weights = params * 2
    probes = n * args.rank * (sum(proj_in) + 2 * sum(proj_out)) * 2  # A, B, B.grad in bf16
    traces = n * args.rank * sum(proj_out) * 4 * 2  # base + candidate traces, fp32
    kl_ref = args.num_sequences * args.seq_len * h * 4
    budget = f"{int(100 * args.budget)} %"
    kept_blocks = max(0.0, args.budget * params - embed)  # the candidate's kept block parameters at most
    sliced = kept_blocks * 2
    fixed = weights + sliced + probes + traces
    usable = args.gpu_gib * GiB * 0.9
    print(f"\n{name}: {params / 1e9:.2f}B parameters ({n} blocks), bf16; candidate at {budget} of the parameters")
    print(f"  weights {weights / GiB:6.1f} GiB | sliced copy of a candidate's kept blocks {sliced / GiB:5.1f} | "
          f"probes A,B,grad {probes / GiB:4.2f} | base+candidate traces (fp32) {traces / GiB:4.2f} | "
          f"kl's dense outputs {kl_ref / GiB:4.2f}")
    print(f"  activations per token and block (measured): {act / 1024:6.1f} KiB plain, {act_ckpt / 1024:5.1f} KiB "
          f"checkpointed (+ one block's {act / 1024:.0f} KiB per token while it is recomputed)")
    if fixed > usable:
        gpus = -(-weights // (args.gpu_gib * GiB * 0.6))
        print(f"  does not fit one {args.gpu_gib:.0f} GiB GPU: the bf16 weights alone take {weights / GiB:.0f} GiB "
              f"-> a device map over >= {int(gpus)} GPUs per replica (docs/scale.md, 70B plan)")
        return
    for mb in (1, 2, 4, 8, 16):
        ce = 2 * mb * args.loss_chunk * vocab * 4  # logits chunk + its gradient, fp32
        plain = fixed + ce + act * n * mb * tokens_seq
        ckpt = fixed + ce + act_ckpt * n * mb * tokens_seq + act * mb * tokens_seq
        print(f"  micro-batch {mb:2d} x {tokens_seq}: plain {plain / GiB:6.1f} GiB {'fits' if plain <= usable else '-   '}"
              f" | checkpointed {ckpt / GiB:6.1f} GiB {'fits' if ckpt <= usable else '-'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="Llama-2-7B,Llama-3.1-8B,Qwen2.5-14B,Llama-3.1-70B")
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--num-sequences", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--loss-chunk", type=int, default=1024)
    ap.add_argument("--budget", type=float, default=0.6, help="a candidate's share of the parameters")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {args.gpu_gib:.0f} GiB GPU (90 % usable), {args.num_sequences} x {args.seq_len} calibration tokens, "
          f"probe rank {args.rank}, bf16; activations measured on CPU with saved-tensor hooks")
    for name in args.shapes.split(","):
        plan(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

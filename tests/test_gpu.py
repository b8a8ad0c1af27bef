"""What only a GPU can check (skipped without CUDA; `benchmarks/gpu_suite.sh` runs them on a lent GPU):
bf16 + SDPA sliced scoring equals masked scoring, the fused cross-entropy equals the fallback, and two NCCL
ranks equal one process."""

import os
import subprocess
import sys

import pytest
import torch

from tracenas.arch import Genome, SearchSpace
from tracenas.runtime.losses import fused_ce_available, next_token_loss, set_ce_impl
from tracenas.prune.masking import compute_importance
from tracenas.models import get_adapter
from tracenas.proxies.traces import Scorer, TraceProbes

from conftest import make_tiny

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("proxy", ["phi", "kl"])
def test_bf16_sdpa_sliced_scores_equal_masked_scores(proxy):
    model = make_tiny("llama-gqa").to("cuda", torch.bfloat16)
    model.config._attn_implementation = "sdpa"
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape(), min_layers=1)
    batches = torch.randint(0, 128, (4, 64), generator=torch.Generator().manual_seed(1))
    imp = compute_importance(model, adapter, batches)
    probes = base = None
    if proxy == "phi":
        probes = TraceProbes(model, adapter, rank=8)
        base, _ = probes.trace(batches, micro_batch=2)
    n = space.shape.num_layers
    genome = Genome(tuple(i != 1 for i in range(n)), (space.snap_attn(0.34),) * n, (space.snap_mlp(0.5),) * n)
    scores = {on: Scorer(model, adapter, space, imp, batches, proxy, probes, base, micro_batch=2, score_on=on)
              .score(genome)[0] for on in ("masked", "sliced")}
    assert scores["sliced"] == pytest.approx(scores["masked"], rel=2e-2, abs=2e-2)


@pytest.mark.skipif(not fused_ce_available(), reason="torch < 2.13")
def test_fused_cross_entropy_on_cuda_bf16_equals_the_fallback():
    head = torch.nn.Linear(256, 5000, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(2, 300, 256, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, 5000, (2, 300), device="cuda")
    out = {}
    for impl in ("fused", "chunked"):
        set_ce_impl(impl)
        h = hidden.clone().requires_grad_(True)
        loss = next_token_loss(h, targets, head, chunk=128)
        loss.backward()
        out[impl] = (float(loss), h.grad.float())
    set_ce_impl("auto")
    assert out["fused"][0] == pytest.approx(out["chunked"][0], rel=1e-2)
    assert torch.allclose(out["fused"][1], out["chunked"][1], atol=1e-4, rtol=5e-2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_nccl_ranks_equal_one_process(tiny_model_dir, tmp_path):
    from tracenas.search.config import SearchConfig
    from tracenas.search.recipes.runner import run_search

    settings = dict(preset="quick", num_sequences=2, seq_len=32, rank=4, population=6, elites=2, iterations=2,
                    budget="0.7", budget_tolerance=0.1, min_layers=2, micro_batch=2, proxy="kl", dtype="float32")
    one = tmp_path / "one"
    run_search(SearchConfig(model=str(tiny_model_dir), out=str(one), **settings), progress=False)
    flags = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "tracenas", "search",
           "--model", str(tiny_model_dir), "--out", str(tmp_path / "two"), *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # GPU kernels are not bitwise reproducible across processes: the same genomes, scores to rounding
    import json

    a = [json.loads(x) for x in (one / "history.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "two" / "history.jsonl").read_text().splitlines()]
    assert [r["genome"] for r in a] == [r["genome"] for r in b]
    assert [r["score"] for r in b] == pytest.approx([r["score"] for r in a], rel=1e-3, abs=1e-4)

"""`plan_search(cfg)`: what a search would do, without scoring anything or writing anything (`--dry-run`).

    from tracenas.search.plan import plan_search
    print(plan_search(SearchConfig(model="Qwen/Qwen2.5-0.5B", budget="0.6")).describe())

The model's shape comes from its config alone (the model is built on the meta device: no weights are
read or allocated); only a tracenas-pruned checkpoint is loaded, as its blocks differ from its config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tracenas.arch import SearchSpace
from tracenas.runtime.config import format_count
from tracenas.models.shape import ModelShape
from tracenas.search.config import SearchConfig


@dataclass(frozen=True)
class SearchPlan:
    model: str
    shape_from: str  # "config" (meta device, no weights) or "weights" (a pruned checkpoint was loaded)
    shape: ModelShape
    min_layers: int
    attn_points: int  # attention grid points per kept block
    mlp_points: int  # MLP width grid points per kept block
    space_size: int  # distinct genomes (realizable architectures)
    reachable: tuple[int, int]
    budget: int
    unit: str
    base_params: int
    include_embeddings: bool
    candidates: int  # candidates the search scores at most
    tokens_per_candidate: int
    backward: bool  # the proxy needs gradients (forward + backward per candidate)
    cost_note: str | None = None  # a strategy's own account of its cost (darwinlm: fine-tuning and scoring tokens)
    scored_params: int | None = None  # parameters one candidate's pass runs through (None: the full model's)

    @property
    def flops_per_candidate(self) -> int:
        """Estimate: 2 x parameters x tokens for a forward pass, x3 with the backward pass. Candidates scored on
        their sliced blocks (`--score-on sliced`, a parameter budget) run through at most the budget's
        parameters; under masks, through the full model's."""
        params = self.scored_params if self.scored_params is not None else self.shape_params()
        return 2 * params * self.tokens_per_candidate * (3 if self.backward else 1)

    def shape_params(self) -> int:
        s = self.shape
        return s.fixed_params + s.num_layers * block_params(s)

    def describe(self) -> str:
        s, lo_hi = self.shape, self.reachable
        blocks = s.num_layers * block_params(s)
        emb = "included in" if self.include_embeddings else "excluded from"
        lines = [
            f"model {self.model}: {s.family}, {s.num_layers} blocks (shape read from its "
            + ("config; no weights loaded)" if self.shape_from == "config" else "weights: a pruned checkpoint)"),
            f"parameters {format_count(self.shape_params())}: embeddings/lm_head {format_count(s.embedding_params)}, "
            f"blocks {format_count(blocks)} ({s.num_layers} x {block_params(s):,}), other "
            f"{format_count(s.fixed_params - s.embedding_params)} (final norm)",
            f"per block: fixed {s.layer_fixed_params:,}, per query head {s.q_head_params:,}, per KV head "
            f"{s.kv_head_params:,}, per MLP channel {s.mlp_channel_params:,}",
            f"search space: {format_size(self.space_size)} distinct genomes (>= {self.min_layers} of "
            f"{s.num_layers} blocks kept, {self.attn_points} attention x {self.mlp_points} MLP grid points per "
            "kept block)",
            f"budget {self.budget:,} {self.unit} ({format_count(self.budget)}"
            + (f"; embeddings {emb} the budget); " if self.unit == "parameters" else "); ") +
            f"reachable [{lo_hi[0]:,}, {lo_hi[1]:,})",
            f"candidates to score: at most {self.candidates}",
        ]
        if self.cost_note:
            lines += [self.cost_note, "nothing was scored or written (dry run)"]
            return "\n".join(lines)
        lines += [
            f"cost per candidate: {self.tokens_per_candidate:,} tokens "
            + ("forward + backward" if self.backward else "forward only")
            + f", about {self.flops_per_candidate:.2e} FLOPs (estimate: 2 x "
            + ("the budget's params" if self.scored_params is not None else "params") + " x tokens"
            + (" x 3 with the backward pass" if self.backward else "") + "; not a measured time)",
            "nothing was scored or written (dry run)",
        ]
        return "\n".join(lines)


def block_params(shape: ModelShape) -> int:
    """Parameters of one full block."""
    return (shape.layer_fixed_params + shape.num_heads * shape.q_head_params
            + shape.num_kv_heads * shape.kv_head_params + shape.intermediate_size * shape.mlp_channel_params)


def mlp_points(space: SearchSpace) -> int:
    """Distinct MLP widths the grid realizes (multiples of `mlp_multiple` below the full width, and it)."""
    size, step = space.shape.intermediate_size, space.mlp_multiple
    return len({space.mlp_width(min(1.0, j * step / size)) for j in range(1, size // step + 2)})


def space_size(space: SearchSpace) -> int:
    """Distinct genomes: for each keep pattern with >= min_layers blocks, every grid point of every kept
    block (a dropped block's ratios do not matter)."""
    n, per_block = space.shape.num_layers, space.attn_units * mlp_points(space)
    return sum(math.comb(n, k) * per_block ** k for k in range(space.min_layers, n + 1))


def format_size(n: int) -> str:
    """`n` in full when short, else as a power of ten (`~1.2e+45`)."""
    return f"{n:,}" if n < 10 ** 12 else f"~{float(n):.2e}" if n < 10 ** 300 else f"~10^{len(str(n)) - 1}"


def model_shape(spec: str | None) -> tuple[ModelShape, str]:
    """The shape of `spec` from its config (meta device); a pruned checkpoint is loaded instead."""
    import torch
    from transformers import AutoModelForCausalLM

    from tracenas.models import get_adapter, load_model
    from tracenas.models.loading import _read_config, check_supported, resolve_source

    source = resolve_source(spec)
    config = _read_config(source)
    check_supported(config)
    if getattr(config, "tracenas", None):
        model, _, _ = load_model(spec, with_tokenizer=False)
        return get_adapter(model).shape(), "weights"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return get_adapter(model).shape(), "config"


def plan_search(cfg: SearchConfig) -> SearchPlan:
    """What `run_search(cfg)` would search and spend, from the model's config; scores and writes nothing."""
    from tracenas.proxies.registry import get_proxy
    from tracenas.search.registry import strategy_class

    cfg = cfg.resolved()
    shape, shape_from = model_shape(cfg.model)
    min_layers = cfg.min_layers if cfg.min_layers is not None else max(1, shape.num_layers // 2)
    space = SearchSpace(shape, min_layers=min_layers, include_embeddings=cfg.include_embeddings,
                        metric=cfg.budget_metric())
    budget = space.resolve_budget(cfg.budget_value())
    strategy = strategy_class(cfg.strategy).for_plan(cfg, space, budget)  # counts only: never stepped
    return SearchPlan(model=cfg.model or "default", shape_from=shape_from, shape=shape, min_layers=min_layers,
                      attn_points=space.attn_units, mlp_points=mlp_points(space), space_size=space_size(space),
                      reachable=space.reachable(), budget=budget, unit=space.metric.unit,
                      base_params=space.base_params(),
                      include_embeddings=cfg.include_embeddings, candidates=strategy.planned_candidates(),
                      tokens_per_candidate=cfg.num_sequences * cfg.seq_len,
                      backward=get_proxy(cfg.proxy).method.needs_probes,
                      cost_note=strategy.plan_note(),
                      scored_params=budget + (0 if cfg.include_embeddings else shape.embedding_params)
                      if cfg.score_on == "sliced" and space.metric.kind == "params" else None)


__all__ = ["SearchPlan", "block_params", "format_size", "mlp_points", "plan_search", "space_size"]

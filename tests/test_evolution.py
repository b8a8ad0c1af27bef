"""Evolution operators, budget repair, anchors, the strategy interface and registry (no model: pure numpy)."""

import json
import math

import numpy as np
import pytest

from tracenas.arch import Genome, SearchSpace
from tracenas.runtime.errors import TracenasError
from tracenas.models.shape import ModelShape
from tracenas.search import registry
from tracenas.search.config import SearchConfig
from tracenas.search.strategies.evolution import Evolution, EvolutionConfig
from tracenas.search.strategies.operators import BudgetRepair, importance_anchor
from tracenas.search.strategies.base import SearchStrategy

N = 6
# GQA: 8 query heads over 2 KV heads (attention grid quarters), MLP 2048 channels (64 steps)
SHAPE = ModelShape(family="llama", num_layers=N, hidden_size=64, num_heads=8, num_kv_heads=2, head_dim=8,
                   intermediate_size=2048, vocab_size=100, fixed_params=12864, layer_fixed_params=128,
                   q_head_params=1024, kv_head_params=1024, mlp_channel_params=192, embedding_params=12800)
TOL = 0.1  # the grid of this tiny shape is coarse: 2% windows are often unreachable at a given depth
PRIOR = ([0.2, 0.5, 1.0, 1.5, 2.0, 4.0], [4.0, 0.3, 0.6, 1.0, 2.0, 3.0])  # steep, so anchors differ by power


def space(min_layers: int = 3) -> SearchSpace:
    return SearchSpace(SHAPE, min_layers=min_layers)


def budget(fraction: float, sp: SearchSpace | None = None) -> int:
    return int((sp or space()).base_params() * fraction)


def evolution(seed: int = 0, min_layers: int = 3, fraction: float = 0.6, **cfg) -> Evolution:
    sp = space(min_layers)
    return Evolution(EvolutionConfig(seed=seed, population=8, elites=3, budget_tolerance=TOL, **cfg), sp, budget(fraction, sp),
                     lambda g: (0.0, {}), prior=PRIOR)


def random_genome(rng: np.random.Generator, min_keep: int = 3) -> Genome:
    keep = [True] * N
    for k in rng.permutation(N)[: int(rng.integers(0, N - min_keep + 1))].tolist():
        keep[k] = False
    return Genome(tuple(keep), tuple(rng.uniform(0.05, 1, N).tolist()), tuple(rng.uniform(0.05, 1, N).tolist()))


# --- crossover ------------------------------------------------------------------------------------
def test_crossover_takes_one_contiguous_depth_range_from_b_and_interpolates_widths_with_one_weight():
    evo = evolution()
    rng = np.random.default_rng(1)
    a = Genome((True,) * N, tuple(rng.uniform(0.1, 1, N).tolist()), tuple(rng.uniform(0.1, 1, N).tolist()))
    b = Genome((False,) * N, tuple(rng.uniform(0.1, 1, N).tolist()), tuple(rng.uniform(0.1, 1, N).tolist()))
    ranges = set()
    for _ in range(50):
        child = evo.crossover(a, b)
        from_b = [k for k in range(N) if not child.keep[k]]
        assert from_b, "crossover always takes a non-empty range [i, j) from B"
        assert from_b == list(range(from_b[0], from_b[-1] + 1)), child.keep  # contiguous, the rest from A
        ranges.add((from_b[0], from_b[-1]))
        weights = set()
        for x, y, c in [*zip(a.attn, b.attn, child.attn), *zip(a.mlp, b.mlp, child.mlp)]:
            assert min(x, y) - 1e-12 <= c <= max(x, y) + 1e-12
            weights.add(round((c - y) / (x - y), 9))
        assert len(weights) == 1, "one interpolation weight per child"
    assert len(ranges) > 5  # the range is random, not fixed


# --- mutation -------------------------------------------------------------------------------------
def test_depth_mutation_never_goes_below_min_layers():
    evo = evolution(min_layers=3, mutation_depth=1.0, mutation_width=0.0)
    g = Genome((True, False, True, False, True, False), (0.5,) * N, (0.5,) * N)
    for _ in range(100):
        child = evo.mutate(g)
        # at min_layers a flip can only add a block: either a dropped one is picked, or a kept one is
        # picked and a dropped one is restored instead of dropping below min_layers
        assert sum(child.keep) == 4, child.keep
        assert child.attn == g.attn and child.mlp == g.mlp


def test_width_jitter_always_leaves_the_grid_point():
    # sigma so small that exp(z) ~ 1: without the one-step rule the ratio would stay where it is
    evo = evolution(mutation_depth=0.0, mutation_width=1.0, jitter_sigma=1e-9)
    g = Genome((True,) * N, (0.5,) * N, (0.5,) * N)
    sp = evo.space
    for _ in range(20):
        child = evo.mutate(g)
        assert child.keep == g.keep
        for r in child.attn:
            assert math.isclose(abs(r - 0.5), 1 / sp.attn_units) and r == sp.snap_attn(r)
        for r in child.mlp:
            assert math.isclose(abs(r - 0.5), 1 / sp.mlp_units) and r == sp.snap_mlp(r)


# --- budget repair --------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_repair_lands_in_the_budget_window(fraction):
    sp = space()
    repair = BudgetRepair(sp, budget(fraction, sp), tolerance=TOL)
    lo, hi = repair.window
    assert lo == math.floor(budget(fraction, sp) * (1 - TOL)) and hi == budget(fraction, sp)
    rng = np.random.default_rng(0)
    repaired = 0
    for _ in range(60):
        g = repair(random_genome(rng))
        if g is not None:
            repaired += 1
            assert lo <= sp.params(g) <= hi
            assert g == sp.snap(g)  # on the grid
    assert repaired >= 20


def test_repair_returns_none_when_depth_makes_the_window_unreachable():
    sp = space(min_layers=1)
    one_block = Genome((True,) + (False,) * (N - 1), (1.0,) * N, (1.0,) * N)
    all_blocks = Genome((True,) * N, (0.5,) * N, (0.5,) * N)
    # one block even at full width is far below 90% of the base model
    assert BudgetRepair(sp, budget(0.9, sp), TOL)(one_block) is None
    # all blocks even at minimal width are above a budget barely over one minimal block
    tight = sp.reachable()[0] + 10
    assert BudgetRepair(sp, tight, TOL)(all_blocks) is None
    # the same genomes are repairable under budgets their depth can reach
    assert BudgetRepair(sp, budget(0.9, sp), TOL)(all_blocks) is not None
    # fewer blocks than min_layers is never repaired
    assert BudgetRepair(space(min_layers=2), budget(0.2, sp), 0.5)(one_block) is None


def test_repair_refuses_a_window_narrower_than_the_grid():
    # a 0.01% window is narrower than one grid step of most genomes: the scaled genome closest to the
    # budget from below is then outside the window, and repair must say so rather than return it
    sp = space()
    repair = BudgetRepair(sp, budget(0.6, sp), tolerance=1e-4)
    lo, hi = repair.window
    rng = np.random.default_rng(0)
    results = [repair(random_genome(rng)) for _ in range(30)]
    assert all(lo <= sp.params(g) <= hi for g in results if g is not None)
    assert any(g is None for g in results)


# --- anchors and the initial population ----------------------------------------------------------
def test_anchor_power_zero_is_uniform_and_power_one_follows_the_prior():
    sp = space()
    repair = BudgetRepair(sp, budget(0.6, sp), TOL)
    lo, hi = repair.window
    flat = importance_anchor(repair, PRIOR, power=0.0)
    assert all(flat.keep) and len(set(flat.attn)) == 1 and len(set(flat.mlp)) == 1
    assert lo <= sp.params(flat) <= hi
    raw = importance_anchor(repair, PRIOR, power=1.0)
    assert lo <= sp.params(raw) <= hi
    # widths follow the prior: the least important attention (layer 0) keeps less than the most (layer 5)
    assert raw.attn[0] < raw.attn[5] and raw.mlp[1] < raw.mlp[0]


def test_initial_population_is_anchors_then_distinct_children_in_budget():
    evo = evolution(prior_powers=(0.0, 0.5, 1.0))
    pop = evo.initial_population()
    assert len(pop) == 8 and len({g.key() for g in pop}) == 8
    assert pop[:3] == [evo.anchor(p) for p in (0.0, 0.5, 1.0)]
    lo, hi = evo.window
    assert all(lo <= evo.space.params(g) <= hi and sum(g.keep) >= 3 for g in pop)


# --- strategy state and registry ------------------------------------------------------------------
def _toy_score(g: Genome) -> tuple[float, dict]:
    if not g.keep[0]:
        return float("-inf"), {}  # non-finite scores must survive the JSON round trip too
    return float(sum(a * (i + 1) for i, a in enumerate(g.attn)) - sum(g.mlp)), {}


@pytest.mark.parametrize("name", ["evolution", "random", "uniform"])
def test_state_round_trips_through_json_and_resumes_exactly(name):
    sp = space()
    cfg = EvolutionConfig(population=6, elites=2, iterations=4, seed=3, budget_tolerance=TOL)

    def make() -> SearchStrategy:
        return registry.strategy_class(name)(cfg, sp, budget(0.6, sp), _toy_score, prior=PRIOR)

    full = make()
    full.run()

    first = make()
    first.step()
    first.step() if name != "uniform" else None
    text = json.dumps(first.state_dict(), allow_nan=False)  # JSON-able, no NaN/Infinity literals
    resumed = make()
    resumed.load_state_dict(json.loads(text))
    assert resumed.state_dict() == first.state_dict()
    resumed.run()
    assert resumed.state_dict() == full.state_dict()
    assert resumed.best() == full.best() and resumed.best() is not None


class _AnchorsOnly(SearchStrategy):
    """A strategy written outside the package: scores the importance anchors, then stops."""

    def initial_population(self) -> list[Genome]:
        return [importance_anchor(self.repair, self.prior, p) for p in (0.0, 1.0)]

    def next_population(self) -> list[Genome]:
        return [c.genome for c in self.state.population]


def test_a_strategy_registered_after_import_is_a_search_choice(monkeypatch):
    from tracenas.cli import build_parser

    with pytest.raises(TracenasError, match="unknown strategy"):
        SearchConfig(strategy="anchors-only")
    monkeypatch.setattr(registry, "STRATEGY_HELP", dict(registry.STRATEGY_HELP))
    monkeypatch.setattr(registry, "_CLASSES", dict(registry._CLASSES))
    registry.register_strategy("anchors-only", _AnchorsOnly, "score the importance anchors")
    assert SearchConfig(strategy="anchors-only").strategy == "anchors-only"
    parser, _ = build_parser()
    search = parser._subparsers._group_actions[0].choices["search"]
    assert "anchors-only" in search._option_string_actions["--strategy"].choices
    cls = registry.strategy_class("anchors-only")
    sp = space()
    strategy = cls(cls.config_from(SearchConfig(strategy="anchors-only").resolved()), sp, budget(0.6, sp),
                   _toy_score, prior=PRIOR)
    best = strategy.run()
    assert strategy.state.history_len == 2 and best.score == max(strategy.state.scores.values())
    with pytest.raises(TracenasError, match="not a search strategy"):
        registry.register_strategy("bad", dict, "not a strategy")


def test_state_round_trips_the_generation_in_progress_and_reads_states_saved_without_it():
    from tracenas.search.strategies.state import EvolutionState

    evo = evolution()
    genomes = evo.begin_generation()
    assert evo.state.pending == genomes and evo.begin_generation() == genomes  # proposed once, not again
    saved = json.loads(json.dumps(evo.state_dict()))
    again = evolution()
    again.load_state_dict(saved)
    assert again.state.pending == genomes and again.rng.bit_generator.state == evo.rng.bit_generator.state
    evo.step(), again.step()
    assert evo.state_dict() == again.state_dict() and "pending" not in evo.state_dict()
    old = {k: v for k, v in saved.items() if k != "pending"}  # a state.json written before `pending` existed
    assert EvolutionState.from_dict(old).pending is None

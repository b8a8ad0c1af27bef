"""The settings and the resumable state every search strategy shares (`search/state.json`).

    state = EvolutionState.from_dict(json.loads(path.read_text()))   # what `--resume` loads
    path.write_text(json.dumps(state.to_dict()))                      # keys are the on-disk format

Pure Python: no numpy, torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracenas.arch import Genome
from tracenas.runtime.config import json_float

NEG_INF = float("-inf")


@dataclass
class EvolutionConfig:
    population: int = 30
    elites: int = 10
    iterations: int = 50
    crossover: float = 0.7
    mutation_depth: float = 0.2
    mutation_width: float = 0.2
    jitter_sigma: float = 0.25
    budget_tolerance: float = 0.02
    max_tries: int = 200
    seed: int = 0
    prior_powers: tuple[float, ...] = (0.0, 0.5, 1.0)
    init_depth_flips: int = 3

    def __post_init__(self) -> None:
        from tracenas.runtime.errors import TracenasError

        if self.population < 2:
            raise TracenasError("--population must be at least 2")
        if not 1 <= self.elites < self.population:
            raise TracenasError("--elites must be in [1, population)")
        if self.iterations < 1:
            raise TracenasError("--iterations must be at least 1")
        for name in ("crossover", "mutation_depth", "mutation_width"):
            if not 0 <= getattr(self, name) <= 1:
                raise TracenasError(f"--{name.replace('_', '-')} must be a probability in [0, 1]")
        if not 0 < self.budget_tolerance < 1:
            raise TracenasError("--budget-tolerance must be in (0, 1)")

    @property
    def total_generations(self) -> int:
        """Generations of a whole run, the initial one included (what `state.generation` counts up to)."""
        return self.iterations


@dataclass
class Candidate:
    genome: Genome
    score: float
    params: int

    def to_dict(self) -> dict:
        return {"genome": self.genome.to_dict(), "score": json_float(self.score), "params": self.params}

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        return cls(Genome.from_dict(d["genome"]), float(d["score"]), int(d["params"]))


@dataclass
class EvolutionState:
    generation: int = 0  # generations completed
    population: list[Candidate] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # genome key -> score (the cache)
    rng_state: dict | None = None
    history_len: int = 0
    rejected: int = 0
    best_per_generation: list[float] = field(default_factory=list)
    mean_per_generation: list[float] = field(default_factory=list)
    # the generation in progress: the genomes proposed for it (`rng_state` is then the RNG after proposing);
    # None between generations. A resume scores these (those already scored come from `scores`).
    pending: list[Genome] | None = None

    def best(self) -> Candidate | None:
        finite = [c for c in self.population if c.score > NEG_INF]
        return max(finite, key=lambda c: (c.score, c.genome.key())) if finite else None

    def to_dict(self) -> dict:
        d = {
            "generation": self.generation,
            "population": [c.to_dict() for c in self.population],
            "scores": {k: json_float(v) for k, v in self.scores.items()},
            "rng_state": self.rng_state,
            "history_len": self.history_len,
            "rejected": self.rejected,
            "best_per_generation": [json_float(x) for x in self.best_per_generation],
            "mean_per_generation": [json_float(x) for x in self.mean_per_generation],
        }
        if self.pending is not None:  # absent between generations: such a state reads as before this key existed
            d["pending"] = [g.to_dict() for g in self.pending]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EvolutionState":
        return cls(
            generation=int(d["generation"]),
            population=[Candidate.from_dict(c) for c in d["population"]],
            scores={k: float(v) for k, v in d["scores"].items()},
            rng_state=d["rng_state"],
            history_len=int(d["history_len"]),
            rejected=int(d.get("rejected", 0)),
            best_per_generation=[float(x) for x in d.get("best_per_generation", [])],
            mean_per_generation=[float(x) for x in d.get("mean_per_generation", [])],
            pending=None if d.get("pending") is None else [Genome.from_dict(g) for g in d["pending"]],
        )

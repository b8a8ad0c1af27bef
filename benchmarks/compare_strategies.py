"""Every search strategy through the same export -> recovery -> evaluation, on one footing (issue 18's table).

    OMP_NUM_THREADS=1 python benchmarks/compare_strategies.py runs/compare --budgets 0.6 --seeds 0 1 2 --jobs 2
    python benchmarks/compare_strategies.py runs/compare --budgets 0.8 --seeds 0          # the 80 % row set
    python benchmarks/compare_strategies.py runs/compare --table                           # print what is done
    python benchmarks/compare_strategies.py runs/compare-gpu --device cuda --jobs 8 --threads 2

Rows (`--rows`, default all): the TraceNAS evolution scored by `kl` and by Φ (`phi`), each exported with the
re-solved weights (`dense` inputs, OBS selection: the `tracenas run` default) and cut only (`-cut`: the same
searched architecture exported with `--reconstruct none`); `darwinlm` and `tyr` (weights from their own
database / supernet); `uniform` with and without reconstruction; `random` search (scored by kl); `depth`,
ShortGPT's depth-only baseline (drop the blocks of lowest Block Influence; `--min-layers 1` so that it can
reach the budget); `evolution-kl-distill`, the kl row's exported model recovered with distillation from the dense
model instead of plain next-token loss (same tokens, data order and LR). Each run is
`tracenas run --preset quick` (the quick search, the quick recovery: 100k tokens, same data order and LR for
every model) in OUT/b<budget>/s<seed>/<row>; a `-cut` or `-distill` row copies its base row's search (and,
for `-distill`, its export) and runs the remaining stages only. Every model (pruned and recovered) is then evaluated three ways:

* in-domain: held-out perplexity on the Wikipedia eval split (the pipeline's own eval, quick preset);
* out of domain: perplexity over every document of the Lee news corpus (`lee_background.cor`, 300 ABC news
  articles shipped in the `gensim` package, a dependency), written to OUT/ood.txt;
* a local multiple-choice task (`local:analogies.jsonl`): capital-of-country analogies built from gensim's
  `questions-words.txt` ("Athens is to Greece as Oslo is to", four countries to choose from), OUT/tasks.

The unpruned model is evaluated the same three ways (OUT/dense), the table's reference line.

Everything is skipped when its outputs exist, so a rerun resumes and `--table` prints. Commands run as
subprocesses, `--jobs` at a time, at `--threads` threads each. Results: OUT/results.json, and with `--save FILE`
the figures of every finished run merged into a records file after each run (docs/comparison.md's tables are printed
from benchmarks/results/compare-cpu.jsonl); the table: `benchmarks/compare_table.py OUT` (or FILE).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROWS: dict[str, dict] = {  # name -> how it is searched and exported
    "evolution-kl": dict(strategy="evolution", proxy="kl", reconstruct="dense"),
    "evolution-kl-cut": dict(base="evolution-kl", reconstruct="none"),
    # recovery on the same footing: the kl row's export, recovered with distillation from the dense model (same tokens)
    "evolution-kl-distill": dict(base="evolution-kl", reconstruct="dense", flags=["--distill", "true"]),
    "evolution-phi": dict(strategy="evolution", proxy="phi", reconstruct="dense"),
    "evolution-phi-cut": dict(base="evolution-phi", reconstruct="none"),
    "darwinlm": dict(strategy="darwinlm"),
    "tyr": dict(strategy="tyr"),
    "uniform": dict(strategy="uniform", reconstruct="dense"),
    "uniform-cut": dict(base="uniform", reconstruct="none"),
    "random": dict(strategy="random", proxy="kl", reconstruct="dense"),
    # ShortGPT: whole blocks only, as many as the budget needs (more than --min-layers' default allows)
    "depth": dict(strategy="depth", proxy="kl", reconstruct="dense", flags=["--min-layers", "1"]),
}
TASK = "analogies"


def gensim_data(name: str) -> Path:
    import gensim

    return Path(gensim.__file__).parent / "test" / "test_data" / name


def write_inputs(root: Path, questions: int = 500) -> tuple[Path, Path]:
    """OUT/ood.txt (the Lee news corpus, one article per line) and OUT/tasks/analogies.jsonl."""
    ood = root / "ood.txt"
    if not ood.is_file():
        lines = [ln.strip() for ln in gensim_data("lee_background.cor").read_text(errors="replace").splitlines()]
        ood.write_text("\n\n".join(ln for ln in lines if ln) + "\n")
    task = root / "tasks" / f"{TASK}.jsonl"
    if not task.is_file():
        task.parent.mkdir(parents=True, exist_ok=True)
        pairs, section = [], None
        for line in gensim_data("questions-words.txt").read_text().splitlines():
            if line.startswith(":"):
                section = line[1:].strip()
                continue
            if section == "capital-common-countries":
                pairs.append(line.split())
        rng = random.Random(0)
        countries = sorted({p[1] for p in pairs} | {p[3] for p in pairs})
        rng.shuffle(pairs)
        rows = []
        for a, b, c, d in pairs[:questions]:
            wrong = rng.sample([x for x in countries if x != d], 3)
            choices = wrong + [d]
            rng.shuffle(choices)
            rows.append({"question": f"{a} is the capital of {b}. {c} is the capital of", "choices": choices,
                         "answer": choices.index(d)})
        task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ood, task


@contextlib.contextmanager
def held(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on LOCK while the block runs: two invocations filling the same root (e.g. one row each,
    side by side) then never run the same stage at once; the second finds the first's results and skips it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._records_lock = threading.Lock()
        self.root: Path = args.out
        self.path = self.root / "results.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"runs": {}}

    def save(self) -> None:
        """Merge this process's runs into results.json (another invocation may be filling other rows)."""
        on_disk = json.loads(self.path.read_text()) if self.path.is_file() else {"runs": {}}
        on_disk["runs"].update({k: v for k, v in self.data["runs"].items() if v})
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(on_disk, indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    def tracenas(self, args: list[str], log: Path) -> float:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.args.threads), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        t = time.perf_counter()
        with open(log, "a") as f:
            f.write(f"\n$ tracenas {' '.join(args)}\n")
            f.flush()
            proc = subprocess.run([sys.executable, "-m", "tracenas", *args, "--threads", str(self.args.threads)],
                                  env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"tracenas {' '.join(args)} failed (exit {proc.returncode}); see {log}")
        return time.perf_counter() - t

    def run_dir(self, budget: str, seed: int, row: str) -> Path:
        return self.root / f"b{budget}" / f"s{seed}" / row

    def common(self) -> list[str]:
        a = self.args
        return ["--device", a.device, *(["--data", a.data] if a.data else []),
                *(["--model", a.model] if a.model else []), *a.extra.split()]

    def one(self, budget: str, seed: int, row: str) -> None:
        """One row at one budget and seed, under its lock (another invocation on the same root may hold it: this one
        then waits and finds every finished stage done)."""
        with held(self.run_dir(budget, seed, row).parent / f".{row}.lock"):
            self._one(budget, seed, row)

    def _one(self, budget: str, seed: int, row: str) -> None:
        spec, out = ROWS[row], self.run_dir(budget, seed, row)
        log = out.parent / f"{row}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        rec = self.data["runs"].setdefault(f"b{budget}/s{seed}/{row}", {})
        stages = "search,export,recover,eval"
        flags = ["--budget", budget, "--seed", str(seed), "--preset", "quick", "--eval-base", "false"]
        if not self.args.no_tasks:
            flags += ["--tasks", f"local:{self.root / 'tasks' / (TASK + '.jsonl')}"]
        base = self.run_dir(budget, seed, spec["base"]) if "base" in spec else None
        if base is not None and spec["base"] not in self.args.rows and not (base / "search" / "summary.json").is_file():
            # the base row is neither queued nor searched in this root: search here, as the base row would (same
            # strategy, proxy and seed: the same architecture), rather than wait on a recovery this row never uses
            spec = {**ROWS[spec["base"]], **{k: v for k, v in spec.items() if k != "base"}}
            base = None
        if base is not None:  # the base row's searched architecture, exported another way
            same_export = spec.get("reconstruct") == ROWS[spec["base"]].get("reconstruct")
            while not (base / "search" / "summary.json").is_file() or (
                    same_export and not (base / "model" / "config.json").is_file()):
                if not getattr(self, "_waiting", True):
                    return
                time.sleep(5)
            if not (out / "arch.json").is_file():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copytree(base / "search", out / "search", dirs_exist_ok=True)
                for name in ("search.yaml", "history.jsonl"):
                    shutil.copy2(base / name, out / name)
                shutil.copy2(base / "arch.json", out / "arch.json")
                if same_export:  # reuse the base row's exported model and its zero-shot evals
                    shutil.copytree(base / "model", out / "model", dirs_exist_ok=True)
                    for name in ("pruned", "pruned-ood"):
                        if (base / "eval" / name / "results.json").is_file():
                            shutil.copytree(base / "eval" / name, out / "eval" / name, dirs_exist_ok=True)
            stages = "export,recover,eval"
            strategy = json.loads((base / "arch.json").read_text()).get("strategy", "evolution")
            flags += ["--strategy", strategy]
        else:
            flags += ["--strategy", spec["strategy"]] + (["--proxy", spec["proxy"]] if spec.get("proxy") else [])
        # every strategy row recovers with the plain next-token loss, whatever `tracenas run` defaults to
        extra = spec.get("flags", [])
        flags += extra if "--distill" in extra else ["--distill", "false", *extra]
        if spec.get("reconstruct"):
            flags += ["--reconstruct", spec["reconstruct"]]
        if self.args.reuse and not out.exists():
            self.reuse(self.args.reuse / out.relative_to(self.root), out)
        if self.args.recover_dtype != "auto":
            flags += ["--recover-dtype", self.args.recover_dtype]
        if not (out / "eval" / "recovered" / "results.json").is_file():
            t = self.tracenas(["run", "--out", str(out), "--stages", stages, *flags, *self.common()], log)
            rec.setdefault("run_s", round(t, 1))
        for model, name in ((out / "model", "pruned-ood"), (out / "recover" / "model", "recovered-ood")):
            res = out / "eval" / name / "results.json"
            if not res.is_file():
                self.tracenas(["eval", str(model), "--data", str(self.root / "ood.txt"), "--ppl-split", "all",
                               "--preset", "quick", "--out", str(out / "eval" / name), "--device", self.args.device], log)
        rec.update(collect(out))

    def dense(self) -> None:
        """The unpruned model's figures, the table's reference line: in-domain perplexity and the task in
        OUT/dense/in-domain, out-of-domain perplexity in OUT/dense/ood."""
        a, out = self.args, self.root / "dense"
        out.mkdir(parents=True, exist_ok=True)
        model = [a.model] if a.model else []
        tasks = [] if a.no_tasks else ["--tasks", f"local:{self.root / 'tasks' / (TASK + '.jsonl')}"]
        data = ["--data", a.data] if a.data else []
        for name, flags in (("in-domain", [*data, *tasks]),
                            ("ood", ["--data", str(self.root / "ood.txt"), "--ppl-split", "all"])):
            with held(out / f".{name}.lock"):
                if (out / name / "results.json").is_file():
                    continue
                self.tracenas(["eval", *model, *flags, "--preset", "quick", "--out", str(out / name),
                               "--device", a.device], out / "eval.log")

    @staticmethod
    def reuse(src: Path, out: Path) -> None:
        """`--reuse ROOT`: start from ROOT's run of the same row (its search, export and zero-shot evals, which do not
        depend on the recovery settings); recovery and the recovered evals run anew."""
        if not (src / "model" / "config.json").is_file():
            return
        skip = {"recover", "recovered", "recovered-ood", "report.md", "run_timings.json"}
        shutil.copytree(src, out, ignore=lambda d, names: [n for n in names if n in skip])

    def save_records(self, path: Path) -> None:
        """`--save FILE`: merge every finished run (and the dense figures) into the records file that
        docs/comparison.md's tables are printed from, after each run, so that no finished figure depends on this machine surviving."""
        from compare_table import dense, runs, save_records

        with self._records_lock:
            save_records(path, runs(self.root), [d] if (d := dense(self.root)) else [])

    def all(self) -> None:
        a = self.args
        write_inputs(self.root)
        items = [(b, s, r) for s in a.seeds for b in a.budgets for r in a.rows]
        # base rows first, so a -cut row never waits on a base that is still queued behind it
        items.sort(key=lambda x: ("base" in ROWS[x[2]], a.seeds.index(x[1])))
        failures = []

        def guarded(item):
            try:
                self.dense() if item is None else self.one(*item)
            except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
                failures.append(f"{'/'.join(map(str, item or ['dense']))}: {err}")
            self.save()
            if a.save:
                self.save_records(a.save)

        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(guarded, [None, *items]))  # None: the dense model's evals (the reference line) first
        self.save()
        for f in failures:
            print("FAILED", f, file=sys.stderr)


def model_label(family: str, params: int) -> str:
    """The base model as the table names it, the same from every root (the model's path differs between machines)."""
    return f"{family} {params / 1e6:.1f}M"


def collect(run: Path) -> dict:
    """The figures of one finished run directory."""
    import yaml

    def ppl(name: str) -> float | None:
        p = run / "eval" / name / "results.json"
        return json.loads(p.read_text())["perplexity"]["ppl"] if p.is_file() else None

    def acc(name: str) -> float | None:
        p = run / "eval" / name / "results.json"
        if not p.is_file():
            return None
        tasks = json.loads(p.read_text()).get("tasks") or {}
        vals = next(iter(tasks.values()), None)
        # plain accuracy: the choices are country names, and length normalization only adds noise there
        return vals.get("acc", vals.get("acc_norm")) if isinstance(vals, dict) else None

    arch = json.loads((run / "arch.json").read_text())
    summary = json.loads((run / "search" / "summary.json").read_text())
    cost = arch.get("search_cost") or {}
    out = {"strategy": arch.get("strategy", "evolution"), "proxy": arch.get("proxy"), "params": arch["params"],
           "budget": arch["budget"], "blocks_kept": arch["num_layers_kept"], "blocks": len(arch["layers"]),
           "candidate_evaluations": cost.get("candidate_evaluations", summary.get("candidates_scored")),
           "search_tokens_trained": cost.get("finetune_tokens", 0),
           "search_wall_s": cost.get("wall_seconds", summary.get("wall_seconds_this_session")),
           "device": summary.get("device"), "model": model_label(arch["model"]["shape"]["family"], arch["base_params"]),
           "zero_shot": ppl("pruned"), "recovered": ppl("recovered"), "zero_shot_ood": ppl("pruned-ood"),
           "recovered_ood": ppl("recovered-ood"), "task_zero_shot": acc("pruned"), "task_recovered": acc("recovered")}
    rec = run / "model" / "reconstruction.json"
    rec_json, rec_cfg = run / "recover" / "recover.json", run / "recover" / "recover.yaml"
    dtype = json.loads(rec_json.read_text()).get("compute_dtype") if rec_json.is_file() else None
    if dtype is None:  # a recovery from before recover.json said (auto: bf16 autocast on a GPU, float32 on the CPU)
        dtype = yaml.safe_load(rec_cfg.read_text()).get("dtype", "auto") if rec_cfg.is_file() else "auto"
        if dtype == "auto":
            dtype = "bfloat16" if str(out["device"]).startswith("cuda") else "float32"
    out["recover_dtype"] = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, "fp32")
    out["export"] = "reconstructed" if rec.is_file() else ("database" if arch.get("levels") else "cut")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--budgets", nargs="+", default=["0.6"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default=None, help="another base model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--data", default=None, help="another in-domain corpus (default: the embedded Wikipedia; a .jsonl "
                                                 "of its documents gives the same splits)")
    ap.add_argument("--no-tasks", action="store_true", help="skip the local multiple-choice task (no lm-eval)")
    ap.add_argument("--extra", default="", help="more `tracenas run` flags for every row, e.g. '--iterations 2'")
    ap.add_argument("--recover-dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                    help="recovery compute dtype (auto: bf16 on a GPU, float32 on the CPU); bfloat16 is ~1.5x faster "
                         "on a CPU with AVX512-BF16 but moved the ranking (docs/comparison.md)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="another OUT root whose searches and exports to start from (a run that differs only in "
                         "its recovery settings, e.g. --recover-dtype)")
    ap.add_argument("--save", type=Path, default=None, metavar="FILE.jsonl",
                    help="after every run, merge the finished runs into this records file (compare_table.py --save; "
                         "docs/comparison.md's figures live in benchmarks/results/compare-cpu.jsonl)")
    ap.add_argument("--table", action="store_true", help="only print the table of what is done")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        Bench(args).all()
    subprocess.run([sys.executable, str(Path(__file__).parent / "compare_table.py"), str(args.out)], check=False)


if __name__ == "__main__":
    main()

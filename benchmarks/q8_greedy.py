"""q8_0 GGUF in llama.cpp vs float32 transformers: greedy agreement over 32 tokens, free-running and teacher-forced.

    python benchmarks/q8_greedy.py runs/quick/recover/model [more checkpoints ...] [--base]

Each checkpoint (a tracenas export or recovered model of the embedded default model; `--base` adds the unpruned
default model) is written as a q8_0 and a bf16 GGUF with the default model's tokenizer. Per prompt it prints:

* free-running: the agreeing prefix of the 32-token greedy continuations, float32 transformers vs the q8_0 GGUF,
  vs the bf16 GGUF, and vs transformers itself with its weights in bf16 (what any 8-bit-mantissa rounding does);
* teacher-forced (as `tracenas.export.gguf.verify.teacher_forced_misses`): at how many of the 32 positions of the float32
  continuation the q8_0 GGUF picks the same next token, and the float model's top-2 logit margin where it does not.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from tracenas.export.gguf import llamacpp
from tracenas.export.gguf.writer import write_gguf
from tracenas.export.gguf.verify import agreeing_prefix, float_greedy, float_greedy_margins, forced_misses, forced_tasks
from tracenas.models.loading import default_gguf_path, load_model, load_tokenizer, resolve_source
from tracenas.models.pruned import load_pruned

PROMPTS = ("The capital of France is", "In 1905, Albert Einstein published", "The river flows through")
TOKENS = 32


def check(name: str, model, tok, tmp: Path) -> list[dict]:
    """Both GGUFs of `model`, each loaded in llama.cpp once for every question about every prompt."""
    q8 = write_gguf(model, tmp / "q8.gguf", qtype="q8_0", source_gguf=default_gguf_path())
    bf = write_gguf(model, tmp / "bf16.gguf", qtype="bf16", source_gguf=default_gguf_path())
    hf_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    prompts = [tok(p).input_ids for p in PROMPTS]
    refs = [float_greedy_margins(model, ids, TOKENS) for ids in prompts]
    greedy = [{"op": "greedy", "tokens": ids, "n": TOKENS} for ids in prompts]
    forced = [task for ids, (cont, _) in zip(prompts, refs) for task in forced_tasks(ids, cont)]
    q8_answers = llamacpp.run_tasks(q8, greedy + forced)
    bf_answers = llamacpp.run_tasks(bf, greedy)
    rows = []
    for i, (prompt, ids, (ref, margins)) in enumerate(zip(PROMPTS, prompts, refs)):
        misses = forced_misses(ref, margins, q8_answers[len(greedy) + i * TOKENS:][:TOKENS])
        row = dict(model=name, prompt=prompt, q8_free=agreeing_prefix(q8_answers[i]["tokens"], ref),
                   bf16_gguf_free=agreeing_prefix(bf_answers[i]["tokens"], ref),
                   hf_bf16_free=agreeing_prefix(float_greedy(hf_bf16, ids, TOKENS), ref),
                   q8_forced=TOKENS - len(misses), miss_margins=[round(m, 3) for _, m in misses])
        rows.append(row)
        print(f"| {name} | {prompt!r} | {row['q8_free']} | {row['bf16_gguf_free']} | {row['hf_bf16_free']} | "
              f"{row['q8_forced']}/{TOKENS} | {max(row['miss_margins'], default=0):.3f} |", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*")
    ap.add_argument("--base", action="store_true", help="also the unpruned default model")
    args = ap.parse_args()
    tok = load_tokenizer(resolve_source(None))
    print(f"{llamacpp.version()}; float32 transformers greedy = reference; free-running: agreeing prefix of "
          f"{TOKENS} tokens")
    print("| model | prompt | q8_0 GGUF | bf16 GGUF | transformers bf16 | q8_0 teacher-forced | largest float "
          "top-2 margin at a miss |\n|---|---|---:|---:|---:|---:|---:|")
    models = [("base (unpruned)", lambda: load_model(None, dtype=torch.float32, with_tokenizer=False)[0])] \
        if args.base else []
    models += [(str(Path(p)), lambda p=p: load_pruned(p, dtype="float32")) for p in args.checkpoints]
    with tempfile.TemporaryDirectory() as tmp:
        for name, load in models:
            check(name, load().eval(), tok, Path(tmp))


if __name__ == "__main__":
    main()

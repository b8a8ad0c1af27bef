"""q8_0 GGUF in llama.cpp vs float32 transformers: how many of 32 greedy tokens agree, per prompt.

    python benchmarks/q8_greedy.py runs/quick/recover/model [more checkpoints ...]

Each checkpoint (a tracenas export or recovered model of the embedded default model) is written as a q8_0 GGUF
with the default model's tokenizer, then decoded greedily in llama.cpp (tools/llamacpp) and in transformers
(float32, no cache), 32 tokens from each prompt. Prints the length of the agreeing prefix.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from tracenas import llamacpp
from tracenas.gguf_export import write_gguf
from tracenas.models.loading import default_gguf_path, load_tokenizer, resolve_source
from tracenas.models.pruned import load_pruned

PROMPTS = ("The capital of France is", "In 1905, Albert Einstein published", "The river flows through")
TOKENS = 32


def float_greedy(model, ids: list[int]) -> list[int]:
    x, out = torch.tensor([ids]), []
    with torch.no_grad():
        for _ in range(TOKENS):
            nxt = int(model(x, use_cache=False).logits[0, -1].argmax())
            out.append(nxt)
            x = torch.cat([x, torch.tensor([[nxt]])], 1)
    return out


def main(paths: list[str]) -> None:
    tok = load_tokenizer(resolve_source(None))
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(paths):
            model = load_pruned(path, dtype="float32")
            q8 = write_gguf(model, Path(tmp) / f"{i}.gguf", qtype="q8_0", source_gguf=default_gguf_path())
            for prompt in PROMPTS:
                ids = tok(prompt).input_ids
                ref = float_greedy(model, ids)
                (got,) = llamacpp.run_tasks(q8, tasks=[{"op": "greedy", "tokens": ids, "n": TOKENS}])
                same = next((k for k, (a, b) in enumerate(zip(got["tokens"], ref)) if a != b), TOKENS)
                print(f"{path} | {prompt!r}: q8_0 greedy equals float32 for the first {same} of {TOKENS} tokens")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Tests for tracenas.eval.evaluate: perplexity, local lm-eval tasks offline, results files and errors."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys

import pytest
import torch
from conftest import make_tiny
from test_recover import NOUNS, make_word_tokenizer, save_model, write_corpus

from tracenas.runtime.errors import TracenasError
from tracenas.eval.evaluate import EvalConfig, evaluate, format_results
from tracenas.runtime.perplexity import perplexity
from tracenas.eval.tasks import parse_tasks

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason="needs lm-evaluation-harness: pip install 'tracenas[eval]'")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("TRACENAS_OFFLINE", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model_dir = save_model(root / "model", num_layers=2)
    corpus = write_corpus(root / "corpus.jsonl", docs=60)
    rng = random.Random(1)
    questions = root / "animals.jsonl"
    with open(questions, "w") as fh:
        for i in range(12):
            choices = rng.sample(NOUNS, 2 + i % 3)
            doc = {"question": f"the {rng.choice(NOUNS)} chases a", "choices": choices, "answer": i % len(choices)}
            if i % 4 == 0:
                doc["context"] = "the big dog sees a cat ."
            fh.write(json.dumps(doc) + "\n")
    return model_dir, corpus, questions


def test_perplexity_matches_direct_computation():
    model = make_tiny("qwen2-gqa")
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 128, (1000,), generator=g)
    got = perplexity(model, stream, seq_len=64, micro_batch=3, chunk=50)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, 1000, 64):
            window = stream[start:start + 64][None]
            n = window.shape[1] - 1
            total += model(input_ids=window, labels=window).loss.item() * n
            count += n
    assert got["tokens"] == count == 1000 - 16  # 16 windows (the last has 40 tokens), one unpredicted token each
    assert got["windows"] == 16
    assert got["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    rows = stream[:960].view(15, 64)  # [N, L] windows are used as given
    direct = sum(model(input_ids=r[None], labels=r[None]).loss.item() for r in rows) / 15
    assert perplexity(model, rows, micro_batch=4)["nll"] == pytest.approx(direct, rel=1e-5)


def _manual_accuracy(model, tokenizer, path) -> float:
    """Argmax of the summed log-likelihood of ' choice' after the task prompt, as lm-eval defines acc."""
    right = 0
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    for doc in docs:
        context = (doc["context"] + "\n" if doc.get("context") else "") + f"Question: {doc['question']}\nAnswer:"
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            cont = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"][len(ctx):]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, len(ctx) - 1:-1].float(), -1)
            scores.append(logp.gather(1, torch.tensor(cont)[:, None]).sum().item())
        right += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
    return right / len(docs)


@needs_lm_eval
def test_local_task_offline_end_to_end(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir, corpus, questions = setup
    cfg = EvalConfig(model=str(model_dir), data=str(corpus), tasks=f"local:{questions}", ppl_seq_len=32,
                     batch_size=4, out=str(tmp_path / "ev"))
    results = evaluate(cfg, progress=False)
    task = results["tasks"]["local_animals"]
    assert 0.0 <= task["acc"] <= 1.0 and 0.0 <= task["acc_norm"] <= 1.0
    assert task["samples"] == 12 and task["num_fewshot"] == 0 and task["acc_stderr"] is not None
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert task["acc"] == pytest.approx(_manual_accuracy(model, make_word_tokenizer(), questions))
    ppl = results["perplexity"]
    assert ppl["seq_len"] == 32 and ppl["ppl"] > 1 and ppl["tokens"] > 0
    assert results["model"]["params"] == sum(p.numel() for p in model.parameters())
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert saved["tasks"]["local_animals"]["acc"] == task["acc"]
    assert (tmp_path / "ev" / "eval.yaml").is_file()
    task_yaml = (tmp_path / "ev" / "tasks" / "local_animals.yaml").read_text()
    assert str(tmp_path / "ev" / "tasks" / "local_animals.jsonl") in task_yaml  # rerunnable with stock lm-eval
    table = format_results(results)
    assert "local_animals" in table and "acc_norm" in table and "ppl@32" in table


def test_perplexity_of_in_memory_model_and_context_clip(setup):
    model_dir, corpus, _ = setup
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    results = evaluate(EvalConfig(data=str(corpus), ppl_seq_len=4096), model=model, tokenizer=make_word_tokenizer(),
                       progress=False)
    assert results["perplexity"]["seq_len"] == 256  # the tiny model's max_position_embeddings
    assert "tasks" not in results and results["model"]["spec"] is None


@needs_lm_eval
def test_remote_task_offline_fails_fast_with_a_clear_message(setup):
    model_dir, corpus, _ = setup
    with pytest.raises(TracenasError, match="not reachable.*local:FILE.jsonl"):
        evaluate(EvalConfig(model=str(model_dir), data=str(corpus), tasks="arc_easy", offline=True), progress=False)


def test_task_parsing_and_validation(tmp_path):
    specs = parse_tasks("paper")
    assert {s.name: s.num_fewshot for s in specs} == {"arc_easy": 0, "arc_challenge": 25, "piqa": 0, "winogrande": 5,
                                                     "hellaswag": 10, "sciq": 0, "logiqa": 0, "boolq": 0, "mmlu": 5}
    assert [s.num_fewshot for s in parse_tasks("paper,hellaswag", num_fewshot=1)] == [1] * 9
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a"], '
                   '"answer": 0}\n')
    with pytest.raises(TracenasError, match=r"bad.jsonl, line 2: \"choices\" must be a list of at least two"):
        parse_tasks(f"local:{bad}")
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 2}\n')
    with pytest.raises(TracenasError, match="0-based index"):
        parse_tasks(f"local:{bad}")
    with pytest.raises(TracenasError, match="no such task file"):
        parse_tasks(f"local:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(TracenasError, match="local:"):
        parse_tasks(str(bad))


def test_errors(setup, monkeypatch):
    model_dir, corpus, questions = setup
    with pytest.raises(TracenasError, match="nothing to evaluate"):
        evaluate(EvalConfig(model=str(model_dir), ppl=False), progress=False)
    with pytest.raises(TracenasError, match="no such model directory"):
        evaluate(EvalConfig(model=str(model_dir.parent / "missing"), data=str(corpus)), progress=False)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the eval extra were not installed
    with pytest.raises(TracenasError, match=r"pip install 'tracenas\[eval\]'"):
        evaluate(EvalConfig(model=str(model_dir), tasks=f"local:{questions}"), progress=False)


@needs_lm_eval
def test_cli_eval(setup, tmp_path, capsys):
    from tracenas.cli import main

    model_dir, corpus, questions = setup
    rc = main(["eval", str(model_dir), "--data", str(corpus), "--ppl-seq-len", "32", "--tasks", f"local:{questions}",
               "--limit", "5", "--out", str(tmp_path / "cli")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "local_animals" in printed and "perplexity" in printed
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["tasks"]["local_animals"]["samples"] == 5
    assert main(["eval", str(model_dir), "--tasks", f"local:{tmp_path / 'none.jsonl'}"]) == 2

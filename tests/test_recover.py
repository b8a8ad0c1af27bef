"""Tests for tracenas.recover: continued pretraining, checkpoints and exact resume, on tiny models."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from conftest import make_tiny

from tracenas.runtime.errors import DataError, TracenasError
from tracenas.recover import RecoverConfig, TrainWindows, lr_at, parse_count, recover
from tracenas.runtime.losses import chunked_lm_loss

NOUNS = ["cat", "dog", "bird", "fish", "horse", "cow", "mouse", "lion"]
VERBS = ["sees", "likes", "chases", "follows", "eats", "finds"]
ADJS = ["red", "blue", "small", "big", "old", "young"]
WORDS = ["<unk>", "<eos>", "the", "a", "and", ".", *NOUNS, *VERBS, *ADJS]


def make_word_tokenizer():
    """A word-level tokenizer over a ~30-word vocabulary (fits any tiny model's embedding)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def write_corpus(path: Path, docs: int = 120, seed: int = 0) -> Path:
    """Documents of templated sentences: learnable structure, so the training loss must go down."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(docs):
            sentences = [f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} a {rng.choice(NOUNS)} ."
                         for _ in range(rng.randint(6, 10))]
            fh.write(json.dumps({"text": " ".join(sentences)}) + "\n")
    return path


def save_model(path: Path, kind: str = "llama-gqa", num_layers: int = 2) -> Path:
    model = make_tiny(kind, num_layers=num_layers)
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(path)
    make_word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("recover")
    return save_model(root / "model"), write_corpus(root / "corpus.jsonl")


def config(model_dir, data, out, **kw) -> RecoverConfig:
    base = {"model": str(model_dir), "data": str(data), "out": str(out), "seq_len": 32, "micro_batch": 4,
            "global_batch": 4, "tokens": 40 * 4 * 32, "lr": 3e-3, "save_every": 10}
    base.update(kw)
    return RecoverConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_recover_lowers_loss_and_keeps_shapes(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir, data = setup
    result = recover(config(model_dir, data, tmp_path / "run"), progress=False)
    assert result.completed and result.steps == 40 and result.tokens_seen == 40 * 4 * 32
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41))
    first, last = sum(r["loss"] for r in log[:5]) / 5, sum(r["loss"] for r in log[-5:]) / 5
    assert last < first - 1.0, (first, last)
    before = AutoModelForCausalLM.from_pretrained(model_dir)
    after = AutoModelForCausalLM.from_pretrained(result.path)
    shapes = {n: p.shape for n, p in before.named_parameters()}
    assert {n: p.shape for n, p in after.named_parameters()} == shapes
    assert not torch.equal(before.model.layers[0].mlp.up_proj.weight, after.model.layers[0].mlp.up_proj.weight)
    for name in ("recover.yaml", "recover.json", "loss.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert (Path(result.path) / "tokenizer.json").is_file()
    # the checkpoints only served --resume: gone once the model is saved, and the finished run is not retrained
    assert not (tmp_path / "run" / "checkpoints").exists()
    for resume in (False, True):
        with pytest.raises(TracenasError, match="already holds a finished recovery"):
            recover(config(model_dir, data, tmp_path / "run", resume=resume), progress=False)


def test_keep_final_checkpoints_keeps_the_newest(setup, tmp_path):
    model_dir, data = setup
    recover(config(model_dir, data, tmp_path / "run", tokens=30 * 4 * 32, keep_final_checkpoints=True), progress=False)
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == ["step-20", "step-30"]  # save_every 10, keep_checkpoints 2


def test_resume_after_kill_is_bit_identical(setup, tmp_path):
    model_dir, data = setup
    full = recover(config(model_dir, data, tmp_path / "full", tokens=30 * 4 * 32), progress=False)

    def kill_at_17(record):
        if record["step"] == 17:
            raise KeyboardInterrupt

    cfg = config(model_dir, data, tmp_path / "killed", tokens=30 * 4 * 32)
    with pytest.raises(KeyboardInterrupt):
        recover(cfg, progress=False, callback=kill_at_17)
    with pytest.raises(TracenasError, match="--resume"):
        recover(cfg, progress=False)
    resumed = recover(config(model_dir, data, tmp_path / "killed", tokens=30 * 4 * 32, resume=True), progress=False)
    assert resumed.resumed_from == 10 and resumed.steps == 30
    a, b = weights(Path(full.path)), weights(Path(resumed.path))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["step"] for line in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 31))  # the steps after the checkpoint were dropped and redone


def test_stop_after_steps_then_resume(setup, tmp_path):
    model_dir, data = setup
    first = recover(config(model_dir, data, tmp_path / "r", tokens=12 * 4 * 32, stop_after_steps=5), progress=False)
    assert not first.completed and first.path is None and first.steps == 5
    with pytest.raises(TracenasError, match="settings changed.*lr"):
        recover(config(model_dir, data, tmp_path / "r", tokens=12 * 4 * 32, resume=True, lr=1e-3), progress=False)
    second = recover(config(model_dir, data, tmp_path / "r", tokens=12 * 4 * 32, resume=True), progress=False)
    assert second.completed and second.resumed_from == 5


def test_distillation_runs_and_logs_kl(setup, tmp_path):
    model_dir, data = setup
    teacher = save_model(tmp_path / "teacher", num_layers=3)
    result = recover(config(model_dir, data, tmp_path / "kd", tokens=6 * 4 * 32, distill=True, teacher=str(teacher),
                            distill_alpha=0.5, distill_temperature=2.0), progress=False)
    log = [json.loads(line) for line in (tmp_path / "kd" / "train_log.jsonl").read_text().splitlines()]
    assert result.completed and all(r["kl"] > 0 for r in log)
    assert all(abs(r["loss"] - (0.5 * r["ce"] + 0.5 * r["kl"])) < 1e-4 for r in log)
    assert json.loads((tmp_path / "kd" / "recover.json").read_text())["teacher"] == str(teacher)


def test_chunked_loss_matches_full_logits():
    torch.manual_seed(0)
    student, teacher = make_tiny("qwen2-gqa"), make_tiny("llama-mha", seed=1)
    ids = torch.randint(0, 128, (3, 20))
    hidden = student.get_decoder()(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, 48)
    labels = ids[:, 1:].reshape(-1)
    ref = student(input_ids=ids, labels=ids).loss
    loss, _ = chunked_lm_loss(hidden, student.get_output_embeddings(), labels, chunk=7)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)

    t_hidden = teacher.get_decoder()(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, 48).detach()
    s_logits, t_logits = student(input_ids=ids).logits[:, :-1], teacher(input_ids=ids).logits[:, :-1]
    temp, alpha = 2.0, 0.3
    kl = torch.nn.functional.kl_div(torch.log_softmax(s_logits / temp, -1), torch.log_softmax(t_logits / temp, -1),
                                    log_target=True, reduction="sum") * temp**2 / labels.numel()
    kd, parts = chunked_lm_loss(hidden, student.get_output_embeddings(), labels, chunk=7,
                                teacher=(t_hidden, teacher.get_output_embeddings()), alpha=alpha, temperature=temp)
    torch.testing.assert_close(parts["kl"], kl.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kd, (1 - alpha) * ref + alpha * kl, rtol=1e-4, atol=1e-5)
    kd.backward()  # chunks are checkpointed; gradients must still flow to the student
    assert student.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_wsd_schedule_shape():
    cfg = RecoverConfig(lr=1e-3, schedule="wsd", min_lr_ratio=0.0).resolved()
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3 / 5) and lrs[4] == pytest.approx(1e-3)
    assert all(v == pytest.approx(1e-3) for v in lrs[5:70])
    assert all(a > b for a, b in itertools.pairwise(lrs[70:])) and lrs[-1] < 1e-4


def test_presets_and_batch_arithmetic():
    quick = RecoverConfig().resolved()
    assert (quick.seq_len, quick.micro_batch, quick.grad_accum, quick.lr) == (256, 4, 1, 3e-4)
    paper = RecoverConfig(preset="paper").resolved(world_size=8)
    assert (paper.seq_len, paper.global_batch, paper.grad_accum, paper.lr) == (4096, 1024, 32, 1e-4)
    assert paper.tokens == 20_000_000_000 and paper.schedule == "wsd"
    assert RecoverConfig(preset="paper", micro_batch=2, grad_accum=4).resolved().global_batch == 8
    assert parse_count("200k") == 200_000 and parse_count("2e9") == 2 * 10**9 and parse_count("1.5B") == 1_500_000_000
    with pytest.raises(TracenasError, match="sum to 1"):
        RecoverConfig(warmup_frac=0.1, stable_frac=0.65, decay_frac=0.3)
    with pytest.raises(TracenasError, match="token count"):
        RecoverConfig(tokens="lots")


def test_data_order_is_deterministic_and_covers_epochs():
    stream = torch.arange(100)
    w = TrainWindows(stream, 10, seed=3)
    first = w.batch(0, 10)
    assert sorted(first[:, 0].tolist()) == list(range(0, 100, 10))  # one epoch = every window once
    assert torch.equal(TrainWindows(stream, 10, seed=3).batch(4, 3), first[4:7])
    assert not torch.equal(w.batch(10, 10), first)  # the next epoch is reshuffled


def test_errors_are_clear(setup, tmp_path):
    model_dir, data = setup
    with pytest.raises(TracenasError, match="no such model directory"):
        recover(config(tmp_path / "missing", data, tmp_path / "x"), progress=False)
    with pytest.raises(DataError, match=r"not enough training tokens for one step.*has [\d,]+"):
        recover(config(model_dir, data, tmp_path / "y", seq_len=64, global_batch=4096, micro_batch=4096,
                       tokens=10**9), progress=False)
    with pytest.raises(DataError, match="not enough training tokens"):
        recover(config(model_dir, data, tmp_path / "z", tokens=100), progress=False)
    with pytest.raises(TracenasError, match="--teacher"):
        recover(config(model_dir, data, tmp_path / "w", distill=True), progress=False)


def test_cli_recover(setup, tmp_path):
    from tracenas.cli import main

    model_dir, data = setup
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text(f"data: {data}\nseq-len: 32\nmicro_batch: 4\nglobal_batch: 4\nlr: 0.003\n")
    rc = main(["recover", str(model_dir), "--config", str(yaml_file), "--tokens", "1280", "--out",
               str(tmp_path / "cli"), "--save-every", "0"])
    assert rc == 0
    saved = (tmp_path / "cli" / "recover.yaml").read_text()
    assert "seq_len: 32" in saved and "tokens: 1280" in saved
    assert json.loads((tmp_path / "cli" / "recover.json").read_text())["steps"] == 10
    assert main(["recover", str(tmp_path / "nope"), "--out", str(tmp_path / "cli2")]) == 2


def test_exported_pruned_model_round_trips(setup, tmp_path):
    """A tracenas-exported (non-uniform) input comes back in the same format: remote code, per-layer config,
    model card; it loads through load_model and through stock transformers with trust_remote_code."""
    from transformers import AutoModelForCausalLM

    from tracenas.export.checkpoint import export_pruned
    from tracenas.prune.masking import LayerSelection
    from tracenas.models.loading import load_model

    _, data = setup
    base = make_tiny("llama-gqa", num_layers=3)
    selection = [LayerSelection(True, (0, 1, 3, 4), (0, 1), tuple(range(64))),
                 LayerSelection(True, tuple(range(6)), (0, 1), tuple(range(96))),
                 LayerSelection(False, (), (), ())]
    pruned_dir = export_pruned(base, make_word_tokenizer(), selection, tmp_path / "pruned")
    assert (pruned_dir / "modeling_tracenas.py").is_file()
    result = recover(config(pruned_dir, data, tmp_path / "rec", tokens=5 * 4 * 32), progress=False)
    out = Path(result.path)
    for name in ("modeling_tracenas.py", "config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    cfg_in, cfg_out = (json.loads((d / "config.json").read_text()) for d in (pruned_dir, out))
    assert cfg_out["auto_map"] == cfg_in["auto_map"]
    assert cfg_out["tracenas"]["num_attention_heads"] == cfg_in["tracenas"]["num_attention_heads"] == [4, 6]
    assert cfg_out["num_attention_heads"] == cfg_in["num_attention_heads"] == 6  # the largest block
    readme = (out / "README.md").read_text()
    assert "tracenas recover" in readme and "Recovered from `pruned`" in readme
    assert str(tmp_path) not in readme  # the recovery note names inputs like the export's card: no absolute paths
    from huggingface_hub import ModelCard

    assert {"tracenas", "pruned"} <= set(ModelCard.load(out / "README.md").data.tags)
    before = load_model(pruned_dir)[0]
    after = load_model(out)[0]
    assert type(after) is type(before)
    assert {n: p.shape for n, p in after.named_parameters()} == {n: p.shape for n, p in before.named_parameters()}
    stock = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    ids = torch.randint(0, len(WORDS), (1, 12))
    torch.testing.assert_close(stock(input_ids=ids).logits, after(input_ids=ids).logits)


def test_two_ranks_with_torchrun_match_one_process(setup, tmp_path):
    """DDP over 2 CPU ranks (gloo): each rank trains on its half of every global batch, so the weights match
    a single process that accumulates the same global batch (up to float reduction order)."""
    import os
    import subprocess
    import sys

    model_dir, data = setup
    flags = ["--data", str(data), "--seq-len", "32", "--micro-batch", "2", "--global-batch", "4",
             "--tokens", str(8 * 4 * 32), "--lr", "3e-3", "--save-every", "4"]
    single = recover(config(model_dir, data, tmp_path / "one", micro_batch=2, tokens=8 * 4 * 32, save_every=4),
                     progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29519",
           "-m", "tracenas", "recover", str(model_dir), "--out", str(tmp_path / "two"), *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = (tmp_path / "two" / "recover.yaml").read_text()
    assert "world_size: 2" in saved and "grad_accum: 1" in saved
    one, two = weights(Path(single.path)), weights(tmp_path / "two" / "model")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    logs = [[json.loads(line)["loss"] for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
            for run in ("one", "two")]
    assert logs[1] == pytest.approx(logs[0], rel=1e-4)


def test_recover_json_records_the_compute_dtype(setup, tmp_path):
    """recover.json says what `--dtype` resolved to (auto is float32 on the CPU), so tables need not guess."""
    model_dir, data = setup
    for dtype, expected in (("auto", "float32"), ("bfloat16", "bfloat16")):
        out = tmp_path / dtype
        recover(config(model_dir, data, out, tokens=2 * 4 * 32, dtype=dtype), progress=False)
        record = json.loads((out / "recover.json").read_text())
        assert (record["compute_dtype"], record["teacher"]) == (expected, None)

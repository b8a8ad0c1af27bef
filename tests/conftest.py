"""Tiny randomly initialised Llama / Qwen2 models (MHA and GQA) shared by the unit tests."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY_KINDS = ("llama-mha", "llama-gqa", "qwen2-gqa", "qwen2-mha")
TINY_VOCAB = 320  # byte-level BPE needs 256 base symbols; test ids drawn below 128 stay valid


def make_tiny_tokenizer():
    """A byte-level BPE trained in memory on the embedded corpus' first article (no files, no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tracenas.data import load_split

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(load_split(None, "calibration")[:3], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def save_tiny(path, kind: str = "llama-gqa", num_layers: int = 4):
    """A tiny model + tokenizer saved as an ordinary HF directory (loadable with --model PATH)."""
    model = make_tiny(kind, num_layers=num_layers)
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


def run_killed(owner, name: str, run, *, when=lambda *args: True, nth: int = 1) -> None:
    """Run `run()` with `owner.<name>` (a module's function, or a class's method) interrupted as a kill would be:
    its `nth` call for which `when(*call args)` holds raises KeyboardInterrupt instead of running. Fails unless
    the run was interrupted; `owner.<name>` is itself again afterwards (the resumed run uses the real one)."""
    real = getattr(owner, name)
    hits = []

    def dies(*args, **kwargs):
        if when(*args, **kwargs):
            hits.append(args)
            if len(hits) == nth:
                raise KeyboardInterrupt
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(owner, name, dies)
        with pytest.raises(KeyboardInterrupt):
            run()


def make_tiny(kind: str, seed: int = 0, num_layers: int = 4):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

    family, attn = kind.split("-")
    heads, kv = (4, 4) if attn == "mha" else (6, 2)
    common = dict(vocab_size=TINY_VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=num_layers,
                  num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256,
                  head_dim=8, tie_word_embeddings=(family == "qwen2"))
    torch.manual_seed(seed)
    if family == "llama":
        cfg = LlamaConfig(**common, attention_bias=False)
        model = LlamaForCausalLM(cfg)
    elif family == "qwen3":  # q_norm / k_norm on each head's head_dim
        model = Qwen3ForCausalLM(Qwen3Config(**{**common, "tie_word_embeddings": False}))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**{**common, "tie_word_embeddings": False}, sliding_window=None))
    else:
        cfg = Qwen2Config(**common)
        model = Qwen2ForCausalLM(cfg)
    model.config._attn_implementation = "eager"
    # Random init has tiny weights; scale norms so that pruning visibly changes outputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models are dominated by thread overhead; one thread is faster and steadier on small CI boxes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=TINY_KINDS)
def tiny_model(request):
    return make_tiny(request.param)


@pytest.fixture
def tiny_batches():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (4, 32), generator=g)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama-gqa")

"""The tokenizer and chat template of a GGUF export: copied from the source GGUF, or built from an HF tokenizer.

    from tracenas.export.gguf.tokenizer import tokenizer_fields
    fields = tokenizer_fields(vocab_size, source_gguf="base.gguf")      # or hf_tokenizer=tok
    for f in fields: writer.add_key_value(f.key, f.value, f.type, sub_type=f.sub_type)

A base model read from a GGUF file (the embedded default, or any `--model x.gguf`) already carries llama.cpp's
own description of its tokenizer (`tokenizer.ggml.*`, `tokenizer.chat_template`): it is copied field by field.
Otherwise the HF tokenizer is described the way llama.cpp reads a byte-level BPE tokenizer (`gpt2` model:
tokens, token types, merges, special ids, and the pre-tokenizer by name). Other tokenizers (SentencePiece
`tokenizer.model`, WordPiece) are refused with one line rather than written wrong.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from tracenas.runtime.errors import TracenasError

log = logging.getLogger(__name__)

# llama.cpp pre-tokenizer names, recognized from tokenizer.json's pre_tokenizer (the split regex decides how
# text is cut before BPE; llama.cpp has each one built in under a name, listed in src/llama-vocab.cpp).
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
                r"\s+(?!\S)|\s+")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class Field:
    """One GGUF key/value: `type` and `sub_type` are `gguf.GGUFValueType`s (sub_type for arrays)."""

    key: str
    value: Any
    type: Any
    sub_type: Any = None


def _describe(pre: dict | None) -> list[tuple]:
    """A pre-tokenizer as a list of (type, detail) steps, Sequence flattened."""
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _describe(p)]
    kind = pre.get("type")
    if kind == "ByteLevel":
        return [("ByteLevel", bool(pre.get("use_regex", True)))]
    if kind == "Digits":
        return [("Digits", bool(pre.get("individual_digits", False)))]
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return [("Split", pattern.get("Regex") or pattern.get("String"))]
    return [(kind, None)]


def pre_tokenizer_name(pre: dict | None) -> str | None:
    """llama.cpp's name for a byte-level pre-tokenizer, or None when it is not one llama.cpp has built in."""
    steps = _describe(pre)
    known = {
        (("ByteLevel", True),): "gpt-2",
        (("Digits", True), ("ByteLevel", True)): "smollm",
        (("Split", _QWEN2_REGEX), ("ByteLevel", False)): "qwen2",
        (("Split", _LLAMA3_REGEX), ("ByteLevel", False)): "llama-bpe",
    }
    return known.get(tuple(steps))


def from_gguf(path: str | os.PathLike, vocab_size: int) -> list[Field]:
    """Every `tokenizer.*` field of a GGUF file, as stored; refused if its vocabulary is not the model's."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    out = []
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        out.append(Field(name, field.contents(), kind, sub))
    tokens = next((f.value for f in out if f.key == "tokenizer.ggml.tokens"), None)
    if tokens is None:
        raise TracenasError(f"{path} has no tokenizer (tokenizer.ggml.tokens)")
    if len(tokens) != vocab_size:
        raise TracenasError(f"the tokenizer of {path} has {len(tokens)} tokens but the model's embeddings have "
                            f"{vocab_size} rows")
    return out


def from_hf(tokenizer, vocab_size: int) -> list[Field]:
    """A byte-level BPE HF tokenizer as llama.cpp's `gpt2` tokenizer model."""
    from gguf import GGUFValueType as T
    from gguf import TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TracenasError("the GGUF export needs a fast (tokenizer.json) HF tokenizer or a GGUF source model")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    byte_level = any(step[0] == "ByteLevel" for step in _describe(spec.get("pre_tokenizer"))) or \
        (spec.get("decoder") or {}).get("type") == "ByteLevel"
    if model.get("type") != "BPE" or not byte_level:
        raise TracenasError(f"the GGUF export converts byte-level BPE tokenizers only, this one is "
                            f"{model.get('type')!r}{'' if byte_level else ' without byte-level pre-tokenization'}; "
                            "start from a GGUF base model (--model x.gguf) to carry its tokenizer over")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise TracenasError(f"the tokenizer has token ids up to {max(vocab.values())} but the model's embeddings "
                            f"have {vocab_size} rows")
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    tokens, types = [], []
    for i in range(vocab_size):
        tok = by_id.get(i)
        if tok is None:  # embedding rows past the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
        elif tok in added:
            tokens.append(tok)
            types.append(int(TokenType.CONTROL if added[tok].special else TokenType.USER_DEFINED))
        else:
            tokens.append(tok)
            types.append(int(TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        log.warning("the tokenizer's pre-tokenizer is not one llama.cpp knows by name; llama.cpp will use its "
                    "default split, which may cut text differently from transformers")
    fields = [Field("tokenizer.ggml.model", "gpt2", T.STRING),
              Field("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
              Field("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
              Field("tokenizer.ggml.merges", merges, T.ARRAY, T.STRING)]
    if pre is not None:
        fields.append(Field("tokenizer.ggml.pre", pre, T.STRING))
    for what in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{what}_token_id", None)
        if isinstance(tid, int):
            fields.append(Field(f"tokenizer.ggml.{what}_token_id", tid, T.UINT32))
    fields.append(Field("tokenizer.ggml.add_bos_token", bool(getattr(tokenizer, "add_bos_token", False)), T.BOOL))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        fields.append(Field("tokenizer.chat_template", template, T.STRING))
    return fields


def tokenizer_fields(vocab_size: int, *, source_gguf: str | os.PathLike | None = None, hf_tokenizer=None) -> list[Field]:
    """The tokenizer of the export: the source GGUF's when there is one, else the HF tokenizer's."""
    if source_gguf is not None:
        return from_gguf(source_gguf, vocab_size)
    if hf_tokenizer is None:
        raise TracenasError("the GGUF export needs a tokenizer: none was found with the model")
    return from_hf(hf_tokenizer, vocab_size)


__all__ = ["Field", "from_gguf", "from_hf", "pre_tokenizer_name", "tokenizer_fields"]

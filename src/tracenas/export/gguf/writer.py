"""Write a (pruned) causal LM as one GGUF file that llama.cpp, and so Ollama, runs: per-layer sizes included.

    tracenas export runs/demo --format gguf --gguf-type q8_0      # -> runs/demo/model.gguf

    from tracenas.export.gguf.writer import write_gguf
    write_gguf(model, "out/model.gguf", qtype="f16", hf_tokenizer=tok)      # or source_gguf="base.gguf"

A plain `llama` GGUF has one head count and one FFN width for all layers, so a non-uniform pruned model is not
expressible in it (llama.cpp refuses it: "ffn_gate.weight has wrong shape"). llama.cpp's `deci` architecture
(NVIDIA's Nemotron-NAS models) is the Llama block with its own query-head, KV-head and FFN sizes per layer,
every projection bias optional; read in llama.cpp's src/models/deci.cpp and src/llama-model.cpp:
- `deci.attention.head_count`, `.head_count_kv` and `deci.feed_forward_length` are per-layer arrays. The head
  size is read from layer 0's head count unless `attention.key_length` is given, so it is always written.
- q/k/v/o and gate/up/down biases are loaded when present (Qwen2's q/k/v biases, Llama's `attention_bias`).
- RoPE is llama.cpp's "normal" type (rotates adjacent pairs), so q/k rows are permuted from the HF layout
  (rotates the two halves of a head), as llama.cpp's own converter does for Llama; linear and llama3 scaling
  are supported (llama3 through a `rope_freqs` tensor).
- A layer with zero query heads is attention-free (exact); but a layer with zero FFN width is skipped whole,
  its attention output included (a `continue` before the residual update), and a first layer without heads
  sets the head size to 0 for all layers: both are refused by `check_layers`.
Dropped blocks are simply absent (the sliced model has them removed). Written to a temporary file in the
target's directory and renamed: a failed write leaves no partial file.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tracenas.runtime.errors import TracenasError, io_failure_reason, is_io_failure
from tracenas.export.gguf.tokenizer import Field, tokenizer_fields
from tracenas.models.adapter import ATTN_PROJ, ModelAdapter, get_adapter

log = logging.getLogger(__name__)

ARCH = "deci"
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
Q8_BLOCK = 32  # q8_0 quantizes rows in blocks of 32 values


@dataclass(frozen=True)
class LayerSizes:
    """One block as llama.cpp sees it."""

    heads: int
    kv_heads: int
    ffn: int


def layer_sizes(adapter: ModelAdapter, head_dim: int) -> list[LayerSizes]:
    """Each block's query heads, KV heads and MLP width, read off its projections."""
    out = []
    for layer in adapter.layers():
        heads = kv = ffn = 0  # a removed sub-block (tracenas.models.remote NoAttention / NoMLP) has size 0
        if adapter.has_attention(layer):
            heads = adapter.attn_proj(layer, "q_proj").out_features // head_dim
            kv = adapter.attn_proj(layer, "k_proj").out_features // head_dim
        if adapter.has_mlp(layer):
            ffn = adapter.mlp_proj(layer, "gate_proj").out_features
        out.append(LayerSizes(heads, kv, ffn))
    return out


def check_layers(sizes: list[LayerSizes]) -> None:
    """Refuse, in one line, a block layout that llama.cpp's deci would load but run wrong."""
    if not sizes:
        raise TracenasError("the model has no blocks")
    if sizes[0].heads == 0:
        raise TracenasError("llama.cpp cannot express this model: its first block has no attention, and llama.cpp "
                            "reads the head size of every block from the first one")
    for i, s in enumerate(sizes):
        if s.ffn == 0 and s.heads > 0:
            raise TracenasError(f"llama.cpp cannot express this model: block {i} has attention but no MLP, and "
                                "llama.cpp's per-layer architecture skips such a block's attention output")
        if s.heads and (s.kv_heads == 0 or s.heads % s.kv_heads):
            raise TracenasError(f"block {i}: {s.heads} query heads cannot share {s.kv_heads} KV heads evenly")


def check_expressible(model: nn.Module) -> ModelAdapter:
    """The model's adapter, or a one-line `TracenasError` saying why llama.cpp cannot run it."""
    adapter = get_adapter(model)
    reason = adapter.llamacpp_blocker()
    if reason:
        raise TracenasError(f"llama.cpp cannot express this {model.config.model_type} model: {reason}")
    return adapter


# --- tensors ---------------------------------------------------------------------------------------------
def _rope_pairs(w: np.ndarray, heads: int) -> np.ndarray:
    """HF rotates the two halves of each head; llama.cpp's normal RoPE rotates adjacent pairs: interleave."""
    shape = w.shape
    return w.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _encode(name: str, w: np.ndarray, qtype: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor: 1-D tensors (norms, biases) stay f32, as llama.cpp wants."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim == 1 or qtype == "f32":
        return w, None
    if qtype == "q8_0" and w.shape[-1] % Q8_BLOCK == 0:
        return quants.quantize(w, Q.Q8_0), Q.Q8_0
    if qtype == "bf16":
        return quants.quantize(w, Q.BF16), Q.BF16
    if qtype == "q8_0":
        log.debug("%s: rows of %d values are not a multiple of %d; stored as f16", name, w.shape[-1], Q8_BLOCK)
    return w.astype(np.float16), None


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to("cpu", torch.float32).numpy()


def llama3_rope_factors(params: dict, head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3's RoPE scaling (long wavelengths slowed by `factor`, a smooth ramp
    between), the `rope_freqs` tensor llama.cpp multiplies the base frequencies' periods by."""
    base = float(params["rope_theta"])
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old_ctx = float(params.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _tensors(model: nn.Module, adapter: ModelAdapter, sizes: list[LayerSizes]):
    """(gguf name, float32 array) for every tensor llama.cpp loads, in llama.cpp's names and layouts."""
    yield "token_embd.weight", _numpy(adapter.decoder().embed_tokens.weight)
    yield "output_norm.weight", _numpy(adapter.decoder().norm.weight)
    head, embed = adapter.lm_head().weight, adapter.decoder().embed_tokens.weight
    if head is not embed and head.data_ptr() != embed.data_ptr():
        yield "output.weight", _numpy(head)  # a tied head is omitted: llama.cpp then reuses token_embd
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    for i, (layer, s) in enumerate(zip(adapter.layers(), sizes)):
        if s.heads:
            yield f"blk.{i}.attn_norm.weight", _numpy(layer.input_layernorm.weight)
        if s.ffn:
            yield f"blk.{i}.ffn_norm.weight", _numpy(layer.post_attention_layernorm.weight)
        for proj, lin in adapter.projections(layer).items():
            if not (s.heads if proj in ATTN_PROJ else s.ffn):  # an absent sub-block has no tensors
                continue
            heads = {"q_proj": s.heads, "k_proj": s.kv_heads}.get(proj)
            for kind in ("weight", "bias"):
                t = _numpy(getattr(lin, kind, None))
                if t is None:
                    continue
                yield f"blk.{i}.{names[proj]}.{kind}", (_rope_pairs(t, heads) if heads else t)


# --- writing ---------------------------------------------------------------------------------------------
def _file_type(qtype: str) -> int:
    from gguf import LlamaFileType as F

    return int({"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[qtype])


def _hparams(writer, model: nn.Module, adapter: ModelAdapter, sizes: list[LayerSizes], head_dim: int) -> None:
    from gguf import RopeScalingType

    cfg = model.config
    ctx = int(getattr(cfg, "max_position_embeddings", 4096))
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    if window and window < ctx:  # Mistral v0.1: exact up to the window; llama.cpp's deci attends to everything
        log.warning("the model attends over a sliding window of %d tokens; the GGUF declares that as its "
                    "context length (llama.cpp attends to the whole context)", window)
        ctx = int(window)
    writer.add_context_length(ctx)
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(len(sizes))
    writer.add_feed_forward_length([s.ffn for s in sizes])
    writer.add_head_count([s.heads for s in sizes])
    writer.add_head_count_kv([s.kv_heads for s in sizes])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(getattr(cfg, "rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(adapter.decoder().embed_tokens.weight.shape[0]))
    rope = adapter.rope_parameters()
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def write_gguf(model: nn.Module, path: str | os.PathLike, *, qtype: str = "f16", source_gguf: str | os.PathLike | None = None,
               hf_tokenizer=None, name: str | None = None) -> Path:
    """Write `model` (a stock or tracenas-sliced Llama / Qwen2 / Mistral) as one GGUF file at `path`, atomically.

    The tokenizer comes from `source_gguf` when given (the GGUF the base model was read from), else from
    `hf_tokenizer`. `qtype`: f32, f16, bf16 or q8_0 for the 2-D weights (norms and biases stay f32; a matrix
    whose rows are not a multiple of 32 stays f16 under q8_0).
    """
    import gguf

    if qtype not in GGUF_TYPES:
        raise TracenasError(f"unknown GGUF type {qtype!r}; choose from {', '.join(GGUF_TYPES)}")
    adapter = check_expressible(model)
    head_dim = int(adapter.attention(adapter.layers()[0]).head_dim)
    sizes = layer_sizes(adapter, head_dim)
    check_layers(sizes)
    vocab = int(adapter.decoder().embed_tokens.weight.shape[0])
    fields: list[Field] = tokenizer_fields(vocab, source_gguf=source_gguf, hf_tokenizer=hf_tokenizer)
    target = Path(path).expanduser().absolute()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TracenasError(f"cannot create {target.parent}: {err.strerror or err}") from err
    if target.is_dir():
        raise TracenasError(f"{target} is a directory; the GGUF export writes one file")
    check_replaceable(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_name(name if (name or "").endswith(NAME_SUFFIX) else f"{name or model.config.model_type}{NAME_SUFFIX}")
        writer.add_file_type(_file_type(qtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _hparams(writer, model, adapter, sizes, head_dim)
        for f in fields:
            writer.add_key_value(f.key, f.value, f.type, sub_type=f.sub_type)
        with torch.no_grad():
            rope = adapter.rope_parameters()
            if rope["rope_type"] == "llama3":
                writer.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, head_dim))
            for tname, array in _tensors(model, adapter, sizes):
                data, raw = _encode(tname, array, qtype)
                writer.add_tensor(tname, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, target)
    except BaseException as err:
        if tmp.exists():
            tmp.unlink()
        if is_io_failure(err):
            raise TracenasError(f"GGUF export to {target} failed: {io_failure_reason(err)}") from err
        raise
    log.info("wrote %s (%s, %d blocks, %.1f MB)", target, qtype, len(sizes), target.stat().st_size / 1e6)
    return target




# --- from a checkpoint on disk ---------------------------------------------------------------------------
def gguf_path(target: str | os.PathLike) -> Path:
    """Where the GGUF of an HF checkpoint directory goes by default: next to it (`RUN/model` -> `RUN/model.gguf`)."""
    target = Path(target)
    return target if target.suffix == ".gguf" else target.with_name(target.name + ".gguf")


def source_gguf_of(checkpoint: str | os.PathLike) -> Path | None:
    """The GGUF file a checkpoint's base model was read from, if any: from the arch.json of the run directory
    that holds it (`RUN/model`, `RUN/recover/model`), so that the export carries llama.cpp's own tokenizer."""
    from tracenas.arch import ArchFile
    from tracenas.models.loading import resolve_source

    for parent in list(Path(checkpoint).absolute().parents)[:3]:
        if (parent / "arch.json").is_file():
            try:
                source = resolve_source(ArchFile.read(parent / "arch.json").source_spec())
            except TracenasError as err:
                log.info("base model of %s not found (%s); using the checkpoint's tokenizer", checkpoint, err)
                return None
            return Path(source.path) / source.gguf_file if source.gguf_file else None
    return None


NAME_SUFFIX = " (tracenas)"  # ends the `general.name` of every GGUF tracenas writes


def check_replaceable(target: Path) -> None:
    """An existing `target` is replaced only when it is a GGUF that tracenas wrote (its `general.name` ends in
    " (tracenas)"); anything else a user keeps there is refused in one line, before any work."""
    if not target.exists():
        return
    import gguf

    try:
        field = gguf.GGUFReader(str(target)).fields.get("general.name")
        name = field.contents() if field is not None else None
    except Exception:  # noqa: BLE001 - not a GGUF at all (any reader error): not ours
        name = None
    if not (isinstance(name, str) and name.endswith(NAME_SUFFIX)):
        raise TracenasError(f"refusing to replace {target}: it is not a GGUF file that tracenas wrote; choose "
                            "another --out or move it away first")


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None, *, qtype: str = "f16") -> Path:
    """Convert a checkpoint directory (a tracenas export, a recovered model, or a stock HF model) to one GGUF file,
    by default next to it."""
    from tracenas.models.loading import load_model, load_tokenizer, resolve_source

    source = resolve_source(str(checkpoint))
    model, _, _ = load_model(str(checkpoint), dtype=torch.float32, device="cpu", with_tokenizer=False)
    base_gguf = source_gguf_of(checkpoint) if source.gguf_file is None else Path(source.path) / source.gguf_file
    tokenizer = None if base_gguf is not None else load_tokenizer(source)
    target = Path(out) if out is not None else gguf_path(Path(checkpoint).absolute())
    return write_gguf(model, target, qtype=qtype, source_gguf=base_gguf, hf_tokenizer=tokenizer,
                      name=Path(checkpoint).absolute().name)


__all__ = ["ARCH", "GGUF_TYPES", "LayerSizes", "check_expressible", "check_layers", "export_checkpoint", "gguf_path",
           "layer_sizes", "llama3_rope_factors", "source_gguf_of", "write_gguf"]

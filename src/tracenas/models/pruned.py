"""A pruned checkpoint on disk: write one (`save_pruned`, its model card, sharded safetensors, the modeling file
for non-uniform blocks) and load it back (`load_pruned`), with one-line errors.

    from tracenas.models.pruned import load_pruned      # also `tracenas.load_pruned`
    model = load_pruned("runs/demo/model", dtype="bfloat16", device="cuda")

Writing lives here, below the stages, because two stages write checkpoints: export (a sliced base model) and
recover (the fine-tuned one).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracenas.models.adapter import adapter_class_for, get_adapter
from tracenas.models.remote import modeling_tracenas as remote
from tracenas.runtime.config import format_count
from tracenas.runtime.device import to_torch_dtype
from tracenas.runtime.errors import TracenasError, io_failure_reason, is_io_failure
from tracenas.runtime.rundir import install_dir, staging_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
REMOTE_FILE = "modeling_tracenas.py"
DEFAULT_MAX_SHARD_SIZE = 5 * 1024**3  # bytes, as transformers does

def numel(model: nn.Module) -> int:
    """Parameter count with tied weights counted once (what `parameters()` yields)."""
    return sum(p.numel() for p in model.parameters())


# --- writing -----------------------------------------------------------------------------------------------
def _prepare_config(model: nn.Module, torch_dtype: torch.dtype, head_dim: int) -> bool:
    """Make `model.config` describe the sliced model; return whether it is uniform (stock-loadable)."""
    cfg = model.config
    fields = dict(cfg.tracenas)
    uniform = remote.is_uniform_fields(fields)
    stock = adapter_class_for(cfg.model_type).stock_class  # one-line error for an unsupported family
    cfg.head_dim = head_dim  # pruned head counts must never change the head size
    if getattr(cfg, "quantization_config", None) is not None:
        try:
            del cfg.quantization_config
        except AttributeError:
            cfg.quantization_config = None
    for name in remote.PER_LAYER_FIELDS:
        # the base sizes, before the top level describes the pruned model (kept when re-saving one)
        fields.setdefault("base_" + name, getattr(cfg, name))
        # largest per-layer value (the one value when uniform): a tool that ignores the per-layer lists
        # builds blocks at least as large as any stored one and fails on shapes instead of running base sizes
        setattr(cfg, name, max(fields[name]))
    if uniform:
        cfg.architectures = [stock]
        if hasattr(cfg, "auto_map"):
            del cfg.auto_map
    else:
        name = remote.PREFIX + stock
        cfg.architectures = [name]
        cfg.auto_map = {"AutoModelForCausalLM": f"modeling_tracenas.{name}"}
    fields.update(format_version=FORMAT_VERSION, uniform=uniform)
    cfg.tracenas = fields
    cfg.dtype = torch_dtype
    cfg.use_cache = True
    return uniform


def _save_weights(model: nn.Module, directory: Path, max_shard_size: int) -> None:
    """safetensors only; a tensor shared by several names (tied embeddings) is stored once."""
    import safetensors.torch

    seen: dict[tuple, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape))
        if t.numel() and key in seen:
            log.debug("%s is tied to %s; stored once", name, seen[key])
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        safetensors.torch.save_file(shards[0], str(directory / WEIGHTS_NAME), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        safetensors.torch.save_file(shard, str(directory / fname), metadata=meta)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / WEIGHTS_INDEX_NAME).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,} ({format_count(value)})"
    return str(value)


# How a card describes the proxies the issue tracker asked for by name; any other proxy by its registry help.
_PROXY_DESCRIPTIONS = {
    "phi": "gradient-trace correlation with the base model (Φ: sparsity-weighted Pearson correlation of "
           "LoRA-B gradient traces)",
    "kl": "KL divergence of the candidate's next-token distributions to the base model's",
}
# `card` keys that go to the Hub metadata or the introduction, not to the "How it was found" table as such.
_META_KEYS = ("base_model", "license")


def describe_proxy(name: str) -> str:
    """What a model card says the search scored candidates by."""
    from tracenas.proxies.registry import UnknownProxyError, get_proxy

    if name in _PROXY_DESCRIPTIONS:
        return _PROXY_DESCRIPTIONS[name]
    try:
        return get_proxy(name).help
    except UnknownProxyError:
        return f"the `{name}` proxy"


def card_metadata(card: dict) -> Any:
    """The Hub metadata of an exported checkpoint's model card (`huggingface_hub.ModelCardData`)."""
    from huggingface_hub import ModelCardData

    return ModelCardData(base_model=card.get("base_model"), license=card.get("license"), library_name="transformers",
                         pipeline_tag="text-generation", tags=["tracenas", "pruned"])


def _introduction(card: dict, base_params: int) -> list[str]:
    source, proxy = card.get("source_model"), card.get("proxy")
    if not source and not proxy:
        return []
    what = f"Structured pruning of `{source}`" if source else "Structured pruning"
    how = "found by tracenas: a training-free search over which decoder blocks, attention heads and MLP channels to keep"
    if card.get("strategy"):
        how += f" ({card['strategy']} strategy)"
    budget = card.get("budget")
    if isinstance(budget, int) and not isinstance(budget, bool):
        how += f", under a budget of {format_count(budget)} parameters ({budget / base_params:.1%} of the base)"
    if proxy:
        how += f", scoring each candidate by {describe_proxy(str(proxy))}"
    return [f"{what} {how}. Not fine-tuned after pruning unless a section below says so.", ""]


def model_card(config, params: int, base_params: int, card: dict | None) -> str:
    """README.md: Hub metadata, what was kept, how big it is, how it was found, and how to load it.

    `card` entries: `source_model` (a local path is shown by its last component only), `base_model` and
    `license` (Hub metadata), `proxy`, `strategy`, `budget`, and any others, all listed under "How it was found".
    """
    from huggingface_hub import ModelCard

    from tracenas.models.loading import public_name

    t = config.tracenas
    card = {k: v for k, v in (card or {}).items() if v is not None}
    if "source_model" in card:
        card["source_model"] = public_name(card["source_model"])
    kept = len(t["source_layers"])
    dtype = str(config.dtype).replace("torch.", "")
    lines = [f"# Pruned {config.model_type} ({format_count(params)} parameters)", ""]
    lines += _introduction(card, base_params)
    lines += [
        "| | base | pruned |", "|---|---:|---:|",
        f"| parameters (tied weights counted once) | {base_params:,} | {params:,} |",
        f"| fraction of base | 1 | {params / base_params:.4f} |",
        f"| decoder blocks | {t['base_num_hidden_layers']} | {kept} |", "",
    ]
    rows = {k.replace("_", " "): v for k, v in card.items() if k not in _META_KEYS}
    if rows:
        lines += ["## How it was found", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rows.items()]
        lines += [""]
    lines += ["## Architecture", "",
              ("Dropped blocks are removed and the kept ones renumbered (`block`); `source` is the block's "
               "index in the base model."), "",
              "| block | source | q heads | kv heads | MLP width |", "|---:|---:|---:|---:|---:|"]
    for i, (src, h, kv, w) in enumerate(zip(t["source_layers"], t["num_attention_heads"],
                                            t["num_key_value_heads"], t["intermediate_size"])):
        lines.append(f"| {i} | {src} | {h} | {kv} | {w} |")
    lines += ["", f"Head size {config.head_dim}, hidden size {config.hidden_size}, dtype {dtype}.", "",
              "## Loading", "", "With tracenas:", "", "```python", "from tracenas import load_pruned",
              'model = load_pruned("path/to/this/dir")', "```", "",
              "With transformers only (tracenas not needed):", "", "```python",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              'tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")']
    if t["uniform"]:
        lines += ['model = AutoModelForCausalLM.from_pretrained("path/to/this/dir")', "```", "",
                  "Every block has the same size, so this is a stock checkpoint: no remote code is needed."]
    else:
        lines += ['model = AutoModelForCausalLM.from_pretrained("path/to/this/dir", trust_remote_code=True)',
                  "```", "",
                  (f"Blocks differ in size, so the checkpoint ships `{REMOTE_FILE}` (it imports only torch and "
                   "transformers; `auto_map` in `config.json` points at it). It builds the stock model and "
                   "resizes each block from the per-layer lists in `config.tracenas`; the forward pass, the KV "
                   "cache and `generate()` are stock. Use the default dynamic cache: a static cache assumes one "
                   "KV head count for all blocks.")]
    body = "\n".join(lines) + "\n"
    return str(ModelCard(f"---\n{card_metadata(card).to_yaml()}\n---\n\n{body}"))


def check_export_target(target: Path) -> Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TracenasError(f"cannot create {parent}: {err.strerror or err}") from err
    if not parent.is_dir():
        raise TracenasError(f"cannot write to {parent}: not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TracenasError(f"no write access to {parent}")
    if target.exists() and not target.is_dir():
        raise TracenasError(f"{target} exists and is not a directory")
    _check_replaceable(target)
    return parent


# What an export (or a recovered model) may hold; a directory with anything else is not replaced.
_EXPORT_FILES = re.compile(r"^(config\.json|generation_config\.json|README\.md|export\.yaml|export\.log|"
                           r"reconstruction\.json|" + re.escape(REMOTE_FILE)
                           + r"|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|"
                           r"tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json|added_tokens\.json|"
                           r"chat_template\.(jinja|json)|vocab\.json|merges\.txt)$")


def _check_replaceable(target: Path) -> None:
    """An existing `target` is replaced only if it is empty or a checkpoint that tracenas wrote: never a run
    directory, a user's own files, or `.`."""
    if not target.is_dir():
        return
    entries = sorted(os.listdir(target))
    if not entries:
        return
    foreign = [e for e in entries if not _EXPORT_FILES.match(e)]
    ours = False
    if (target / "config.json").is_file():
        try:
            ours = "tracenas" in json.loads((target / "config.json").read_text())
        except (OSError, ValueError):
            ours = False
    if foreign or not ours:
        what = f"files tracenas did not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})" \
            if foreign else "a checkpoint tracenas did not write"
        raise TracenasError(f"refusing to replace {target}: it holds {what}; choose another --out (an empty or "
                            "new directory, or an earlier tracenas export)")


def write_checkpoint(model: nn.Module, tokenizer, target: Path, torch_dtype: torch.dtype, card: dict | None,
           base_params: int | None, max_shard_size: int, extra_files: dict[str, str] | None = None) -> Path:
    """Write `model` (owned: its dtype and config are changed) to `target` via a temporary directory."""
    import copy

    parent = check_export_target(target)
    head_dim = get_adapter(model).attention(get_adapter(model).layers()[0]).head_dim
    model.to(torch_dtype)
    uniform = _prepare_config(model, torch_dtype, head_dim)
    params = numel(model)
    base = base_params or model.config.tracenas.get("base_params") or params
    model.config.tracenas.update(params=params, base_params=base)
    try:
        tmp = staging_dir(target)
    except OSError as err:
        raise TracenasError(f"cannot write to {parent}: {err.strerror or err}") from err
    try:
        _save_weights(model, tmp, max_shard_size)
        model.config.to_json_file(str(tmp / "config.json"), use_diff=False)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen = copy.deepcopy(gen)
            if gen.pad_token_id is None and tokenizer is not None and tokenizer.pad_token_id is not None:
                gen.pad_token_id = tokenizer.pad_token_id
            gen.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if not uniform:
            shutil.copyfile(remote.__file__, tmp / REMOTE_FILE)
        (tmp / "README.md").write_text(model_card(model.config, params, base, card))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        install_dir(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_io_failure(err):  # disk full, file-size limit
            raise TracenasError(f"export to {target} failed: {io_failure_reason(err)}") from err
        raise
    log.info("exported %s parameters (%.1f%% of base) to %s%s", format_count(params), 100 * params / base,
             target, "" if uniform else " (non-uniform: ships modeling_tracenas.py)")
    return target


def save_pruned(model: nn.Module, tokenizer, out_dir: str | os.PathLike, *, dtype: str | torch.dtype = "float32",
                card: dict | None = None, base_params: int | None = None,
                max_shard_size: int = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write an already sliced model (one with `config.tracenas`: from `slice_model` or `load_pruned`,
    possibly fine-tuned since) as a checkpoint at `out_dir`, atomically. `model` is not modified."""
    import copy

    if not getattr(model.config, "tracenas", None):
        raise TracenasError("save_pruned needs a sliced model (config.tracenas missing); use export_pruned")
    torch_dtype = to_torch_dtype(dtype)
    target = Path(out_dir).expanduser().absolute()
    check_export_target(target)
    return write_checkpoint(copy.deepcopy(model), tokenizer, target, torch_dtype, card, base_params, max_shard_size)


def load_pruned(path: str | os.PathLike, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
                *, attn_implementation: str | None = None) -> nn.Module:
    """Load an exported checkpoint (uniform or not) in eval mode; `dtype=None` keeps the stored dtype."""
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise TracenasError(f"{path} is not an exported model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)  # our classes: installed code
    except (OSError, ValueError) as err:
        raise TracenasError(f"cannot read {path / 'config.json'}: {str(err).splitlines()[0]}") from err
    cls = _model_class(config)
    kwargs: dict[str, Any] = {"dtype": to_torch_dtype(dtype) if dtype is not None else "auto"}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = cls.from_pretrained(str(path), config=config, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        raise TracenasError(f"cannot load {path}: {str(err).splitlines()[0]}") from err
    return model.to(device).eval()


def is_uniform(config) -> bool:
    """Whether every block has the same sizes (the per-layer lists in `config.tracenas` are constant) and
    none lacks a sub-block: then the stock class loads it."""
    return remote.is_uniform_fields(getattr(config, "tracenas", None) or {})


def _model_class(config) -> type:
    """The stock class for a uniform checkpoint (so it re-saves as a stock one: no `auto_map`, no remote
    file), else `Tracenas<StockClass>`, which re-saves with its modeling file."""
    import transformers

    stock = adapter_class_for(config.model_type).stock_class  # one-line error if unsupported
    return getattr(transformers, stock) if is_uniform(config) else remote.pruned_class(stock)


__all__ = ["is_uniform", "load_pruned"]

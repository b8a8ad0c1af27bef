"""Text data for calibration, training-free scoring and evaluation.

Everything the pruning pipeline reads goes through this module:

* :func:`load_documents` turns a ``--data`` source into a list of documents. A source is the
  embedded default corpus (``"wikipedia"``), a local ``.txt`` / ``.jsonl`` / ``.parquet`` file or a
  directory of them, or a Hugging Face dataset id (``owner/name`` or ``owner/name:config``).
* :func:`split_documents` assigns every document to exactly one of :data:`SPLITS` by a stable
  content hash, so calibration, training and evaluation never see the same text and the split does
  not depend on the order the documents arrive in, nor on the Python process.
* :func:`token_stream` / :func:`token_batches` turn a split into a ``[num_sequences, seq_len]``
  LongTensor of consecutive, non-overlapping windows.

The default corpus is the ~100-article English Wikipedia sample that ships inside the gensim wheel,
so the tool works offline and reproducibly without downloading anything.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import importlib.util
import json
import logging
import re
from itertools import chain
from pathlib import Path
from typing import Any

import torch

from tracenas.runtime.errors import DataError

logger = logging.getLogger(__name__)

DEFAULT_DATA = "wikipedia"
SPLITS = ("calibration", "train", "eval")
DEFAULT_FRACTIONS = (0.2, 0.6, 0.2)
DEFAULT_HUB_MAX_DOCUMENTS = 20_000

_WIKI_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
# owner/name or owner/name:config, as accepted by datasets.load_dataset.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?$")
# Articles shorter than this after cleaning are stubs or disambiguation shells: noise for calibration.
_MIN_ARTICLE_CHARS = 200
# Trailing sections that are bibliographies and link lists rather than prose.
_BOILERPLATE_SECTIONS = {
    "references", "external links", "see also", "further reading", "notes", "bibliography",
    "footnotes", "sources", "citations", "notes and references", "works cited",
}
_STREAM_CACHE_SIZE = 8
_stream_cache: dict[tuple, torch.Tensor] = {}


# --------------------------------------------------------------------------- loading


def load_documents(source: str | None = None, *, max_documents: int | None = None) -> list[str]:
    """Load the documents of ``source`` (see the module docstring for what a source can be).

    ``max_documents`` caps the number of documents returned (for Hub datasets it defaults to
    20000, because a streamed dataset may be effectively unbounded).
    """
    if max_documents is not None and max_documents < 1:
        raise DataError(f"max_documents must be >= 1, got {max_documents}")
    if source is None or source == DEFAULT_DATA:
        docs = list(_default_corpus())
    else:
        path = Path(source).expanduser()
        if path.exists():
            docs = _load_local(path)
        elif _looks_like_hub_id(source):
            docs = _load_hub(source, max_documents or DEFAULT_HUB_MAX_DOCUMENTS)
        else:
            raise DataError(
                f"no such file or directory: {source!r} (expected {DEFAULT_DATA!r}, a .txt/.jsonl/.parquet "
                "file or a directory of them, or a Hugging Face dataset id like owner/name[:config])"
            )
    if max_documents is not None:
        docs = docs[:max_documents]
    if not docs:
        raise DataError(f"data source {source!r} contains no non-empty documents")
    logger.debug("loaded %d documents from %s", len(docs), source or DEFAULT_DATA)
    return docs


def check_source(source: str | None) -> None:
    """Refuse (one line) a ``--data`` value that cannot be read, without reading or downloading it."""
    if source is None or source == DEFAULT_DATA:
        return
    path = Path(source).expanduser()
    if path.exists():
        _local_files(path)
    elif not _looks_like_hub_id(source):
        raise DataError(
            f"no such file or directory: {source!r} (expected {DEFAULT_DATA!r}, a .txt/.jsonl/.parquet "
            "file or a directory of them, or a Hugging Face dataset id like owner/name[:config])"
        )


def _looks_like_hub_id(source: str) -> bool:
    # A missing "data/train.jsonl" also matches owner/name; a file suffix means the user meant a path.
    return bool(_HUB_ID.match(source)) and not source.lower().endswith(_LOCAL_SUFFIXES)


@functools.lru_cache(maxsize=1)
def _default_corpus() -> tuple[str, ...]:
    """Parse and clean the Wikipedia sample bundled with gensim (takes a second or two, so cached)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the default corpus ships with gensim, which is not installed: run `pip install gensim`")
    dump = Path(next(iter(spec.submodule_search_locations))) / _WIKI_DUMP
    if not dump.is_file():
        raise DataError(
            f"the default corpus {dump} is missing from the gensim install: run `pip install --force-reinstall gensim`"
        )
    # Imported here: gensim pulls in scipy & co., which callers that bring their own data don't need.
    from gensim.corpora.wikicorpus import extract_pages

    docs = []
    with bz2.open(dump, "rb") as fh:
        # Namespace 0 = articles; talk, user, template... pages are not running text.
        for title, wikitext, _page_id in extract_pages(fh, filter_namespaces=("0",)):
            if wikitext.lstrip().lower().startswith("#redirect"):
                continue
            text = _clean_wikitext(wikitext)
            if len(text) >= _MIN_ARTICLE_CHARS:
                docs.append(text)
            else:
                logger.debug("skipping near-empty article %r", title)
    logger.info("default corpus: %d Wikipedia articles from %s", len(docs), dump.name)
    return tuple(docs)


def _clean_wikitext(wikitext: str) -> str:
    """Wiki markup -> plain prose with paragraph breaks (gensim's filter_wiki does the heavy lifting)."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(wikitext)
    text = re.sub(r"'{2,}", "", text)  # bold / italic quotes
    # Parentheses emptied by removed templates: "(; 4 April 1932" -> "(4 April 1932", "()" -> "".
    text = re.sub(r"\(\s*[;,]\s*", "(", text)
    text = re.sub(r"\(\s*\)", "", text)
    lines: list[str] = []
    for raw in text.split("\n"):
        line = re.sub(r"[ \t\u00a0]+", " ", raw).strip()
        heading = re.fullmatch(r"=+\s*(.*?)\s*=+", line)
        if heading:
            line = heading.group(1)
            # Everything after "References" & co. is citations and link lists, not prose.
            if line.lower() in _BOILERPLATE_SECTIONS:
                break
        line = re.sub(r"^[*#:;]+\s*", "", line)  # list / indent markers
        if not any(ch.isalnum() for ch in line):
            line = ""  # table rules, lone "✔", empty list items: treat as a paragraph break
        lines.append(line)
    # Keep paragraph breaks (one blank line) but drop the runs of blank lines left by removed markup.
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _local_files(path: Path) -> list[Path]:
    """The data files a local source stands for: itself, or the supported files directly inside it."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _LOCAL_SUFFIXES)
        if not files:
            raise DataError(f"directory {path} contains no .txt, .jsonl or .parquet files")
        return files
    if path.suffix.lower() not in _LOCAL_SUFFIXES:
        raise DataError(f"unsupported data file {path}: use a .txt, .jsonl or .parquet file (or a directory of them)")
    return [path]


def _load_local(path: Path) -> list[str]:
    docs: list[str] = []
    for file in _local_files(path):
        suffix = file.suffix.lower()
        if suffix == ".txt":
            docs.append(_read_text(file))
        elif suffix == ".jsonl":
            docs.extend(_read_jsonl(file))
        else:
            docs.extend(_read_parquet(file))
    # Blank documents carry no tokens and would only add stray separators to the token stream.
    return [doc for doc in docs if doc.strip()]


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not valid UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc.strerror}") from None


def _read_jsonl(file: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(_read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}, line {lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or "text" not in record:
            raise DataError(f'{file}, line {lineno}: expected a JSON object with a "text" field')
        if not isinstance(record["text"], str):
            raise DataError(f'{file}, line {lineno}: "text" must be a string, got {type(record["text"]).__name__}')
        docs.append(record["text"])
    return docs


def _read_parquet(file: Path) -> list[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {file} needs pyarrow: run `pip install pyarrow`") from None
    try:
        columns = pq.read_schema(file).names
        values = pq.read_table(file, columns=["text"]).column("text").to_pylist() if "text" in columns else None
    except (OSError, pa.ArrowException) as exc:  # corrupt, truncated or not parquet at all
        raise DataError(f"cannot read parquet file {file}: {exc}") from None
    if values is None:
        raise DataError(f'{file} has no "text" column (columns: {", ".join(columns)})')
    return [value for value in values if isinstance(value, str)]


def _load_hub(source: str, max_documents: int) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{source!r} looks like a Hugging Face dataset, which needs the `datasets` package: "
            "run `pip install 'tracenas[hub]'`"
        ) from None
    name, _, config = source.partition(":")
    try:
        # Streaming: big pretraining corpora would otherwise be downloaded in full before the first document.
        stream = datasets.load_dataset(name, config or None, split="train", streaming=True)
        docs = []
        for record in stream:
            if "text" not in record:
                raise DataError(f'Hugging Face dataset {source!r} has no "text" field (fields: {", ".join(record)})')
            if isinstance(record["text"], str) and record["text"].strip():
                docs.append(record["text"])
                if len(docs) >= max_documents:
                    break
    except DataError:
        raise
    # datasets/huggingface_hub raise many unrelated types (network, auth, unknown dataset or config);
    # all of them are user-facing data problems here, so they become one actionable line.
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot stream Hugging Face dataset {source!r}: {type(exc).__name__}: {exc}") from None
    logger.info("streamed %d documents from Hugging Face dataset %s", len(docs), source)
    return docs


# --------------------------------------------------------------------------- splitting


def split_documents(
    docs: list[str],
    split: str,
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> list[str]:
    """Documents of ``docs`` that belong to ``split``, in input order.

    Each distinct text goes to one split chosen by ``sha256(seed, text)``, so the splits are
    disjoint (even with duplicate documents), reproducible across runs and machines, and the same
    however ``docs`` is ordered. When that leaves a split with a positive fraction empty (tiny
    corpora), documents are instead dealt out by hash rank so that each such split gets at least
    one document, given at least as many distinct documents as non-empty splits. With fewer
    documents than that (a single ``.txt`` file, say), every document is cut by position instead:
    its first ``fractions[0]`` of characters go to calibration, the next ``fractions[1]`` to
    train and the rest to eval.
    """
    index = _split_index(split)
    bounds = _cumulative(fractions)
    hashes = {doc: _unit_hash(doc, seed) for doc in docs}
    wanted = [i for i, frac in enumerate(fractions) if frac > 0]
    if 0 < len(hashes) < len(wanted):
        logger.warning("only %d distinct document(s): splitting each by position (%s of its text for "
                       "calibration / train / eval) instead of by document", len(hashes),
                       " / ".join(f"{f:.0%}" for f in fractions))
        return [piece for doc in docs if (piece := _position_piece(doc, bounds, index).strip())]
    assignment = {doc: _bucket(u, bounds) for doc, u in hashes.items()}
    used = set(assignment.values())
    if len(hashes) >= len(wanted) and not all(i in used for i in wanted):
        assignment = _assign_by_rank(hashes, fractions)
    return [doc for doc in docs if assignment[doc] == index]


def _position_piece(doc: str, bounds: tuple[float, float], index: int) -> str:
    """Part ``index`` of ``doc`` cut at the character fractions ``bounds``, each cut moved to a whitespace."""
    cuts = [0]
    for frac in bounds:
        at = max(int(frac * len(doc)), cuts[-1])
        space = doc.find(" ", at)
        cuts.append(space if space != -1 else len(doc))
    cuts.append(len(doc))
    return doc[cuts[index]:cuts[index + 1]]


def _split_index(split: str) -> int:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _cumulative(fractions: tuple[float, float, float]) -> tuple[float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(
            f"split fractions must be three non-negative numbers (calibration, train, eval) summing to 1, "
            f"got {tuple(fractions)}"
        )
    return fractions[0], fractions[0] + fractions[1]


def _unit_hash(doc: str, seed: int) -> float:
    """A stable pseudo-uniform number in [0, 1) for (seed, doc); builtin hash() is salted per process."""
    digest = hashlib.sha256(f"{seed}\0{doc}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _bucket(u: float, bounds: tuple[float, float]) -> int:
    return 0 if u < bounds[0] else 1 if u < bounds[1] else 2


def _assign_by_rank(hashes: dict[str, float], fractions: tuple[float, float, float]) -> dict[str, int]:
    """Fallback: give each positive-fraction split a block of hash-sorted documents, at least one each."""
    ranked = sorted(hashes, key=lambda doc: (hashes[doc], doc))
    n = len(ranked)
    wanted = [i for i, frac in enumerate(fractions) if frac > 0]
    counts = [0, 0, 0]
    for i in wanted:
        counts[i] = max(1, int(fractions[i] * n))
    # Hand out (or take back) the remainder via the largest split, which can afford it.
    counts[max(wanted, key=lambda i: fractions[i])] += n - sum(counts)
    while min(counts[i] for i in wanted) < 1:  # the largest split was pushed below one: rebalance
        donor = max(wanted, key=lambda i: counts[i])
        needy = min(wanted, key=lambda i: counts[i])
        counts[donor] -= 1
        counts[needy] += 1
    assignment, start = {}, 0
    for split_idx, count in enumerate(counts):
        for doc in ranked[start:start + count]:
            assignment[doc] = split_idx
        start += count
    return assignment


@functools.lru_cache(maxsize=16)
def _default_split(split: str, fractions: tuple[float, float, float], seed: int) -> tuple[str, ...]:
    return tuple(split_documents(list(_default_corpus()), split, fractions=fractions, seed=seed))


def load_split(
    source: str | None,
    split: str,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> list[str]:
    """``load_documents`` + ``split_documents``; memoised for the default corpus (its parse is slow)."""
    fractions = tuple(fractions)
    if source is None or source == DEFAULT_DATA:
        _split_index(split)  # validate before touching the cache so the error is the same either way
        _cumulative(fractions)
        return list(_default_split(split, fractions, seed))
    return split_documents(load_documents(source), split, fractions=fractions, seed=seed)


# --------------------------------------------------------------------------- tokens


def token_stream(tokenizer: Any, docs: list[str]) -> torch.Tensor:
    """1-D LongTensor of ``docs`` tokenized without special tokens and joined by the EOS id."""
    if not docs:
        return torch.empty(0, dtype=torch.long)
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    # One batched call: fast tokenizers parallelise it. verbose=False silences the "sequence longer
    # than model_max_length" warning, which is irrelevant because we cut our own windows.
    encoded = tokenizer(list(docs), add_special_tokens=False, verbose=False)["input_ids"]
    pieces = chain.from_iterable(ids if i == 0 else chain((sep,), ids) for i, ids in enumerate(encoded))
    return torch.tensor(list(pieces), dtype=torch.long)


def _split_stream(
    tokenizer: Any,
    source: str | None,
    split: str,
    seed: int,
    fractions: tuple[float, float, float],
) -> torch.Tensor:
    """The token stream of one split, memoised per (data, split, tokenizer) within the process."""
    fractions = tuple(fractions)
    name = getattr(tokenizer, "name_or_path", "") or ""
    key = None
    if name:  # an in-memory tokenizer has no name that identifies it, so caching it could mix tokenizers up
        key = (_source_fingerprint(source), split, fractions, seed, name, len(tokenizer))
        if key in _stream_cache:
            return _stream_cache[key]
    stream = token_stream(tokenizer, load_split(source, split, seed=seed, fractions=fractions))
    if key is not None:
        if len(_stream_cache) >= _STREAM_CACHE_SIZE:
            _stream_cache.pop(next(iter(_stream_cache)))  # evict the oldest entry
        _stream_cache[key] = stream
    return stream


def _source_fingerprint(source: str | None) -> tuple:
    """Cache key for a source; local files include size and mtime so edits invalidate the cache."""
    if source is None or source == DEFAULT_DATA:
        return (DEFAULT_DATA,)
    path = Path(source).expanduser()
    if not path.exists():
        return (source,)
    return tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in _local_files(path))


def token_batches(
    tokenizer: Any,
    source: str | None = None,
    *,
    split: str = "calibration",
    num_sequences: int,
    seq_len: int,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> torch.Tensor:
    """LongTensor ``[num_sequences, seq_len]``: the first consecutive, non-overlapping windows of a split."""
    if num_sequences < 1:
        raise DataError(f"num_sequences must be >= 1, got {num_sequences}")
    if seq_len < 2:
        raise DataError(f"seq_len must be >= 2 (next-token loss needs two tokens), got {seq_len}")
    stream = _split_stream(tokenizer, source, split, seed, fractions)
    needed = num_sequences * seq_len
    if stream.numel() < needed:
        raise DataError(
            f"{num_sequences} sequences of {seq_len} tokens need {needed:,} tokens but the {split!r} split of "
            f"{source or DEFAULT_DATA!r} has only {stream.numel():,}: use fewer or shorter sequences "
            "or a bigger --data source"
        )
    # Clone so callers may modify the batch in place without corrupting the memoised stream.
    return stream[:needed].reshape(num_sequences, seq_len).clone()


def count_tokens(
    tokenizer: Any,
    source: str | None = None,
    *,
    split: str,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> int:
    """Number of tokens in a split's token stream (EOS separators included)."""
    return int(_split_stream(tokenizer, source, split, seed, fractions).numel())

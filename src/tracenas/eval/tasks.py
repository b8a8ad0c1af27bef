"""Downstream tasks for `tracenas eval`: the paper's lm-evaluation-harness suite and local JSONL files.

    tracenas eval MODEL --tasks paper                      # needs network (datasets from the HF Hub)
    tracenas eval MODEL --tasks arc_easy,hellaswag --limit 200
    tracenas eval MODEL --tasks local:my_questions.jsonl   # works offline

A local multiple-choice file holds one JSON object per line:

    {"question": "What is the capital of France?", "choices": ["Paris", "Rome", "Oslo"], "answer": 0}

with an optional "context" string shown before the question. It becomes an lm-eval task (YAML written
to a temporary directory, `json` dataset builder with `data_files`), scored like ARC: the log-likelihood
of each choice after "Question: ...\\nAnswer:", giving `acc` and length-normalized `acc_norm`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tracenas.runtime.errors import TracenasError

log = logging.getLogger(__name__)

# The paper's benchmarks (Sec. 4 "Evaluation Benchmarks") with its few-shot counts: 0-shot ARC-easy,
# LogiQA, PIQA, SciQ, BoolQ; 5-shot MMLU and WinoGrande; 10-shot HellaSwag; 25-shot ARC-challenge.
PAPER_FEWSHOT = {"arc_easy": 0, "arc_challenge": 25, "piqa": 0, "winogrande": 5, "hellaswag": 10, "sciq": 0,
                 "logiqa": 0, "boolq": 0, "mmlu": 5}
LOCAL_PREFIX = "local:"
_HUB_HOST = ("huggingface.co", 443)
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class TaskSpec:
    """One requested task: an lm-eval task name, or a local JSONL file turned into one."""

    name: str  # the lm-eval task (or group) name
    num_fewshot: int | None  # None: the task's own default
    path: str | None = None  # the JSONL file of a local task

    @property
    def remote(self) -> bool:
        return self.path is None


def parse_tasks(text: str | None, num_fewshot: int | None = None) -> list[TaskSpec]:
    """`"paper,hellaswag,local:qa.jsonl"` -> task specs; `num_fewshot` overrides every default."""
    specs: list[TaskSpec] = []
    names: set[str] = set()
    for item in (t.strip() for t in (text or "").split(",")):
        if not item or item.lower() == "none":
            continue
        if item.lower() == "paper":
            new = [TaskSpec(n, PAPER_FEWSHOT[n] if num_fewshot is None else num_fewshot) for n in PAPER_FEWSHOT]
        elif item.startswith(LOCAL_PREFIX):
            path = Path(item[len(LOCAL_PREFIX):]).expanduser()
            count = validate_jsonl(path)
            name = _unique("local_" + re.sub(r"\W+", "_", path.stem).strip("_").lower(), names)
            log.debug("local task %s: %d questions from %s", name, count, path)
            new = [TaskSpec(name, num_fewshot, str(path.resolve()))]
        elif item.endswith((".jsonl", ".json")):
            raise TracenasError(f"to evaluate on a local file write --tasks local:{item}")
        else:
            new = [TaskSpec(item, PAPER_FEWSHOT.get(item) if num_fewshot is None else num_fewshot)]
        for spec in new:
            if spec.name not in names:
                names.add(spec.name)
                specs.append(spec)
    return specs


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    return out


def validate_jsonl(path: Path) -> int:
    """Check a local multiple-choice file against the schema; one-line errors naming the line."""
    if not path.is_file():
        raise TracenasError(f"no such task file: {path}")
    count = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as err:
                raise TracenasError(f"{where}: invalid JSON ({err.msg})") from None
            if not isinstance(doc, dict):
                raise TracenasError(f'{where}: expected an object {{"question", "choices", "answer"}}')
            missing = [k for k in ("question", "choices", "answer") if k not in doc]
            if missing:
                raise TracenasError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
            choices, answer = doc["choices"], doc["answer"]
            if not isinstance(doc["question"], str):
                raise TracenasError(f'{where}: "question" must be a string')
            if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
                raise TracenasError(f'{where}: "choices" must be a list of at least two strings')
            if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
                raise TracenasError(f'{where}: "answer" must be the 0-based index of the right choice '
                                    f"(0..{len(choices) - 1}), got {answer!r}")
            if "context" in doc and doc["context"] is not None and not isinstance(doc["context"], str):
                raise TracenasError(f'{where}: "context" must be a string')
            count += 1
    if count == 0:
        raise TracenasError(f"{path} holds no questions")
    return count


def write_local_task(spec: TaskSpec, directory: Path) -> Path:
    """Write `spec`'s lm-eval YAML (and a normalized copy of its JSONL) into `directory`."""
    data = directory / f"{spec.name}.jsonl"
    with open(spec.path, encoding="utf-8") as src, open(data, "w", encoding="utf-8") as dst:
        for line in src:
            if line.strip():
                doc = json.loads(line)
                # Every row gets every column, so the json builder infers one schema.
                dst.write(json.dumps({"question": doc["question"], "choices": doc["choices"],
                                      "answer": doc["answer"], "context": doc.get("context") or ""}) + "\n")
    config = {
        "task": spec.name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "fewshot_split": "test",  # lm-eval leaves the question being asked out of its own few-shot examples
        "doc_to_text": "{% if context %}{{context}}\n{% endif %}Question: {{question}}\nAnswer:",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": spec.path},
    }
    path = directory / f"{spec.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def network_available(timeout: float = 1.5) -> bool:
    """False when told so (TRACENAS_OFFLINE / HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) or the Hub is unreachable."""
    for var in ("TRACENAS_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").lower() in _TRUE:
            return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def set_offline() -> None:
    """Make huggingface_hub / datasets / transformers use their caches only, also if already imported."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config as ds_config

        ds_config.HF_HUB_OFFLINE = True
        ds_config.HF_DATASETS_OFFLINE = True


__all__ = ["LOCAL_PREFIX", "PAPER_FEWSHOT", "TaskSpec", "network_available", "parse_tasks", "set_offline",
           "validate_jsonl", "write_local_task"]

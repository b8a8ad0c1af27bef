"""Run a GGUF file in llama.cpp itself: the check behind tracenas' GGUF tests and `benchmarks/bench_llamacpp.py`.

    npm install --omit=optional --prefix tools/llamacpp     # once: prebuilt llama.cpp CPU binaries, ~85 MB
    from tracenas.export.gguf.llamacpp import available, run_tasks
    run_tasks("model.gguf", [{"op": "logits", "tokens": [1, 2, 3]}])[0]["logits"]

llama.cpp is reached through `tools/llamacpp/probe.mjs` and the npm package node-llama-cpp, whose
`@node-llama-cpp/linux-x64` ships llama.cpp built for CPUs (no compiler, nothing downloaded at run time).
The PyPI bindings were no option here: llama-cpp-python compiles llama.cpp for 10-30 minutes, and the
prebuilt wheels found need a newer glibc than Debian 12's. It is optional: the default install never needs
it, and the tests that do skip when `available()` is false. One thread unless told otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tracenas.runtime.errors import TracenasError

ENV_DIR = "TRACENAS_LLAMACPP_DIR"  # a directory holding probe.mjs and its node_modules (default: tools/llamacpp)
_REPO_TOOLS = Path(__file__).resolve().parents[4] / "tools" / "llamacpp"  # src/tracenas/export/gguf/ -> repo


def probe_dir() -> Path:
    """Where probe.mjs and its node_modules are: $TRACENAS_LLAMACPP_DIR, else the source tree's tools/llamacpp."""
    return Path(os.environ.get(ENV_DIR) or _REPO_TOOLS)


def available() -> bool:
    """Whether llama.cpp can be run here: node on PATH and node-llama-cpp installed next to probe.mjs."""
    d = probe_dir()
    return (shutil.which("node") is not None and (d / "probe.mjs").is_file()
            and (d / "node_modules" / "node-llama-cpp" / "package.json").is_file()
            and (d / "node_modules" / "@node-llama-cpp" / "linux-x64").is_dir())


def version() -> str:
    """The installed node-llama-cpp version and the llama.cpp release its binaries were built from."""
    d = probe_dir() / "node_modules" / "node-llama-cpp"
    pkg = json.loads((d / "package.json").read_text())["version"]
    release = json.loads((d / "llama" / "binariesGithubRelease.json").read_text()).get("release", "?")
    return f"node-llama-cpp {pkg} (llama.cpp {release})"


def run_tasks(model: str | os.PathLike, tasks: list[dict[str, Any]], *, threads: int = 1, context: int = 512,
              kv_type: str | None = None, timeout: float = 600) -> list[dict[str, Any]]:
    """Load `model` in llama.cpp once and answer each task (see probe.mjs: meta, tokenize, logits, greedy, bench).

    `kv_type="F32"` keeps the KV cache in float32 (llama.cpp's default, F16, rounds keys and values: logits then
    differ from a float32 reference by ~1e-2 even for float32 weights).
    """
    if not available():
        raise TracenasError(f"llama.cpp is not installed: run `npm install --omit=optional --prefix {probe_dir()}`")
    request = {"model": str(Path(model).absolute()), "threads": threads, "context": context, "tasks": tasks}
    if kv_type:
        request["kv_type"] = kv_type
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(["node", str(probe_dir() / "probe.mjs")], input=json.dumps(request), capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=probe_dir())
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise TracenasError(f"llama.cpp failed on {model}: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["answers"]


__all__ = ["ENV_DIR", "available", "probe_dir", "run_tasks", "version"]

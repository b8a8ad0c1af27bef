"""Config dataclasses <-> argparse, YAML and the resolved `config.yaml` saved with every run.

Every stage has a dataclass whose fields carry their help text in `field(metadata={"help": ...})`.
`add_arguments` turns those fields into `--flags` (underscores become dashes), `from_args` builds the
dataclass back, with values from `--config file.yaml` as defaults that explicit flags override.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from tracenas.errors import TracenasError

T = TypeVar("T")


def opt(default: Any, help: str | Callable[[], str], **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with help text (and optional `choices=`).

    `help` and `choices` may be zero-argument callables, read when a parser is built (`add_arguments`):
    for lists that grow at run time, such as the registered proxies.
    """
    meta = {"help": help, **kw}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy_default(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def copy_default(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _base_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return tp


def _str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _late(value: Any) -> Any:
    """`value()` for a callable given to `opt` (evaluated now, at parser-build time), else `value`."""
    return value() if callable(value) else value


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _late(f.metadata.get("help", ""))}
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None and default != "":
            kw["help"] += f" (default: {default})"
        if "choices" in f.metadata:
            kw["choices"] = _late(f.metadata["choices"])
        if tp is bool:
            kw["type"] = _str2bool
            kw["nargs"] = "?"
            kw["const"] = True
            kw["metavar"] = "BOOL"
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            kw["type"] = str
        parser.add_argument(flag, **kw)


def from_args(cls: type[T], args: argparse.Namespace, base: dict[str, Any] | None = None) -> T:
    """Build `cls` from defaults < `base` (e.g. YAML, preset) < explicit command-line flags."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = dict(base or {})
    unknown = set(values) - names
    if unknown:
        raise TracenasError(f"unknown config keys for {cls.__name__}: {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in vars(args).items() if k in names})
    return cls(**values)


def load_yaml(path: str | os.PathLike | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise TracenasError(f"no such config file: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise TracenasError(f"cannot parse {p}: {err}") from err
    if not isinstance(data, dict):
        raise TracenasError(f"{p} must hold a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in data.items()}


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_config(run_dir: str | os.PathLike, name: str, cfg: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write the fully resolved config of a stage as `<run_dir>/<name>.yaml`."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    if extra:
        data.update(extra)
    path = Path(run_dir) / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path

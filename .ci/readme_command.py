"""Print the README's set-up command N (1 = install + quick run, 2 = tests), so CI runs exactly what users run.

    python3 .ci/readme_command.py 1 --install-only   # command 1 without its trailing `&& tracenas run ...`
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def setup_commands(text: str) -> list[str]:
    """The command lines of the README's first ```bash block (comments and blank lines dropped)."""
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    if block is None:
        raise SystemExit(f"{README}: no ```bash block")
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def install_part(command: str) -> str:
    """`a && b && tracenas run ...` -> `a && b`: the install steps only."""
    steps = [s.strip() for s in command.split("&&")]
    return " && ".join(s for s in steps if not s.startswith("tracenas "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="1-based index of the command in the README's first bash block")
    parser.add_argument("--install-only", action="store_true", help="drop the `tracenas ...` steps")
    args = parser.parse_args(argv)
    commands = setup_commands(README.read_text())
    if not 1 <= args.n <= len(commands):
        raise SystemExit(f"{README}: {len(commands)} set-up commands, asked for #{args.n}")
    command = commands[args.n - 1]
    print(install_part(command) if args.install_only else command)
    return 0


if __name__ == "__main__":
    sys.exit(main())

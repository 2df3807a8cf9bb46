"""The serving benchmark's flags and prompt cut, which need neither vLLM nor the dataset, so they always run."""

from __future__ import annotations

import pytest

from benchmarks.serving.cli import parse_args
from benchmarks.serving.trace import cut_prompt


def test_a_long_prompt_keeps_its_start_and_its_last_tokens_and_zero_tail_keeps_only_the_start():
    args = parse_args(["--max-prompt-tokens", "10", "--prompt-tail-tokens", "4"])
    assert list(cut_prompt(list(range(100)), args)) == [0, 1, 2, 3, 4, 5, 96, 97, 98, 99]
    assert list(cut_prompt(list(range(7)), args)) == list(range(7))
    head_only = parse_args(["--max-prompt-tokens", "10", "--prompt-tail-tokens", "0"])
    assert list(cut_prompt(list(range(100)), head_only)) == list(range(10))


def test_a_tail_as_long_as_the_whole_cut_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--max-prompt-tokens", "10", "--prompt-tail-tokens", "10"])
    assert "--prompt-tail-tokens" in capsys.readouterr().err

"""`train`, `evaluate` and `collect` flags: train's defaults come from TrainConfig alone, and --help states each default once, truthfully."""

from __future__ import annotations

import dataclasses
import re

import pytest

from ltr_sidecar.cli import build_parser
from ltr_sidecar.training.commands import train_command_line, train_config_from_args
from ltr_sidecar.training.config import TrainConfig


def subcommand_help(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([name, "--help"])
    return capsys.readouterr().out


def test_train_with_no_flags_is_train_config_with_its_defaults():
    assert train_config_from_args(build_parser().parse_args(["train"])) == TrainConfig()


def test_every_train_config_setting_has_a_flag_that_sets_it():
    settings = [f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
    assert len(settings) > 40
    for f in settings:
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            argv = [flag] if not f.default else ["--no-" + flag[2:]]
            expected = not f.default
        else:
            expected = (f.metadata["choices"] or ())[-1] if f.metadata["choices"] else type(f.default)("7")
            argv = [flag, str(expected)]
        config = train_config_from_args(build_parser().parse_args(["train", *argv]))
        assert getattr(config, f.name) == expected, flag


def test_the_command_line_of_a_config_reproduces_it():
    config = TrainConfig(data="t.jsonl", out="b", epochs=2.5, bag_of_words=False, loss="pairwise", resume=True)
    argv = train_command_line(config).split()[1:]  # no quoting needed for these values
    assert argv[0] == "train"
    assert train_config_from_args(build_parser().parse_args(argv)) == config


@pytest.mark.parametrize("name", ["train", "evaluate", "collect"])
def test_help_states_each_default_once(name: str, capsys):
    text = subcommand_help(name, capsys)
    # One option's help spans several lines: split the help into options at each leading "  -".
    options = re.split(r"\n  (?=-)", text)
    assert len(options) > 5
    for option in options:
        assert option.count("(default:") <= 1, option
    assert "(default: )" not in text and "(default: True)" not in text and "(default: False)" not in text


def test_boolean_switches_show_their_real_default(capsys):
    text = " ".join(subcommand_help("train", capsys).split())
    assert "--bag-of-words, --no-bag-of-words train a bag-of-words term jointly with the encoder (default: on)" in text
    assert "--progress, --no-progress progress bars (default: on)" in text
    assert "--resume, --no-resume continue from <work>/checkpoint.pt" in text and "interrupted run) (default: off)" in text
    assert "(default: <out>.work)" in text


def test_the_top_level_help_names_trains_real_default_loss(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"train a ranker ({TrainConfig().loss.replace('listmle', 'ListMLE')} loss by default" in text

"""The `train`, `evaluate` and `collect` subcommands: their flags, and the calls they make.

`train`'s flags are built from :class:`~.config.TrainConfig`'s fields, so each
default and its help are written once.  Importing this module costs argparse
and a dataclass; torch, transformers, scikit-learn and aiohttp are imported
only when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import SHAREGPT, TrainConfig

log = logging.getLogger("ltr_sidecar")

# Exit codes beyond 0 (success) and 2 (invalid flags or data): the run itself
# failed (1), or a signal stopped it (128 + the signal's number, as shells report it).
EXIT_FAILED = 1
EXIT_USAGE = 2


class Switch(argparse.BooleanOptionalAction):
    """--flag / --no-flag, with the help given as is (argparse 3.10-3.12 would append "(default: True)")."""

    def __init__(self, option_strings: Sequence[str], dest: str, default: Any = None, help: str | None = None, **kw: Any) -> None:
        super().__init__(option_strings, dest, default=default, **kw)
        self.help = help


def _help(text: str, default: str) -> str:
    return f"{text} (default: {default})".replace("%", "%%")


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_dataclass_flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One flag per field that has metadata["help"]: --field-name, typed and defaulted as the field, default shown once."""
    for f in dataclasses.fields(config_type):
        if "help" not in f.metadata:
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = f.metadata.get("shown") or _shown(f.default)
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action=Switch, default=f.default, help=_help(f.metadata["help"], shown))
        else:
            kind = type(f.default)
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=f.metadata.get("choices"),
                                metavar=_METAVARS.get(kind) if f.metadata.get("choices") is None else None,
                                help=_help(f.metadata["help"], shown))


def train_config_from_args(args: argparse.Namespace, command: str = "") -> TrainConfig:
    """The TrainConfig that parsed `train` flags describe."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if "help" in f.metadata},
                       command=command)


def train_command_line(cfg: TrainConfig) -> str:
    """An `ltr-sidecar train` command that reproduces `cfg`: every setting that differs from its default."""
    words = ["ltr-sidecar", "train"]
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if "help" not in f.metadata or value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a ranker (ListMLE loss by default, or pairwise) and export it as a bundle",
        description="Fine-tune a pretrained encoder to rank prompts by output length (ListMLE over random lists, as in "
        "Fu et al. 2024, or --loss pairwise), export the best checkpoint to ONNX, check it against torch, evaluate it on "
        "the held-out test split beside the baselines, and write a bundle if it beats at least one of them. SIGTERM or "
        "Ctrl-C saves a checkpoint and prints the command that resumes. Needs the `train` extra (torch, transformers).",
    )
    add_dataclass_flags(p, TrainConfig)
    p.add_argument("--log-format", default="text", choices=("text", "json"), help=_help("log line format", "text"))
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from ..logs import configure_logging

    configure_logging("info", args.log_format)
    try:
        from .evaluate import format_report
        from .train import TrainingInterrupted, WorseThanBaselines, train
    except ImportError as e:
        log.error("ltr-sidecar train needs the train extra (pip install 'ltr-sidecar[train]'): %s", e)
        return EXIT_USAGE
    typed = sys.argv[2:] if sys.argv[1:2] == ["train"] else None
    config = train_config_from_args(args, shlex.join(["ltr-sidecar", "train", *typed]) if typed is not None else "")
    try:
        result = train(config)
    except (ValueError, FileNotFoundError) as e:
        log.error("cannot train: %s", e)
        return EXIT_USAGE
    except TrainingInterrupted as e:
        log.error("%s", e)
        return 128 + e.signum
    except WorseThanBaselines as e:
        log.error("%s", e)
        return EXIT_FAILED
    print(format_report(result))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="rank agreement of a bundle with true output lengths, beside the baselines",
        description="Score a split of a data source with a bundle (through the serving runtime) and report Kendall "
        "tau-b (scipy) with its 95% confidence interval and Spearman against true output lengths, with prompt-length, "
        "TF-IDF + ridge and 10-bucket classifier baselines fitted on the train split in the same run. Warns below "
        "100 prompts, where tau-b is too noisy to compare bundles. Needs the `train` extra (scikit-learn).",
    )
    a = p.add_argument
    a("bundle", type=Path, help="ranker bundle directory")
    a("--data", default=SHAREGPT, help=_help("'sharegpt' or a JSONL trace file", SHAREGPT))
    a("--split", choices=["test", "val", "all"], default="test", help=_help("rows to score; the split is the one recorded in "
      "the bundle (seed and fractions); 'all' scores every row, e.g. traces from another model", "test"))
    a("--baseline-data", default=None, help=_help("source whose train split fits the baselines",
                                                  "--data, or sharegpt with --split all"))
    a("--baselines", action=Switch, default=True, help=_help("fit and report the baselines", "on"))
    a("--label-tokenizer", default=None, help=_help("tokenizer.json that counts output tokens", "the bundle's"))
    a("--batch-size", type=int, default=32, help=_help("prompts per model call", "32"))
    a("--max-length", type=int, default=0, help=_help("prompt tokens the model reads, at most the bundle's (0: the bundle's), "
      "as `serve --max-length`", "0"))
    a("--limit", type=int, default=0, help=_help("score only the first N rows of the split (0 = all)", "0"))
    a("--out", type=Path, default=None, help=_help("also write the results as JSON here", "none"))
    a("--progress", action=Switch, default=True, help=_help("progress bar", "on"))
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..logs import configure_logging

    configure_logging("info", "text")
    try:
        from .evaluate import evaluate_bundle, format_report
    except ImportError as e:
        log.error("ltr-sidecar evaluate needs the train extra (pip install 'ltr-sidecar[train]'): %s", e)
        return EXIT_USAGE
    try:
        result = evaluate_bundle(args.bundle, args.data, args.split, args.baselines, args.baseline_data,
                                 args.label_tokenizer, args.batch_size, args.limit, args.progress, args.max_length)
    except (ValueError, FileNotFoundError) as e:
        log.error("cannot evaluate: %s", e)
        return EXIT_USAGE
    print(format_report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _add_collect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="make traces from your own model: send prompts to an OpenAI-compatible endpoint, record output tokens",
        description="Send prompts to an OpenAI-compatible server with bounded concurrency and write a JSONL trace of "
        "{prompt, output_tokens (from usage), generated} rows that `ltr-sidecar train --data` reads. Prompts are "
        "never logged. The trace is written to <out>.partial and renamed to --out when the run ends with at least one "
        "answer; an unreachable endpoint or a run without answers exits 1 and leaves no file. Needs aiohttp (the "
        "`proxy` extra).",
    )
    a = p.add_argument
    a("--endpoint", required=True, help="base URL of the server, e.g. http://127.0.0.1:8000 (required)")
    a("--model", required=True, help="model name to send in each request (required)")
    a("--prompts", default=SHAREGPT, help=_help("'sharegpt' (a split of ShareGPT V3) or a JSONL file of {\"prompt\": ...} rows",
                                                SHAREGPT))
    a("--split", choices=["train", "val", "test"], default="test", help=_help("which ShareGPT split (seed 0) with --prompts sharegpt",
                                                                             "test"))
    a("--limit", type=int, default=0, help=_help("send only the first N prompts (0 = all)", "0"))
    a("--out", type=Path, required=True, help="JSONL trace file to write (required)")
    a("--api", choices=["chat", "completions"], default="chat", help=_help("/v1/chat/completions (one user message) or "
                                                                          "/v1/completions", "chat"))
    a("--concurrency", type=int, default=8, help=_help("requests in flight at once", "8"))
    a("--max-tokens", type=int, default=2048, help=_help("max_tokens of each request; answers cut here are marked "
                                                         "finish_reason=length", "2048"))
    a("--temperature", type=float, default=0.0, help=_help("sampling temperature", "0.0"))
    a("--timeout", type=float, default=600.0, help=_help("seconds one request may take", "600.0"))
    a("--api-key-env", default=None, help=_help("name of the environment variable holding a bearer token (the token is "
                                                "never printed)", "no token"))
    a("--text", dest="keep_text", action=Switch, default=True, help=_help("record the generated text, not only output_tokens", "on"))
    a("--progress", action=Switch, default=True, help=_help("progress bar", "on"))
    p.set_defaults(func=_run_collect)


def _run_collect(args: argparse.Namespace) -> int:
    from ..logs import configure_logging
    from .collect import CollectError, api_key_from_env, collect, read_prompts

    configure_logging("info", "text")
    for flag, value in (("--concurrency", args.concurrency), ("--max-tokens", args.max_tokens)):
        if value < 1:
            log.error("%s %d: must be at least 1", flag, value)
            return EXIT_USAGE
    if not args.timeout > 0:
        log.error("--timeout %s: must be positive", args.timeout)
        return EXIT_USAGE
    try:
        prompts = read_prompts(args.prompts, args.split, 0, args.limit)
    except OSError as e:
        log.error("--prompts %s: %s", args.prompts, e.strerror or e)
        return EXIT_USAGE
    if not prompts:
        log.error("--prompts %s: no prompts to send", args.prompts)
        return EXIT_USAGE
    try:
        report = asyncio.run(collect(args.endpoint, args.model, prompts, args.out, args.concurrency, args.max_tokens,
                                     args.temperature, args.api, args.timeout, api_key_from_env(args.api_key_env),
                                     args.keep_text, args.progress))
    except CollectError as e:
        log.error("collect: %s", e)
        return e.exit_code
    except OSError as e:
        log.error("--out %s: %s", args.out, e.strerror or e)
        return EXIT_USAGE
    print(json.dumps(report.as_dict()))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `train`, `evaluate` and `collect` to the `ltr-sidecar` parser's subcommands."""
    _add_train(sub)
    _add_evaluate(sub)
    _add_collect(sub)

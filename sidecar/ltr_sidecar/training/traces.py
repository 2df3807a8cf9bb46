"""Read user traces: JSONL rows of a prompt and what the user's own model answered.

Each line is one JSON object, in either form:

    {"prompt": "...", "generated": "..."}      # the reference format (vllm-ltr)
    {"prompt": "...", "output_tokens": 123}    # a count, e.g. from `usage`

with an optional string ``"id"`` (rows sharing an id stay in one split), and
optionally how the answer finished, so that a cut answer's length counts as a
lower bound (*censored*) rather than as its true length:

    "finish_reason": "stop"     # the model ended it: the length is exact
    "finish_reason": "length"   # cut by max_tokens: censored (also "abort", "content_filter")
    "censored": true            # the same, said directly

(`ltr-sidecar adapt` uses censoring; `train` and `evaluate` take every length
as given.)  A row that breaks these rules is skipped and reported with its
line number; nothing is dropped silently.

Plain Python: imports without torch or numpy.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sharegpt import Example

# How many bad lines are kept verbatim in a report; the count covers them all.
MAX_LISTED = 20
# finish_reason values (OpenAI's and vLLM's) and whether the length they leave is exact or a lower bound.
EXACT_FINISH = frozenset({"stop", "eos", "tool_calls", "function_call"})
CENSORED_FINISH = frozenset({"length", "abort", "content_filter"})


@dataclass
class TraceReport:
    """What reading a trace file found: rows kept, and every bad row's line and reason."""

    path: str
    rows: int = 0
    kept: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.bad[reason] += 1
        if len(self.bad_lines) < MAX_LISTED:
            self.bad_lines.append((line, reason))

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())

    def summary(self) -> str:
        if not self.bad_rows:
            return f"{self.path}: {self.kept} rows, none bad"
        listed = "; ".join(f"line {n}: {why}" for n, why in self.bad_lines)
        more = "" if self.bad_rows <= len(self.bad_lines) else f"; and {self.bad_rows - len(self.bad_lines)} more"
        return f"{self.path}: {self.kept} rows kept, {self.bad_rows} bad rows skipped ({listed}{more})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rows": self.rows,
            "kept": self.kept,
            "bad_rows": self.bad_rows,
            "bad_by_reason": dict(sorted(self.bad.items())),
            "bad_lines": [{"line": n, "reason": why} for n, why in self.bad_lines],
        }


def _row_to_example(row: Any, line: int) -> Example | str:
    """The row as an Example, or the reason it is bad."""
    if not isinstance(row, dict):
        return f"not a JSON object ({type(row).__name__})"
    prompt = row.get("prompt")
    if "prompt" not in row:
        return "missing field 'prompt'"
    if not isinstance(prompt, str):
        return f"field 'prompt' must be a string, not {type(prompt).__name__}"
    if not prompt.strip():
        return "field 'prompt' is empty"
    row_id = row.get("id")
    if row_id is not None and not isinstance(row_id, str):
        return f"field 'id' must be a string, not {type(row_id).__name__}"
    if "output_tokens" in row:
        tokens = row["output_tokens"]
        # bool is an int subclass; `true` is not a length.
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            return f"field 'output_tokens' must be an integer, not {type(tokens).__name__}"
        if tokens < 0:
            return "field 'output_tokens' must be >= 0"
        generated, output_tokens = "", tokens
    elif "generated" in row:
        generated = row["generated"]
        if not isinstance(generated, str):
            return f"field 'generated' must be a string, not {type(generated).__name__}"
        output_tokens = None
    else:
        return "needs field 'generated' or 'output_tokens'"
    finish = row.get("finish_reason")
    if finish is not None and finish not in EXACT_FINISH | CENSORED_FINISH:
        return f"field 'finish_reason' must be one of {', '.join(sorted(EXACT_FINISH | CENSORED_FINISH))}, not {finish!r}"
    censored = row.get("censored", finish in CENSORED_FINISH)
    if not isinstance(censored, bool):
        return f"field 'censored' must be true or false, not {type(censored).__name__}"
    if finish is not None and censored != (finish in CENSORED_FINISH):
        return f"field 'censored' ({censored}) contradicts finish_reason {finish!r}"
    # Without an id, identical prompts hash to one split, so a repeated prompt
    # cannot sit in train and test at once.
    key = row_id or "p" + hashlib.sha256(prompt.encode()).hexdigest()[:16]
    return Example(id=key, prompt=prompt, response=generated, output_tokens=output_tokens, censored=censored)


def read_traces(path: str | Path) -> tuple[list[Example], TraceReport]:
    """Every good row of a JSONL trace file, and a report of the bad ones.

    Blank lines are ignored.  Rows with ``generated`` text have
    ``output_tokens=None`` until a tokenizer counts them (see
    :func:`ltr_sidecar.training.dataset.label_examples`).
    """
    path = Path(path)
    report = TraceReport(str(path))
    examples: list[Example] = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            report.rows += 1
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                report.reject(line_no, "not valid UTF-8")
                continue
            except json.JSONDecodeError as e:
                report.reject(line_no, f"not JSON ({e.msg})")
                continue
            result = _row_to_example(row, line_no)
            if isinstance(result, str):
                report.reject(line_no, result)
            else:
                examples.append(result)
    report.kept = len(examples)
    return examples, report

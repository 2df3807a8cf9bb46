"""NextBatch on the wire: the policy's `Candidates` and `Decision` to and from ltr.v1 messages.

One converter each way, shared by the clients and the sidecar. The response
carries a `Decision` field for field under the same names, so neither side
lists the fields: adding one to `Decision` (and to NextBatchResponse) is the
whole change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import numpy as np

from .api import ranker_pb2 as pb
from .ordering import Candidates, Decision

_DECISION_FIELDS = tuple(f.name for f in fields(Decision))


def decision_fields(decision: Decision) -> dict[str, object]:
    """The NextBatchResponse fields that carry `decision`: pb.NextBatchResponse(**decision_fields(d), ...)."""
    return {name: (v.tolist() if isinstance(v := getattr(decision, name), np.ndarray) else v) for name in _DECISION_FIELDS}


def decision_from_response(resp: pb.NextBatchResponse) -> Decision:
    """The `Decision` a NextBatchResponse carries."""
    values: dict[str, object] = {}
    for name in _DECISION_FIELDS:
        v = getattr(resp, name)
        values[name] = int(v) if isinstance(v, int) else np.asarray(v, dtype=bool if name == "protected" else np.int64)
    return Decision(**values)  # type: ignore[arg-type]


def candidate_columns(request_ids: Sequence[str], c: Candidates, prompts: Sequence[str] | None = None) -> pb.CandidateColumns:
    """The columns message for `c`. Columns whose every value is the default are left empty (cheaper, and what older servers expect)."""
    cols = pb.CandidateColumns(
        request_ids=list(request_ids),
        scores=c.scores.tolist(),
        running=c.running.tolist(),
        num_tokens=c.num_tokens.tolist(),
        priorities=c.priority.tolist(),
        idle_steps=c.idle_steps.tolist(),
        promoted_steps_left=c.promoted_steps_left.tolist(),
    )
    if c.protected is not None and c.protected.any():
        cols.protected.extend(c.protected.tolist())
    if c.overtakes is not None and c.overtakes.any():
        cols.overtakes.extend(c.overtakes.tolist())
    if c.arrival_steps is not None:
        cols.arrival_steps.extend(c.arrival_steps.tolist())
    if prompts is not None and any(prompts):
        cols.prompts.extend(prompts)
    return cols

"""ltr-client: talk to the ltr-sidecar ranker, and order requests by predicted output length.

- `RankerClient` / `AsyncRankerClient`: Score, NextBatch and ModelInfo with
  deadlines, retries, a circuit breaker and FCFS fallbacks that never raise;
- `ordering`: the NextBatch policy itself (strict priority by score with the
  starvation guard), shared with the sidecar so both decide alike.
"""

from .breaker import CircuitBreaker
from .client import AsyncRankerClient, Batch, Candidate, Finished, Observed, RankerClient, ScoreItem, Scores, fcfs_batch
from .ordering import StarvationGuard

__all__ = [
    "AsyncRankerClient",
    "Batch",
    "Candidate",
    "CircuitBreaker",
    "Finished",
    "Observed",
    "RankerClient",
    "ScoreItem",
    "Scores",
    "StarvationGuard",
    "fcfs_batch",
]
__version__ = "0.1.0"

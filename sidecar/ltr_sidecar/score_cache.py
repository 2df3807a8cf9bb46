"""An LRU cache of scores, so that re-ranking known requests costs no inference.

Keyed by a hash of the prompt (two requests with the same prompt share one
entry) with a second index from request id to that hash, because NextBatch may
name a request by id alone. The cache holds one model's scores: it is created
with the ranker and dies with it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Generic, TypeVar

# What is cached per prompt: a score, or (with calibration on) the prompt's features.
V = TypeVar("V")


def prompt_key(prompt: str | None = None, token_ids: Sequence[int] | None = None) -> bytes:
    """A digest that identifies one model input (text and token ids never collide)."""
    if prompt is not None:
        return hashlib.blake2b(b"t" + prompt.encode("utf-8"), digest_size=16).digest()
    ids = ",".join(map(str, token_ids or ()))
    return hashlib.blake2b(b"i" + ids.encode("ascii"), digest_size=16).digest()


class ScoreCache(Generic[V]):
    """Bounded LRU map prompt key -> score (or another value), plus request id -> prompt key."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._scores: OrderedDict[bytes, V] = OrderedDict()
        self._ids: OrderedDict[str, bytes] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._scores)

    def get(self, key: bytes) -> V | None:
        score = self._scores.get(key)
        self._count(score)
        if score is not None:
            self._scores.move_to_end(key)
        return score

    def get_by_id(self, request_id: str) -> V | None:
        """The score of the prompt last seen under `request_id`; None (a miss) for an unknown id or an evicted prompt."""
        key = self._ids.get(request_id)
        if key is None:
            self.misses += 1
            return None
        return self.get(key)

    def put(self, request_id: str, key: bytes, score: V) -> None:
        if self.capacity <= 0:
            return
        self._scores[key] = score
        self._scores.move_to_end(key)
        while len(self._scores) > self.capacity:
            self._scores.popitem(last=False)
        self.remember_id(request_id, key)

    def remember_id(self, request_id: str, key: bytes) -> None:
        """Point `request_id` at an existing entry (a cache hit under a new id)."""
        if self.capacity > 0:
            self._ids[request_id] = key
            self._ids.move_to_end(request_id)
            # Ids whose prompt was evicted simply miss; trimming keeps the index bounded.
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)

    def _count(self, score: V | None) -> None:
        if score is None:
            self.misses += 1
        else:
            self.hits += 1

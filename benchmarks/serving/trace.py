"""The trace: held-out ShareGPT examples as engine requests, and their arrival times."""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.tiny_llama import bundle_tokenizer


@dataclass(frozen=True)
class TraceRequest:
    """One ShareGPT test example as the engine sees it."""

    sharegpt_id: str
    prompt_ids: tuple[int, ...]  # engine tokens, cut by `cut_prompt`
    prompt_tokens: int  # before the cut
    recorded_tokens: int  # the recorded answer's length in engine tokens
    max_tokens: int  # what this benchmark generates: recorded / scale, capped


def cut_prompt(ids: Sequence[int], args: argparse.Namespace) -> Sequence[int]:
    """A prompt's engine tokens cut to --max-prompt-tokens, keeping its last --prompt-tail-tokens."""
    from ltr_sidecar.ranker import cut

    return cut(ids, args.max_prompt_tokens, args.max_prompt_tokens - args.prompt_tail_tokens)


def generated_length(recorded_tokens: int, args: argparse.Namespace) -> int:
    return max(1, min(args.max_output_tokens, round(recorded_tokens / args.length_scale)))


def load_split(seed: int = 0) -> Any:
    """The ShareGPT split the default bundle was trained and evaluated on."""
    from ltr_sidecar.training.sharegpt import SkipStats, find_sharegpt_file, iter_sharegpt, split_examples

    return split_examples(list(iter_sharegpt(find_sharegpt_file(), SkipStats())), seed=seed, val_fraction=0.1, test_fraction=0.2)


def engine_tokenizer(tokenizer_json: Path) -> Any:
    """The bundle's tokenizer as the engine uses it (`bundle_tokenizer`), as a fast `tokenizers.Tokenizer` for batch encoding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()
    return tok


def load_trace(split: Any, tokenizer_json: Path, args: argparse.Namespace) -> list[TraceRequest]:
    """Every test example, tokenized with the engine's tokenizer, in a seeded random order."""
    tok = engine_tokenizer(tokenizer_json)
    test = list(split.test)
    prompts = tok.encode_batch([e.prompt for e in test], add_special_tokens=False)
    responses = tok.encode_batch([e.response for e in test], add_special_tokens=False)
    trace = [
        TraceRequest(e.id, tuple(cut_prompt(p.ids, args)), len(p.ids), len(r.ids), generated_length(len(r.ids), args))
        for e, p, r in zip(test, prompts, responses, strict=True)
        if p.ids  # a prompt of characters the tokenizer drops entirely has nothing to serve
    ]
    random.Random(args.seed).shuffle(trace)
    return trace


def take(trace: list[TraceRequest], start: int, n: int) -> list[TraceRequest]:
    """n requests from the shuffled trace from `start` on, wrapping around when the test split is smaller."""
    return [trace[(start + i) % len(trace)] for i in range(n)]


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


def decode_prompts(tokenizer_json: Path, prompt_ids: Sequence[Sequence[int]]) -> list[str]:
    """Prompts as the LTR hook sends them: the engine's token ids decoded back to text by the engine's tokenizer."""
    tok = bundle_tokenizer(tokenizer_json)
    return [str(tok.decode(list(ids), skip_special_tokens=True)) for ids in prompt_ids]

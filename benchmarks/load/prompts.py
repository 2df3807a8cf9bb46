"""Sample prompts: built-in synthetic English ones or a file, served as a stream that never repeats a prompt.

Every Score item must carry a prompt the server has not seen before: the score
cache is keyed by prompt, so repeating prompts would measure cache lookups
instead of inference.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from .target import BenchError

SYNTHETIC_PROMPTS = 400

_TASKS = [
    "Write a short poem about {t}.",
    "Explain {t} in detail, with examples.",
    "What is {t}?",
    "Give me a one-word answer: is {t} important?",
    "Summarize the history of {t} in one sentence.",
    "Write an essay of about 1500 words on {t}.",
    "List ten facts about {t}, each with a long description.",
    "Translate 'I like {t}' into French.",
    "Compare {t} and {u} in a table.",
    "Describe {t} to a five-year-old.",
    "Write a Python function related to {t} and explain how it works step by step.",
    "Yes or no: have you heard of {t}?",
    "Tell me a long story about {t} and {u}.",
    "Give three bullet points on {t}.",
    "Draft an email to my manager about {t}.",
    "Write a detailed tutorial on {t} for beginners, with exercises.",
]
_TOPICS = [
    "the sea", "quantum computing", "the Roman empire", "sourdough bread", "black holes", "machine learning",
    "the French revolution", "photosynthesis", "jazz music", "climate change", "the stock market", "chess openings",
    "volcanoes", "the human heart", "electric cars", "medieval castles", "sorting algorithms", "honey bees",
    "the moon landing", "coffee", "renaissance painting", "tax returns", "marathon training", "garden tomatoes",
    "neural networks", "the printing press", "coral reefs", "public transport", "vaccines", "the blues",
    "desert plants", "space probes", "interest rates", "the violin", "cloud computing", "ancient Egypt",
]
_SUBJECTS = ["my team", "the customer", "our old system", "a friend of mine", "the report", "the teacher", "this project", "the city council"]
_VERBS = ["needs", "mentions", "ignores", "depends on", "changed", "describes", "questions", "improves"]
_OBJECTS = ["the budget", "a new plan", "the last release", "the schedule", "several risks", "the main goal", "the data", "an odd result"]


def synthetic_prompts(n: int = SYNTHETIC_PROMPTS, seed: int = 0) -> list[str]:
    """`n` varied English prompts, from a few words to a few hundred, the same for the same seed."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        t, u = rng.sample(_TOPICS, 2)
        task = rng.choice(_TASKS).format(t=t, u=u)
        # About a third carry pasted context, as chat prompts often do; its
        # length spreads prompts over short, medium and longer than the model
        # reads, so the length buckets of a batch are as mixed as in practice.
        if rng.random() < 0.35:
            sentences = [
                f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."
                for _ in range(int(rng.choice([2, 4, 8, 16, 32, 48])))
            ]
            task = f"Context: {' '.join(sentences)}\n{task}"
        prompts.append(task)
    return prompts


def load_prompts(path: Path) -> list[str]:
    """Prompts from a text file (one per line) or JSONL (a "prompt" field per line); blank lines are skipped."""
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchError(f"{path}:{n}: not valid JSON: {e}") from e
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str) or not prompt:
                raise BenchError(f"{path}:{n}: a JSON line needs a non-empty string \"prompt\"")
            prompts.append(prompt)
        else:
            prompts.append(line)
    if not prompts:
        raise BenchError(f"{path}: no prompts")
    return prompts


class PromptStream:
    """Endless prompts that never repeat: sample prompt i mod n, numbered so the score cache always misses."""

    def __init__(self, prompts: Sequence[str]):
        self.prompts = list(prompts)
        self.next_seq = 0

    def take(self, k: int) -> list[tuple[str, str]]:
        """The next k (request_id, prompt) pairs."""
        start, self.next_seq = self.next_seq, self.next_seq + k
        n = len(self.prompts)
        return [(f"bench-{s}", f"{self.prompts[s % n]} (#{s})") for s in range(start, start + k)]

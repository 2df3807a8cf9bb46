"""The engine's tokenizer, as a detokenizer for the background scorer.

vLLM 0.32 hands the scheduler a `Request` with `prompt_token_ids` only: the
prompt text stays in the front-end process (and may never have existed, for
token-id prompts). The ranker reads text with its own tokenizer, so the scorer
decodes the engine's token ids back to text, on its own thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .scorer import Detokenizer


def detokenizer_factory(model_config: Any) -> Callable[[], Detokenizer]:
    """A loader for `model_config`'s tokenizer, called lazily on the scorer thread (loading takes seconds)."""

    def load() -> Detokenizer:
        from vllm.tokenizers import get_tokenizer

        # A private instance rather than vLLM's cached one: a Rust-backed HF
        # tokenizer is not safe to share across threads, and the engine's
        # structured-output workers may use the cached one concurrently.
        tokenizer = get_tokenizer(
            model_config.tokenizer,
            tokenizer_mode=model_config.tokenizer_mode,
            revision=model_config.tokenizer_revision,
            trust_remote_code=model_config.trust_remote_code,
        )

        def detokenize(token_ids: Sequence[int]) -> str:
            return tokenizer.decode(list(token_ids), skip_special_tokens=True)

        return detokenize

    return load

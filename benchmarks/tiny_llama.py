"""A tiny random-weight Llama for running real vLLM on a CPU, and the environment vLLM needs for it.

Shared by tests/test_vllm_hook.py, benchmarks/hook_overhead.py,
benchmarks/proxy_vllm_serve.py and benchmarks/serving/. The weights are
random, so the text it generates is noise; what matters is that vLLM runs its
real scheduler, KV cache and model loop over it at a CPU-friendly step time.

The tokenizer is a parameter because what the ranker sees depends on it: the
LTR hook decodes the engine's token ids back to text for the sidecar, so a
benchmark on real prompts needs a tokenizer that round-trips real text
(`bundle_tokenizer`), while the unit tests only need a handful of known words
(`word_level_tokenizer`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# vLLM reads these at import time: an in-process engine core (so that callers
# can reach the scheduler), no CPU pinning on a shared machine, 1 GiB of KV
# cache, and no hub access.
VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def set_vllm_env() -> None:
    """Set VLLM_ENV's defaults in os.environ (values already set win). Call before importing vllm."""
    for key, value in VLLM_ENV.items():
        os.environ.setdefault(key, value)


def word_level_tokenizer(vocab: Iterable[str]) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `vocab`; other words become [UNK]. Decoding joins words with spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    tok.train_from_iterator([" ".join(vocab)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")


def bundle_tokenizer(tokenizer_json: str | Path) -> PreTrainedTokenizerFast:
    """A ranker bundle's tokenizer.json (e.g. all-MiniLM-L6-v2's WordPiece) as an LLM tokenizer.

    The bundle's file pads and truncates every input to the ranker's
    max_length; an LLM tokenizer must do neither, or vLLM would see every
    prompt cut to that length and padded.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()
    vocab = tok.get_vocab()
    special = {name: token for name, token in (("unk_token", "[UNK]"), ("pad_token", "[PAD]"), ("bos_token", "[CLS]"), ("eos_token", "[SEP]")) if token in vocab}
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def build_tiny_llama(
    path: str | Path,
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 2,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Save a Llama with random weights and `tokenizer` to `path`, ready for `vllm.LLM(model=path)`.

    `hidden_size` must be a multiple of 64: the CPU attention kernels need a
    head size of 64. Step time grows with `hidden_size` and `num_layers`.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer.save_pretrained(path)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (tokenizer.bos_token, tokenizer.eos_token)]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 64,  # head_dim 64: a size the CPU attention kernels support
        num_key_value_heads=max(1, hidden_size // 256),
        max_position_embeddings=max_position_embeddings,
        bos_token_id=ids[0],
        eos_token_id=ids[1],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    return path

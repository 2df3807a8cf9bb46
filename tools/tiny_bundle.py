"""Build small, valid ranker bundles without torch: for tests, examples and load tests.

The model is a random-weight encoder written directly as an ONNX graph:
token embeddings, `num_layers` position-wise tanh layers, masked mean pooling
and a linear head. On top, an optional per-token bias gives chosen words a
known effect on the score, so tests can know the ranking in advance (a prompt
full of "brief" scores high, one full of "essay" low). `dim` and `num_layers`
scale its cost, so a load test can use a model about as heavy as a real one.

Needs the `onnx` package (the `test` extra); serving does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ltr_sidecar.bundle import MODEL_FILE, TOKENIZER_FILE, write_metadata

SAMPLE_LINES = [
    "write a short poem about the sea",
    "explain quantum computing in detail with examples",
    "what is two plus two",
    "give me a brief answer yes or no",
    "write an essay on the history of rome and its emperors",
    "translate hello into french",
    "summarize this article in one sentence",
    "list ten ideas for a birthday party with long descriptions",
    "how do I sort a list in python",
    "tell me a story about a dragon and a knight",
]


def build_tokenizer(lines: Iterable[str], vocab_size: int = 512):  # -> tokenizers.Tokenizer
    """A word-level tokenizer trained on `lines` (unknown words map to [UNK])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(lines), trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]"]))
    return tok


def build_model(vocab_size: int, dim: int = 32, num_layers: int = 1, seed: int = 0, token_bias: np.ndarray | None = None) -> bytes:
    """Serialized ONNX model: (input_ids, attention_mask) int64 [B, S] -> score float32 [B]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    bias = np.zeros((vocab_size, 1), np.float32) if token_bias is None else token_bias.reshape(vocab_size, 1).astype(np.float32)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (vocab_size, dim)).astype(np.float32), "embedding"),
        numpy_helper.from_array(bias, "token_bias"),
        numpy_helper.from_array((rng.normal(0, 1, (dim, 1)) / np.sqrt(dim)).astype(np.float32), "head"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["h0"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
    ]
    h = "h0"
    for i in range(num_layers):
        w = numpy_helper.from_array((rng.normal(0, 1, (dim, dim)) / np.sqrt(dim)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"z{i}"]), helper.make_node("Tanh", [f"z{i}"], [f"h{i + 1}"])]
        h = f"h{i + 1}"
    nodes += [
        # Masked mean over the sequence: padding must not change a row's score.
        helper.make_node("Mul", [h, "mask3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "axis1"], ["hsum"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count0"], keepdims=1),
        helper.make_node("Max", ["count0", "one"], ["count"]),
        helper.make_node("Div", ["hsum", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "head"], ["dense"]),
        helper.make_node("Gather", ["token_bias", "input_ids"], ["tb"]),
        helper.make_node("Mul", ["tb", "mask3"], ["tbm"]),
        helper.make_node("ReduceSum", ["tbm", "axis1"], ["tbsum"], keepdims=0),
        helper.make_node("Div", ["tbsum", "count"], ["tbmean"]),
        helper.make_node("Add", ["dense", "tbmean"], ["score2d"]),
        helper.make_node("Reshape", ["score2d", "flat"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_ranker",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tools.tiny_bundle")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_tiny_bundle(
    out_dir: str | Path,
    lines: Iterable[str] = SAMPLE_LINES,
    word_bias: Mapping[str, float] | None = None,
    dim: int = 32,
    num_layers: int = 1,
    max_length: int = 64,
    seed: int = 0,
    name: str = "tiny-test-ranker",
    head_tokens: int = 0,
) -> Path:
    """Write a complete bundle to `out_dir` and return its path.

    `word_bias` adds a fixed amount to the score per occurrence share of each
    word (the model averages it over the prompt's tokens); use large values
    to make the ranking of test prompts known in advance. `head_tokens` > 0
    makes the bundle keep a long prompt's tail as well (ranker.json "truncation").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = list(lines) + list(word_bias or {})
    tok = build_tokenizer(lines)
    vocab = tok.get_vocab_size()
    bias = np.zeros(vocab, np.float32)
    for word, value in (word_bias or {}).items():
        token_id = tok.token_to_id(word.lower())
        if token_id is None:
            raise ValueError(f"word_bias: {word!r} is not in the tokenizer's vocabulary")
        bias[token_id] = value
    tok.save(str(out / TOKENIZER_FILE))
    (out / MODEL_FILE).write_bytes(build_model(vocab, dim=dim, num_layers=num_layers, seed=seed, token_bias=bias))
    write_metadata(
        out,
        {
            "name": name,
            "version": f"{dim}x{num_layers}-seed{seed}",
            "max_length": max_length,
            **({"truncation": {"head_tokens": head_tokens}} if head_tokens else {}),
            "score": "higher = shorter predicted output (random weights: for tests only)",
            "base_model": {"name": "random init", "license": "Apache-2.0"},
            "evaluation": {},
        },
    )
    return out

"""The ranker runtime: a verified bundle served by ONNX Runtime.

Synchronous and thread-safe: the micro-batcher calls it from a worker thread.
ONNX Runtime releases the GIL while it computes, so the event loop keeps
answering RPCs during inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .bundle import Bundle, load_bundle
from .calibration import EMBEDDING_OUTPUT, AdapterError, load_adapter

log = logging.getLogger(__name__)

# Preferred first. TensorRT and CUDA exist only with onnxruntime-gpu.
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# No realistic token spans more characters than this, so cutting a prompt to
# max_length * this many characters before tokenizing changes no score but
# bounds the work a megabyte-long prompt costs.
MAX_CHARS_PER_TOKEN = 64


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The execution providers to use: `requested` if given (all must exist), else the best available."""
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(f"--providers: {', '.join(missing)} not available here (available: {', '.join(available)})")
        return list(requested)
    return [p for p in AUTO_PROVIDERS if p in available] or available


def keeps_tail(max_length: int, head_tokens: int) -> bool:
    """Whether a cut to max_length keeps a tail after `head_tokens` of head (else: the head only)."""
    return 0 < head_tokens < max_length


def load_tokenizer(path: str | Path, max_length: int, head_tokens: int = 0) -> Tokenizer:
    """A bundle's tokenizer set up as the server uses it: no padding; truncation at max_length unless the tail is kept too."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    if keeps_tail(max_length, head_tokens):
        tokenizer.no_truncation()  # `cut` keeps the head and the tail itself
    else:
        tokenizer.enable_truncation(max_length)
    return tokenizer


def cut(ids: Sequence[int], max_length: int, head_tokens: int = 0) -> Sequence[int]:
    """At most max_length ids: a short row whole; of a longer one its first `head_tokens` and its last
    max_length - head_tokens (0, or >= max_length: the first max_length).

    Why the tail: a long prompt often ends with the instruction ("...summarise
    this in three bullet points") after pasted text, and that instruction says
    more about the answer's length than the text does. With a BERT-style
    tokenizer the cut keeps [CLS] first and [SEP] last.
    """
    if len(ids) <= max_length:
        return ids
    if not keeps_tail(max_length, head_tokens):
        return ids[:max_length]
    return [*ids[:head_tokens], *ids[len(ids) - (max_length - head_tokens) :]]


def tokenize(tokenizer: Tokenizer, prompts: Sequence[str], max_length: int, head_tokens: int = 0) -> list[list[int]]:
    """Token ids for each prompt, cut to max_length by `cut` (training uses this too, so it sees what serving sees).

    `tokenizer` must come from `load_tokenizer` with the same max_length and head_tokens.
    """
    if not keeps_tail(max_length, head_tokens):
        limit = max_length * MAX_CHARS_PER_TOKEN
        return [e.ids for e in tokenizer.encode_batch([p[:limit] for p in prompts])]
    head_chars, tail_chars = head_tokens * MAX_CHARS_PER_TOKEN, (max_length - head_tokens) * MAX_CHARS_PER_TOKEN
    # The tokens kept lie within these characters at either end; the middle of a huge prompt is never tokenized.
    texts = [p if len(p) <= head_chars + tail_chars else f"{p[:head_chars]} {p[-tail_chars:]}" for p in prompts]
    return [list(cut(e.ids, max_length, head_tokens)) for e in tokenizer.encode_batch(texts)]


def pad(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """int64 input_ids and attention_mask, right-padded with 0 to the longest row (at least 1 wide)."""
    width = max(1, max(len(r) for r in rows))
    input_ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    return input_ids, mask


class OnnxRanker:
    """Scores prompts with a bundle's model: higher score = shorter predicted output."""

    def __init__(
        self, bundle: Bundle | str | Path, providers: Sequence[str] | None = None, intra_op_threads: int = 0, max_length: int = 0,
        need_embedding: bool = False,
    ):
        """`max_length` (0: the bundle's) cuts prompts shorter than the bundle does: the model's cost
        grows with the tokens it reads, so this trades a little accuracy for speed. It cannot exceed
        the bundle's, which is what the model was trained and evaluated on.

        `need_embedding` (online calibration): a model without a pooled-embedding output gets one
        added in memory, as `adapt` adds it (needs the onnx package); its score output is unchanged."""
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if max_length < 0 or max_length > self.bundle.max_length:
            raise ValueError(f"--max-length: {max_length} is outside [0, {self.bundle.max_length}] (the bundle's max_length)")
        self.max_length = max_length or self.bundle.max_length
        # A shorter max_length keeps the bundle's head and shortens the tail.
        self.head_tokens = self.bundle.head_tokens if keeps_tail(self.max_length, self.bundle.head_tokens) else 0
        self.tokenizer = load_tokenizer(self.bundle.tokenizer_path, self.max_length, self.head_tokens)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle ONNX Runtime threads otherwise spin for work, burning a core that
        # the event loop and the engine beside us need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # A bundle may say how it runs best (e.g. session.disable_quant_qdq for
        # weight-only int8). Only session.* entries: nothing that loads code.
        for key, value in self.bundle.metadata.get("runtime", {}).get("session_config", {}).items():
            if not key.startswith("session."):
                raise ValueError(f"{self.bundle.path}/ranker.json: runtime.session_config key {key!r} is not a session.* option")
            options.add_session_config_entry(key, str(value))
        model: str | bytes = str(self.bundle.model_path)
        if need_embedding:
            model = _with_embedding(self.bundle.model_path)
        self.session = ort.InferenceSession(model, sess_options=options, providers=choose_providers(providers))
        self.providers: list[str] = self.session.get_providers()
        inputs = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= inputs:
            raise ValueError(f"{self.bundle.model_path}: inputs must be input_ids and attention_mask, found {sorted(inputs)}")
        self._output = self.session.get_outputs()[0].name
        # A calibrated bundle (`ltr-sidecar adapt`) also outputs the pooled embedding, and its
        # adapter moves each base score: score = base + adapter(embedding, base, prompt tokens).
        outputs = {o.name: o for o in self.session.get_outputs()[1:]}
        self.calibration = load_adapter(self.bundle.path, self.bundle.metadata)
        self._embedding = self.calibration.embedding_output if self.calibration else None
        if self._embedding is None and EMBEDDING_OUTPUT in outputs:
            self._embedding = EMBEDDING_OUTPUT
        if self.calibration and self._embedding not in outputs:
            raise AdapterError(f"{self.bundle.model_path}: has no output {self._embedding!r} for the bundle's adapter")
        log.info("ranker loaded", extra={"model_version": self.bundle.model_version, "provider": self.provider})

    @property
    def vocab_size(self) -> int:
        """Token ids must lie in [0, vocab_size): the model's embedding table has no more rows."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (the first one ONNX Runtime accepted)."""
        return self.providers[0]

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids for each prompt, cut to max_length as the bundle says (`cut`)."""
        return tokenize(self.tokenizer, prompts, self.max_length, self.head_tokens)

    def truncate(self, token_ids: Sequence[Sequence[int]]) -> list[Sequence[int]]:
        """Caller-tokenized ids cut to max_length by `cut`: for a bundle that keeps the tail, exactly as
        `tokenize` cuts text. For a head-only bundle text goes through the tokenizer's own truncation,
        which keeps a final [SEP]; a long row of caller ids keeps its first max_length ids as sent.
        """
        return [cut(ids, self.max_length, self.head_tokens) for ids in token_ids]

    def score_texts(self, prompts: Sequence[str]) -> np.ndarray:
        return self.score_ids(self.tokenize(prompts))

    def score_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores for already tokenized (and truncated) prompts, in input order.

        Rows are grouped into power-of-two length buckets and each bucket is
        padded only to its own longest row: one long prompt does not make a
        whole batch pay for its padding.
        """
        scores = np.empty(len(token_ids), dtype=np.float32)
        for rows in _buckets(token_ids):
            scores[rows] = self._run([token_ids[i] for i in rows])
        return scores

    def features_ids(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibration features of already cut prompts: the pooled embedding [n, dim], the base score [n]
        (before any adapter) and the prompt tokens read [n]. Needs a model with an embedding output."""
        if self._embedding is None:
            raise ValueError(f"{self.bundle.model_path}: has no {EMBEDDING_OUTPUT!r} output (`ltr-sidecar adapt` writes a bundle with one)")
        base = np.empty(len(token_ids), dtype=np.float32)
        parts: dict[int, np.ndarray] = {}
        for rows in _buckets(token_ids):
            base[rows], embedding = self._run_model([token_ids[i] for i in rows], embedding=True)
            parts.update(zip(rows, embedding))
        embeddings = np.stack([parts[i] for i in range(len(token_ids))]) if token_ids else np.zeros((0, 0), np.float32)
        return embeddings, base, np.array([len(ids) for ids in token_ids], dtype=np.int64)

    def score_with_features(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The served scores (what score_ids returns) and the pooled embeddings [n, dim], in input order."""
        if self._embedding is None:
            raise ValueError(f"{self.bundle.model_path}: has no {EMBEDDING_OUTPUT!r} output")
        scores = np.empty(len(token_ids), dtype=np.float32)
        parts: dict[int, np.ndarray] = {}
        for rows in _buckets(token_ids):
            batch = [token_ids[i] for i in rows]
            base, embedding = self._run_model(batch, embedding=True)
            if self.calibration is not None:
                base = self.calibration.adapter.apply(embedding, base, np.array([len(r) for r in batch]))
            scores[rows] = base
            parts.update(zip(rows, embedding))
        width = self.embedding_dim
        embeddings = np.stack([parts[i] for i in range(len(token_ids))]) if token_ids else np.zeros((0, width), np.float32)
        return scores, embeddings

    @property
    def embedding_dim(self) -> int:
        """Width of the pooled embedding output (0 without one)."""
        if self._embedding is None:
            return 0
        shape = next(o.shape for o in self.session.get_outputs() if o.name == self._embedding)
        if isinstance(shape[-1], int):
            return int(shape[-1])
        return int(self._run_model([[0]], embedding=True)[1].shape[1])

    def _run(self, rows: list[Sequence[int]]) -> np.ndarray:
        if self.calibration is None:
            return self._run_model(rows)[0]
        base, embedding = self._run_model(rows, embedding=True)
        return self.calibration.adapter.apply(embedding, base, np.array([len(r) for r in rows]))

    def _run_model(self, rows: list[Sequence[int]], embedding: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The model's base scores and, if asked, its pooled embeddings (else an empty array)."""
        input_ids, mask = pad(rows)
        names = [self._output, self._embedding] if embedding else [self._output]
        out = self.session.run(names, {"input_ids": input_ids, "attention_mask": mask})
        base = np.asarray(out[0], dtype=np.float32).reshape(len(rows))
        return base, (np.asarray(out[1], dtype=np.float32).reshape(len(rows), -1) if embedding else np.zeros((0, 0), np.float32))


def _with_embedding(model_path: Path) -> bytes:
    """The model's bytes with the pooled embedding as a second output (a model that has one: unchanged)."""
    import tempfile

    from .training.adapt import expose_embedding  # imports onnx only when called

    with tempfile.TemporaryDirectory() as tmp:
        try:
            expose_embedding(model_path, Path(tmp) / "model.onnx")
        except ImportError as e:
            raise ValueError(f"--calibration on: {model_path} has no {EMBEDDING_OUTPUT!r} output and adding one needs the onnx "
                             f"package ({e}); install it or serve a bundle written by `ltr-sidecar adapt`") from e
        return (Path(tmp) / "model.onnx").read_bytes()


def _buckets(token_ids: Sequence[Sequence[int]]) -> list[list[int]]:
    """Row indices grouped into power-of-two length buckets."""
    buckets: dict[int, list[int]] = {}
    for i, ids in enumerate(token_ids):
        buckets.setdefault(max(1, len(ids) - 1).bit_length(), []).append(i)
    return list(buckets.values())

"""`ltr-sidecar adapt`: calibrate a bundle to a served model from a trace of its answers (the offline twin).

    ltr-sidecar adapt BUNDLE --data TRACES.jsonl --out NEW_BUNDLE

1. The base model.onnx gains a second output, ``pooled_embedding``, the one its
   linear head reads (graph surgery with the ``onnx`` package; the score
   output is untouched).
2. Each trace prompt is scored by that model through the serving runtime
   (:class:`~ltr_sidecar.ranker.OnnxRanker`, so the features are exactly what
   serving computes): embedding, base score, prompt tokens read.
3. :func:`ltr_sidecar.calibration.fit_calibration` fits the adapter on part of
   the rows and judges it against the base on the rest: the same fit an
   online refit runs.
4. Promoted: NEW_BUNDLE holds that model, the tokenizer, ``adapter.json`` and
   a ranker.json with a new version and the provenance (base bundle, rows,
   held-out taus), all hash-listed; `serve --model NEW_BUNDLE` applies the
   adapter with no other state. Not promoted: NEW_BUNDLE is the base bundle,
   copied unchanged, and the command says so.

Only lengths, features and weights are kept: no prompt text reaches the bundle.
Needs the ``onnx`` package (the `train` or `test` extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..bundle import MODEL_FILE, TOKENIZER_FILE, Bundle, BundleError, load_bundle, write_metadata
from ..calibration import ADAPTER_FILE, EMBEDDING_OUTPUT, PROMOTE_CONFIDENCE, Adapter, Verdict, fit_calibration

if TYPE_CHECKING:
    from ..ranker import OnnxRanker

log = logging.getLogger(__name__)

EXIT_USAGE = 2
# Scores of the written bundle must equal base + adapter to this much (float32 arithmetic).
PARITY_TOLERANCE = 1e-3


class AdaptError(ValueError):
    """Bad input for adapt: the message names the flag or argument."""


def expose_embedding(src: Path, dst: Path) -> int:
    """Write `src`'s ONNX model to `dst` with the pooled embedding as a second output (EMBEDDING_OUTPUT); return its width.

    The pooled embedding is the input of the linear head: the one MatMul
    whose weight is a constant [dim, 1] (possibly int8 behind a
    DequantizeLinear). A model with no such node, or several, is refused.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    if any(o.name == EMBEDDING_OUTPUT for o in graph.output):
        shape = next(o for o in graph.output if o.name == EMBEDDING_OUTPUT).type.tensor_type.shape.dim
        onnx.save(model, str(dst))
        return int(shape[-1].dim_value)
    initializers = {t.name: tuple(t.dims) for t in graph.initializer}
    produced_by = {out: node for node in graph.node for out in node.output}

    def constant_shape(name: str) -> tuple[int, ...] | None:
        if name in initializers:
            return initializers[name]
        node = produced_by.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            return initializers[node.input[0]]
        return None

    heads = []
    for node in graph.node:
        shape = constant_shape(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if shape is not None and len(shape) == 2 and shape[1] == 1:
            heads.append((node.input[0], shape[0]))
    if len(heads) != 1:
        raise AdaptError(f"BUNDLE: {src} has {len(heads)} linear heads (a MatMul by a constant [dim, 1]); adapt needs exactly one "
                         "to find the pooled embedding")
    pooled, dim = heads[0]
    if EMBEDDING_OUTPUT in initializers or EMBEDDING_OUTPUT in produced_by:
        raise AdaptError(f"BUNDLE: {src} already uses the name {EMBEDDING_OUTPUT!r} inside its graph")
    graph.node.append(helper.make_node("Identity", [pooled], [EMBEDDING_OUTPUT], name="calibration_embedding"))
    graph.output.append(helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", dim]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return int(dim)


def trace_features(ranker: OnnxRanker, prompts: list[str], batch_size: int = 32, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pooled embedding, base score, prompt tokens read) for each prompt, computed as serving computes them."""
    from tqdm import tqdm

    parts = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="features", unit=" batch", disable=not progress):
        parts.append(ranker.features_ids(ranker.tokenize(prompts[start : start + batch_size])))
    if not parts:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    emb, base, tokens = (np.concatenate(p) for p in zip(*parts))
    return emb, base, tokens


@dataclass(frozen=True)
class AdaptResult:
    verdict: Verdict
    out: Path
    model_version: str
    rows: int
    trace_report: dict[str, Any]

    def summary(self) -> str:
        v = self.verdict
        head = (f"{self.rows} rows ({v.censored} censored): {v.train} to fit, {v.held_out} held out. {v.reason}.")
        if v.promoted:
            return f"{head}\nwrote {self.out} ({self.model_version}): base score + adapter"
        return f"{head}\nwrote {self.out}: the base bundle unchanged ({self.model_version})"


def _base_provenance(bundle: Bundle) -> dict[str, Any]:
    """The bundle an adapter sits on: an adapted bundle's own base, else this one."""
    previous = bundle.metadata.get("adapter")
    if isinstance(previous, dict) and isinstance(previous.get("base"), dict):
        return previous["base"]
    return {"name": bundle.name, "version": bundle.version, "model_sha256": bundle.model_sha256, "evaluation": bundle.metadata.get("evaluation", {})}


def adapt(
    bundle_path: Path, data: Path, out: Path, version: str = "", seed: int = 0, batch_size: int = 32,
    progress: bool = False, command: str = "",
) -> AdaptResult:
    """Fit the calibration on a trace and write NEW_BUNDLE (adapted, or the base unchanged)."""
    from ..ranker import OnnxRanker
    from .dataset import label_examples
    from .traces import read_traces

    try:
        bundle = load_bundle(bundle_path)
    except BundleError as e:
        raise AdaptError(f"BUNDLE: {e}") from e
    if out.resolve() == bundle.path.resolve():
        raise AdaptError(f"--out: {out} is BUNDLE itself; write the adapted bundle elsewhere")
    if not data.is_file():
        raise AdaptError(f"--data: {data} not found")
    examples, report = read_traces(data)
    if report.bad_rows:
        log.warning("%s", report.summary())
    if not examples:
        raise AdaptError(f"--data: {data} has no usable rows ({report.summary()})")
    # Rows with `generated` text are counted in the bundle's tokenizer, as `evaluate` counts them.
    examples = label_examples(examples, bundle.tokenizer_path)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copyfile(bundle.tokenizer_path, work / TOKENIZER_FILE)
        dim = expose_embedding(bundle.model_path, work / MODEL_FILE)
        meta = {k: v for k, v in bundle.metadata.items() if k not in ("format", "files", "adapter")}
        write_metadata(work, meta)  # a bundle exposing the embedding, no adapter yet: to compute features
        ranker = OnnxRanker(work)
        emb, base, tokens = trace_features(ranker, [e.prompt for e in examples], batch_size, progress)
        lengths = np.array([e.output_tokens for e in examples], dtype=np.int64)
        censored = np.array([e.censored for e in examples], dtype=bool)
        verdict = fit_calibration(emb, base, tokens, lengths, censored, seed=seed)
        if verdict.adapter is None:
            shutil.rmtree(work)
            _copy_bundle(bundle, out)
            return AdaptResult(verdict, out, bundle.model_version, len(examples), report.as_dict())
        adapter = verdict.adapter
        (work / ADAPTER_FILE).write_text(json.dumps(adapter.to_json(), indent=1) + "\n", encoding="utf-8")
        new_version = version or f"{bundle.version}+adapt.{adapter.digest()}"
        meta.update(
            version=new_version,
            outputs={**meta.get("outputs", {}), EMBEDDING_OUTPUT: f"float32 [batch, {dim}]: the pooled embedding the adapter reads"},
            evaluation={
                "kendall_tau_b": verdict.candidate_tau,
                "base_kendall_tau_b": verdict.base_tau,
                "test_size": verdict.held_out,
                "note": "censored tau-b on held-out rows of the adapt trace (the served model's answers), not on ShareGPT",
            },
            adapter={
                "file": ADAPTER_FILE,
                "embedding_output": EMBEDDING_OUTPUT,
                "score": "base score + adapter(embedding, base score, log prompt tokens)",
                "base": _base_provenance(bundle),
                "data": {"file": data.name, "rows": len(examples), "censored": int(censored.sum()), "bad_rows": report.bad_rows},
                "fit": verdict.as_dict(),
                "seed": seed,
                "command": command,
            },
        )
        write_metadata(work, meta)
        _check_parity(work, adapter, [e.prompt for e in examples[:64]], emb[:64], base[:64], tokens[:64])
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
        return AdaptResult(verdict, out, f"{bundle.name}@{new_version}", len(examples), report.as_dict())
    finally:
        if work.exists():
            shutil.rmtree(work)


def _check_parity(path: Path, adapter: Adapter, prompts: list[str], emb: np.ndarray, base: np.ndarray, tokens: np.ndarray) -> None:
    """The written bundle, loaded as `serve` loads it, scores base + adapter."""
    from ..ranker import OnnxRanker

    served = OnnxRanker(load_bundle(path)).score_texts(prompts)
    expected = adapter.apply(emb, base, tokens)
    worst = float(np.max(np.abs(served - expected))) if len(prompts) else 0.0
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"{path}: served scores differ from base + adapter by {worst:.2g}; not writing the bundle")


def _copy_bundle(bundle: Bundle, out: Path) -> None:
    """The base bundle, byte for byte: its directory's files (ranker.json's signature too, if it has one)."""
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    for file in bundle.path.iterdir():
        if file.is_file():
            shutil.copyfile(file, work / file.name)
    load_bundle(work)
    if out.exists():
        shutil.rmtree(out)
    os.replace(work, out)


# -- the command -------------------------------------------------------------------


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="calibrate a bundle to your served model from a trace of its answers",
        description="Fit a light adapter over the bundle's pooled embedding, score and prompt length to your model's answer "
        "lengths (pairwise loss, censored lengths as lower bounds, shrunk toward the bundle), judge it on held-out rows, and "
        f"write NEW_BUNDLE: the adapted bundle if it ranks the held-out rows better than the base with {PROMOTE_CONFIDENCE:.0%} "
        "bootstrap confidence, else the base bundle unchanged. `serve --model NEW_BUNDLE` serves it with no other state. No prompt "
        "text is stored. Needs the onnx package (the train or test extra).",
    )
    p.add_argument("bundle", metavar="BUNDLE", type=Path, help="the ranker bundle to calibrate (e.g. the default one)")
    p.add_argument("--data", type=Path, required=True, help="JSONL trace of your model's answers: {prompt, generated} or "
                   "{prompt, output_tokens} rows, optionally with finish_reason (stop; length/abort/content_filter: censored) "
                   "or censored: true for answers cut before their end")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced if it exists)")
    p.add_argument("--version", default="", help="version of the adapted bundle (default: BUNDLE's version + adapt.<adapter hash>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draw, the cross-validation folds and the bootstrap (default: 0)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per model call when computing features (default: 32)")
    p.add_argument("--report", type=Path, help="also write the verdict (counts, taus, penalty; no prompts) as JSON here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.batch_size <= 0:
        log.error("--batch-size: must be positive, not %s", args.batch_size)
        return EXIT_USAGE
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        log.error("ltr-sidecar adapt needs the onnx package (pip install 'ltr-sidecar[train]'): %s", e)
        return EXIT_USAGE
    command = shlex.join(["ltr-sidecar", "adapt", *sys.argv[2:]]) if sys.argv[1:2] == ["adapt"] else ""
    try:
        result = adapt(args.bundle, args.data, args.out, args.version, args.seed, args.batch_size, args.progress, command)
    except AdaptError as e:
        log.error("%s", e)
        return EXIT_USAGE
    print(result.summary())
    if args.report:
        args.report.write_text(json.dumps({"model_version": result.model_version, "rows": result.rows, **result.verdict.as_dict(),
                                           "trace": result.trace_report}, indent=1) + "\n", encoding="utf-8")
    return 0

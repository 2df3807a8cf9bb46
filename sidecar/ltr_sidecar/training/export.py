"""From a trained torch ranker to ONNX files the sidecar serves.

- :func:`export_onnx`: fp32 ONNX with dynamic batch and sequence axes.
- :func:`check_parity`: ONNX Runtime against torch on held-out prompts.
- :func:`quantize_weight_only`: int8 weights, float32 compute, so a prompt's
  score does not depend on what it is batched with (ONNX Runtime's dynamic
  int8 quantizes activations per batch and moved scores by up to 0.2).
- :func:`to_fp16`: half-size weights, float32 inputs and outputs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from scipy.stats import kendalltau

from ..ranker import pad  # the server's own padding, so parity covers it

OPSET = 17
INPUTS = ("input_ids", "attention_mask")


def export_onnx(model: torch.nn.Module, path: str | Path) -> Path:
    """Write `model` (input_ids, attention_mask -> score) as fp32 ONNX with dynamic batch and sequence."""
    path = Path(path)
    model = model.eval().to("cpu")
    # Small ids: every vocabulary has them. Shapes differ so both axes trace as dynamic.
    example = pad([[1, 2, 3], [1, 2, 3, 4, 5, 6]])
    with warnings.catch_warnings():
        # Harmless here and checked by the parity test: the TorchScript
        # exporter is deprecated, and transformers' mask code compares shapes
        # that are always equal for an encoder without a KV cache.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean.*")
        warnings.filterwarnings("ignore", message="Exporting aten::index operator.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(a) for a in example),
            str(path),
            input_names=list(INPUTS),
            output_names=["score"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "score": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter handles BERT's dynamic mask shapes without extra hints
        )
    return path


def session(path: str | Path, threads: int = 0, session_config: dict[str, str] | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def score_session(sess: ort.InferenceSession, token_ids: Sequence[Sequence[int]], batch_size: int = 32) -> np.ndarray:
    """Scores in input order, in batches taken in arrival order (mixed lengths, as a server sees them)."""
    out = np.zeros(len(token_ids), dtype=np.float32)
    for start in range(0, len(token_ids), batch_size):
        feed = dict(zip(INPUTS, pad(token_ids[start : start + batch_size])))
        out[start : start + batch_size] = sess.run(["score"], feed)[0]
    return out


@torch.inference_mode()
def score_torch(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], batch_size: int = 32) -> np.ndarray:
    model = model.eval().to("cpu")
    parts = [
        model(*(torch.from_numpy(a) for a in pad(token_ids[i : i + batch_size]))).numpy()
        for i in range(0, len(token_ids), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


def check_parity(model: torch.nn.Module, onnx_path: str | Path, token_ids: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Max |torch - ONNX| and Kendall tau-b between the two score lists, on the same padded batches."""
    reference = score_torch(model, token_ids)
    exported = score_session(session(onnx_path), token_ids)
    return {
        "prompts": len(token_ids),
        "max_abs_diff": float(np.max(np.abs(reference - exported))),
        "kendall_tau_b": float(kendalltau(reference, exported, variant="b").statistic),
    }


def quantize_weight_only(src: str | Path, dst: str | Path) -> int:
    """int8 weights, float32 compute; returns how many MatMul weights were quantized.

    Embedding tables go through quantize_dynamic's Gather rule (which is
    weight-only: gather int8 rows, then dequantize them); each MatMul weight
    becomes symmetric per-output-channel int8 behind a standard
    DequantizeLinear, which any onnxruntime >= 1.20 (CPU or CUDA) runs.
    Serve it with session option ``session.disable_quant_qdq=1``: ONNX Runtime
    then dequantizes the weights once at load instead of running int8 kernels.
    """
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    gather_only = dst.with_suffix(".gather.onnx")
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic warns about optional pre-processing
    try:
        quantize_dynamic(src, gather_only, weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"])
    finally:
        logging.getLogger().setLevel(quiet)
    model = onnx.load(str(gather_only))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    dequantized: dict[str, str] = {}
    new_nodes = []
    for node in graph.node:
        name = node.input[1] if node.op_type == "MatMul" else None
        if name not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[name])
        if weight.ndim != 2 or weight.dtype != np.float32:
            continue
        if name not in dequantized:
            scale = (np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0).astype(np.float32)
            q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
            graph.initializer.extend(
                [
                    numpy_helper.from_array(q, f"{name}_int8"),
                    numpy_helper.from_array(scale, f"{name}_scale"),
                    numpy_helper.from_array(np.zeros(weight.shape[1], np.int8), f"{name}_zero_point"),
                ]
            )
            new_nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                    [f"{name}_dequantized"],
                    name=f"{name}_DequantizeLinear",
                    axis=1,
                )
            )
            dequantized[name] = f"{name}_dequantized"
        node.input[1] = dequantized[name]
    nodes = new_nodes + list(graph.node)  # their inputs are initializers, so first is topological
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]  # drop the float32 originals
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    gather_only.unlink()
    return len(dequantized)


def to_fp16(src: str | Path, dst: str | Path) -> None:
    """fp16 weights with float32 inputs and outputs, so the interface stays the same."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


# Session options a variant needs to run at its best; recorded in ranker.json.
SESSION_CONFIG = {"int8": {"session.disable_quant_qdq": "1"}, "fp32": {}, "fp16": {}}

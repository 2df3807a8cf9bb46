"""The vLLM engine: the model it serves, starting and stopping one per policy, and warming it up."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.tiny_llama import build_tiny_llama, bundle_tokenizer

from .events import log
from .policies import Policy
from .trace import TraceRequest


def build_engine_model(tmp: Path, tokenizer_json: Path, args: argparse.Namespace) -> Path:
    if args.model_config:
        return model_from_config(tmp / "model", args.model_config, tokenizer_json)
    return build_tiny_llama(
        tmp / "model",
        bundle_tokenizer(tokenizer_json),
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        max_position_embeddings=max(512, args.max_model_len),
        seed=args.seed,
    )


def model_from_config(path: Path, config_json: Path, tokenizer_json: Path) -> Path:
    """A model directory with no weights: `config_json` (e.g. Llama-3-8B's) and the ranker's tokenizer, for load_format=dummy.

    The model's vocabulary may be larger than the tokenizer's: prompts only
    use the tokenizer's ids, and outputs are never decoded (detokenize=False).
    """
    config = json.loads(config_json.read_text())
    tokenizer = bundle_tokenizer(tokenizer_json)
    if config.get("vocab_size", 0) < len(tokenizer):
        config["vocab_size"] = len(tokenizer)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def start_engine(model: Path, policy: Policy, args: argparse.Namespace) -> Any:
    from vllm import LLM

    kwargs: dict[str, Any] = {}
    if policy.scheduler_cls:
        kwargs["scheduler_cls"] = policy.scheduler_cls
    return LLM(
        model=str(model),
        scheduling_policy=policy.scheduling_policy,
        additional_config={"ltr": dict(policy.ltr)} if policy.ltr is not None else {},
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        load_format=args.load_format,
        enforce_eager=args.enforce_eager,
        enable_prefix_caching=False,  # every policy computes every prompt token: equal work
        seed=args.seed,
        **kwargs,
    )


def engine_core(llm: Any) -> Any:
    """The in-process EngineCore (VLLM_ENABLE_V1_MULTIPROCESSING=0), which owns the scheduler."""
    return llm.llm_engine.engine_core.engine_core


def stop_engine(llm: Any) -> None:
    """Free the engine now, not whenever the garbage collector gets to it: the next policy's engine needs the memory."""
    llm.llm_engine.engine_core.shutdown()  # also shuts the scheduler down, which stops the LTR scorer thread


def warm_up(llm: Any, requests: Sequence[TraceRequest]) -> None:
    """Run a few short requests on a fresh engine, and for the hook wait until they are scored: first-step and first-call costs are not the policy's."""
    if not requests:
        return
    from vllm import SamplingParams

    engine = llm.llm_engine
    for i, r in enumerate(requests):
        engine.add_request(f"warmup{i}", {"prompt_token_ids": list(r.prompt_ids)}, SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False))
    scorer = getattr(engine_core(llm).scheduler, "scorer", None)
    if scorer is not None and not scorer.wait_idle(120):
        log("warmup_scoring_timeout")
    while engine.has_unfinished_requests():
        engine.step()

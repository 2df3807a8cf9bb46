"""`ltr-sidecar`: the command line. Every `serve` flag can also be set as LTR_<FLAG> (e.g. LTR_PORT=50052)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ltr_client import ordering
from ltr_client.client import DEFAULT_TARGET, TARGET_ENV

from .config import LOG_LEVELS, MAX_PORT, ConfigError, Limits, ServerConfig
from .signing_commands import add_commands as add_signing_commands
from .training.commands import add_commands as add_training_commands
from .training.adapt import add_command as add_adapt_command

log = logging.getLogger("ltr_sidecar")


class _EnvDefaults(argparse.ArgumentParser):
    """An ArgumentParser whose flags default to LTR_<DEST> from the environment, named in --help.

    Its errors are one line (no usage block), so a refused start-up says what was wrong and nothing else.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.from_env: dict[str, tuple[str, Any]] = {}  # flag -> (LTR_* variable, the value it gave)

    def add_env_argument(self, flag: str, help: str, type: Callable[[str], Any] = str, default: Any = None,
                         env: str | None = None, **kw: Any) -> None:
        dest = flag.lstrip("-").replace("-", "_")
        env = env or f"LTR_{dest.upper()}"
        if env in os.environ:
            raw = os.environ[env]
            if kw.get("action") == "store_true":
                default = raw.lower() in ("1", "true", "yes", "on")
            else:
                try:
                    default = type(raw)
                except (TypeError, ValueError) as e:
                    self.error(f"{env}={raw!r}: {e}")
            self.from_env[flag] = (env, default)
        shown = "" if default is None else f" (default: {default})"
        self.add_argument(flag, dest=dest, default=default, help=f"{help}{shown} [env {env}]", **({"type": type} if "action" not in kw else {}), **kw)

    def env_source(self, flag: str, value: Any) -> str:
        """' (from LTR_X)' when `flag` holds the value its environment variable gave, else ''."""
        env, given = self.from_env.get(flag, (None, None))
        return f" (from {env})" if env is not None and given == value else ""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _providers(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p: _EnvDefaults = sub.add_parser(
        "serve",
        help="serve a ranker bundle over gRPC",
        description="Serve a ranker bundle over gRPC (ltr.v1.RankerService, grpc.health.v1, reflection) with Prometheus /metrics. "
        "The model is warmed up before health reports SERVING. An invalid setting ends start-up with exit status 2 and one line naming it.",
    )
    d = ServerConfig()  # the one definition of the defaults
    a = p.add_env_argument
    a("--model", "ranker bundle directory (model.onnx, tokenizer.json, ranker.json)", Path, d.model)
    a("--providers", "comma-separated ONNX Runtime execution providers, in order; empty picks TensorRT > CUDA > CPU", _providers, d.providers)
    a("--host", "address to listen on; 0.0.0.0 or :: exposes the sidecar beyond this machine", str, d.host)
    a("--port", "gRPC port, 0-65535 (0 picks a free one)", int, d.port)
    a("--metrics-host", "address for /metrics", str, d.metrics_host)
    a("--metrics-port", "Prometheus /metrics port, -1-65535 (0 picks a free one, -1 disables)", int, d.metrics_port)
    a("--max-batch-size", "most prompts per model call (at least 1)", int, d.max_batch_size)
    a("--max-delay-ms", "longest a prompt waits for more prompts to join its batch when the model is idle (batches fill on their own under load)", float, d.max_delay_ms)
    a("--max-queue", "most prompts waiting for the model, at least --max-batch-size; beyond it calls get RESOURCE_EXHAUSTED (retry later), "
      "and a call with more prompts to score than this gets INVALID_ARGUMENT", int, d.max_queue)
    a("--cache-size", "score cache entries, about 330 bytes each (0 disables the cache); raise it for a ranker shared by many engines", int, d.cache_size)
    a("--intra-op-threads", "ONNX Runtime threads per model call (0: one per core)", int, d.intra_op_threads)
    a("--max-length", "prompt tokens the model reads, at most the bundle's max_length (0: the bundle's); fewer is faster "
      "at a small cost in accuracy (the default bundle reads 112)", int, d.max_length)
    a("--max-items", "most items per Score call and candidates per NextBatch call (at least 1)", int, d.limits.max_items)
    a("--max-prompt-bytes", "longest prompt accepted, in UTF-8 bytes (prompts are truncated to the model's max tokens)", int, d.limits.max_prompt_bytes)
    a("--max-message-bytes", "largest gRPC message, either way", int, d.limits.max_message_bytes)
    a("--starvation-threshold", "steps a candidate may wait unscheduled before it is promoted (0: never)", int, d.guard.threshold_steps)
    a("--starvation-overtakes", "later arrivals that may be admitted ahead of a waiting candidate before it is promoted: "
      "bounds its wait relative to first come first served at any load (0: never)", int, d.guard.max_overtakes)
    a("--starvation-quantum", "executed steps a promoted candidate stays in the top band (0 disables the guard)", int, d.guard.quantum_steps)
    a("--tls-cert", "PEM server certificate (enables TLS; needs --tls-key)", Path, d.tls_cert)
    a("--tls-key", "PEM private key of --tls-cert", Path, d.tls_key)
    a("--tls-client-ca", "PEM CA that must have signed client certificates (enables mTLS)", Path, d.tls_client_ca)
    a("--trusted-key", "PEM file of one or more Ed25519 public keys; the bundle must be signed by one of them "
      "(ranker.sig, see `ltr-sidecar sign`), else start-up fails naming the file (unset: signatures are not checked)", Path, d.trusted_key)
    a("--grace", "seconds in-flight calls may take to drain on SIGTERM", float, d.grace_s)
    a("--max-connection-age", "close client connections after this many seconds so round_robin clients re-resolve DNS and find new replicas (0 = never)", float, d.max_connection_age_s)
    a("--log-level", " or ".join([", ".join(LOG_LEVELS[:-1]), LOG_LEVELS[-1]]), str, d.log_level)
    a("--log-format", "json (one object per line) or text", str, d.log_format)
    a("--calibration", "on: learn each served model's answer lengths from Observe calls and calibrate Score calls that name "
      "the model (keeps derived features and lengths, never prompts; per replica; needs a bundle with a pooled embedding "
      "output or the onnx package); off: Observe keeps nothing", str, d.calibration)
    a("--state-dir", "directory where calibrations persist across restarts (atomic writes, sha256-verified); unset: "
      "in memory only. Used only with --calibration on", Path, d.state_dir)
    p.set_defaults(func=functools.partial(_serve, p))


def _serve(parser: _EnvDefaults, args: argparse.Namespace) -> int:
    from .bundle import BundleError
    from .logs import configure_logging
    from .server import serve

    try:
        config = server_config(args)
    except ConfigError as e:
        parser.error(f"{e}{parser.env_source(e.flag, e.value)}")
    configure_logging(config.log_level, config.log_format)
    try:
        asyncio.run(serve(config))
    except (BundleError, ValueError, OSError) as e:  # a bad bundle, an address nobody can listen on, ...
        log.error("cannot start: %s", e)
        return 2
    return 0


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig that `serve`'s parsed flags describe; raises ConfigError naming a flag."""
    return ServerConfig(
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
        guard=ordering.StarvationGuard(args.starvation_threshold, args.starvation_quantum, args.starvation_overtakes),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        trusted_key=args.trusted_key,
        grace_s=args.grace,
        max_connection_age_s=args.max_connection_age,
        log_level=args.log_level,
        log_format=args.log_format,
        calibration=args.calibration,
        state_dir=args.state_dir,
    )


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
    a("--sidecar", "gRPC address of the ltr-sidecar that scores prompts", str, DEFAULT_TARGET, env=TARGET_ENV)
    a("--engine", "how to express priority: vllm (lower first), sglang (higher first) or tensorrt-llm (float in [0, 1])", str, "vllm")
    a("--weight-ms", "virtual-deadline weight: how far (ms) a short request may overtake a long one; 0 = FCFS", float, 10_000.0)
    a("--window", "how many recent scores a new score is ranked against", int, 1024)
    a("--score-timeout-ms", "deadline for scoring one request; past it the request is forwarded unscored", float, 50.0)
    a("--log-level", "debug, info, warning or error", str, "info")

    def run(args: argparse.Namespace) -> int:
        _check_proxy_args(p, args)
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


def _check_proxy_args(parser: _EnvDefaults, args: argparse.Namespace) -> None:
    """Refuse a proxy setting that cannot work, in one line naming the flag (exit 2), before anything starts."""
    from ltr_client.priority import ENGINES

    def refuse(flag: str, value: object, problem: str) -> NoReturn:
        parser.error(f"{flag} {value}: {problem}{parser.env_source(flag, value)}")

    if not args.upstream:
        refuse("--upstream", "(unset)", "required: the OpenAI-compatible server to forward to, e.g. http://127.0.0.1:8000")
    if not str(args.upstream).startswith(("http://", "https://")):
        refuse("--upstream", args.upstream, "must be an http:// or https:// URL")
    if not 0 <= args.listen_port <= MAX_PORT:
        refuse("--listen-port", args.listen_port, f"must be between 0 and {MAX_PORT} (0 picks a free port)")
    if args.engine not in ENGINES:
        refuse("--engine", args.engine, f"must be one of {', '.join(ENGINES)}")
    if not 0 <= args.weight_ms < math.inf:
        refuse("--weight-ms", args.weight_ms, "must be a finite number >= 0")
    if args.window < 1:
        refuse("--window", args.window, "must be at least 1")
    if not 0 < args.score_timeout_ms < math.inf:
        refuse("--score-timeout-ms", args.score_timeout_ms, "must be a finite number > 0")
    if args.log_level not in LOG_LEVELS:
        refuse("--log-level", args.log_level, f"must be one of {', '.join(LOG_LEVELS)}")


def _add_health(sub: argparse._SubParsersAction) -> None:
    p: _EnvDefaults = sub.add_parser(
        "health",
        help="check a sidecar's grpc.health.v1 status (exit 0 if SERVING)",
        description="Ask a sidecar's standard gRPC health service; print the status and exit 0 if SERVING, 1 otherwise. "
        "Meant for container HEALTHCHECKs.",
    )
    a = p.add_env_argument
    a("--target", "the sidecar's gRPC address", str, DEFAULT_TARGET, env=TARGET_ENV)
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

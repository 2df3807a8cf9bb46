"""The server's settings, with their defaults. The CLI fills them from flags and LTR_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .bundle import DEFAULT_BUNDLE
from ltr_client.ordering import StarvationGuard


@dataclass(frozen=True)
class Limits:
    """What one call may carry. Larger requests get INVALID_ARGUMENT naming the field."""

    max_items: int = 8192  # items per Score call, candidates per NextBatch call
    max_prompt_bytes: int = 1 << 20  # longer prompts are refused; prompts are truncated to max_length tokens anyway
    max_message_bytes: int = 64 << 20  # gRPC receive/send limit


@dataclass(frozen=True)
class ServerConfig:
    model: Path = DEFAULT_BUNDLE
    providers: tuple[str, ...] = ()  # empty: TensorRT > CUDA > CPU, whichever exist
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9090  # 0 picks a free port; -1 disables /metrics
    max_batch_size: int = 32
    # 0: an idle server runs a lone prompt at once; under load batches fill
    # anyway while the previous batch runs, so waiting only adds latency.
    max_delay_ms: float = 0.0
    max_queue: int = 2048  # items waiting for the model; beyond it calls get RESOURCE_EXHAUSTED
    # Enough for every request an engine has in flight or waiting; each entry
    # costs about 330 bytes, so 16k stay under 6 MiB.
    cache_size: int = 16_384
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (all cores)
    max_length: int = 0  # prompt tokens the model reads; 0: the bundle's max_length
    limits: Limits = field(default_factory=Limits)
    guard: StarvationGuard = field(default_factory=StarvationGuard)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set for mTLS: clients must present a certificate it signed
    # PEM file of Ed25519 public keys: the bundle must carry a ranker.sig one of them made (bundle.load_bundle checks).
    trusted_key: Path | None = None
    grace_s: float = 10.0  # drain time for in-flight calls on SIGTERM
    # Clients re-resolve DNS only when a connection ends; closing connections
    # after this age lets round_robin clients find replicas added by scale-up.
    max_connection_age_s: float = 0.0  # 0 = never

    def __post_init__(self) -> None:
        if self.max_queue < self.max_batch_size:
            raise ValueError("max_queue must be at least max_batch_size")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("mTLS (a client CA) needs a server certificate and key too")

"""The server's settings: the one definition of each default and of what a valid value is.

The CLI takes its defaults from `ServerConfig()` and fills the fields from
flags and LTR_* variables; `ServerConfig` refuses what cannot work with a
`ConfigError` that names the flag, so `serve` can exit with one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import DEFAULT_BUNDLE
from ltr_client.ordering import StarvationGuard

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")
CALIBRATION_MODES = ("on", "off")
MAX_PORT = 65535
# gRPC takes message limits as a C int.
MAX_MESSAGE_BYTES = (1 << 31) - 1


class ConfigError(ValueError):
    """A setting that cannot work. The message names the flag and the value, e.g. `--port 99999: ...`."""

    def __init__(self, flag: str, value: object, problem: str):
        super().__init__(f"{flag} {value}: {problem}")
        self.flag = flag
        self.value = value


@dataclass(frozen=True)
class Limits:
    """What one call may carry. Larger requests get INVALID_ARGUMENT naming the field."""

    max_items: int = 8192  # items per Score call, candidates per NextBatch call
    max_prompt_bytes: int = 1 << 20  # longer prompts are refused; prompts are truncated to max_length tokens anyway
    max_message_bytes: int = 64 << 20  # gRPC receive/send limit

    def __post_init__(self) -> None:
        _at_least(1, max_items=self.max_items, max_prompt_bytes=self.max_prompt_bytes, max_message_bytes=self.max_message_bytes)
        if self.max_message_bytes > MAX_MESSAGE_BYTES:
            raise ConfigError("--max-message-bytes", self.max_message_bytes, f"must be at most {MAX_MESSAGE_BYTES}")


@dataclass(frozen=True)
class ServerConfig:
    model: Path = DEFAULT_BUNDLE
    providers: tuple[str, ...] = ()  # empty: TensorRT > CUDA > CPU, whichever exist
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9090  # 0 picks a free port; -1 disables /metrics
    max_batch_size: int = 32
    # 0: an idle server runs a lone prompt at once; under load batches fill
    # anyway while the previous batch runs, so waiting only adds latency.
    max_delay_ms: float = 0.0
    # Prompts waiting for the model; beyond it calls get RESOURCE_EXHAUSTED.
    # A call that needs more prompts scored than this could never fit and gets
    # INVALID_ARGUMENT instead, so RESOURCE_EXHAUSTED always means "retry".
    max_queue: int = 2048
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
    log_level: str = "info"
    log_format: str = "json"
    # Online calibration (Observe): off keeps nothing and computes nothing extra. Per replica.
    calibration: str = "off"
    # Where calibrations persist across restarts (None: in memory only).
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("--host", "''", "must not be empty")
        if not self.metrics_host:
            raise ConfigError("--metrics-host", "''", "must not be empty")
        if not 0 <= self.port <= MAX_PORT:
            raise ConfigError("--port", self.port, f"must be between 0 and {MAX_PORT} (0 picks a free port)")
        if not -1 <= self.metrics_port <= MAX_PORT:
            raise ConfigError("--metrics-port", self.metrics_port, f"must be between -1 and {MAX_PORT} (0 picks a free port, -1 disables /metrics)")
        _at_least(1, max_batch_size=self.max_batch_size, max_queue=self.max_queue)
        _at_least(
            0,
            cache_size=self.cache_size,
            intra_op_threads=self.intra_op_threads,
            max_length=self.max_length,
            starvation_threshold=self.guard.threshold_steps,
            starvation_quantum=self.guard.quantum_steps,
            starvation_overtakes=self.guard.max_overtakes,
        )
        for flag, seconds in (("--max-delay-ms", self.max_delay_ms), ("--grace", self.grace_s), ("--max-connection-age", self.max_connection_age_s)):
            if not 0 <= seconds < math.inf:
                raise ConfigError(flag, seconds, "must be a finite number >= 0")
        if self.max_queue < self.max_batch_size:
            raise ConfigError("--max-queue", self.max_queue, f"must be at least --max-batch-size ({self.max_batch_size})")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError("--log-level", self.log_level, f"must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError("--log-format", self.log_format, f"must be one of {', '.join(LOG_FORMATS)}")
        if self.tls_cert is not None and self.tls_key is None:
            raise ConfigError("--tls-key", "(unset)", "TLS needs a key with --tls-cert")
        if self.tls_key is not None and self.tls_cert is None:
            raise ConfigError("--tls-cert", "(unset)", "TLS needs a certificate with --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-cert", "(unset)", "mTLS (--tls-client-ca) needs a server certificate and key too")
        if self.calibration not in CALIBRATION_MODES:
            raise ConfigError("--calibration", self.calibration, f"must be one of {', '.join(CALIBRATION_MODES)}")
        if self.state_dir is not None and self.calibration == "on":
            from .online_calibration import check_state_dir

            try:
                check_state_dir(Path(self.state_dir))
            except OSError as e:
                raise ConfigError("--state-dir", self.state_dir, f"cannot write there: {e.strerror or e}") from e
        for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key), ("--tls-client-ca", self.tls_client_ca)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(flag, path, "no such file")


def _at_least(minimum: int, **values: int) -> None:
    """Refuse the first value below `minimum`, named by its flag (the field name with dashes)."""
    for name, value in values.items():
        if value < minimum:
            raise ConfigError("--" + name.replace("_", "-"), value, f"must be at least {minimum}")

"""The hook's settings: defaults, then environment variables, then vLLM's `additional_config["ltr"]`.

The plugin config wins over the environment because it is the more specific
of the two: one `vllm serve --additional-config '{"ltr": {...}}'` launch
versus a deployment-wide variable. Unknown keys and bad values fail at engine
start, not on the first request: a typo in a scheduling setting should be
loud, and the engine refuses to start before it has served anything.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .. import ordering
from ..client import DEFAULT_TARGET, TARGET_ENV

log = logging.getLogger(__name__)

# Field name -> environment variable.
ENV_VARS = {
    "target": TARGET_ENV,
    "deadline_ms": "LTR_DEADLINE_MS",
    "score_wait_ms": "LTR_SCORE_WAIT_MS",
    "score_retries": "LTR_SCORE_RETRIES",
    "starvation_threshold": "LTR_STARVATION_THRESHOLD",
    "starvation_quantum": "LTR_STARVATION_QUANTUM",
    "starvation_overtakes": "LTR_STARVATION_OVERTAKES",
    "max_batch": "LTR_MAX_BATCH",
    "max_prompt_tokens": "LTR_MAX_PROMPT_TOKENS",
    "breaker_failures": "LTR_BREAKER_FAILURES",
    "breaker_reset_s": "LTR_BREAKER_RESET_S",
    "enabled": "LTR_ENABLED",
    "preempt": "LTR_PREEMPT",
    "lb_policy": "LTR_LB_POLICY",
    "tls_ca": "LTR_TLS_CA",
    "tls_client_cert": "LTR_TLS_CLIENT_CERT",
    "tls_client_key": "LTR_TLS_CLIENT_KEY",
}
ADDITIONAL_CONFIG_KEY = "ltr"
# Old variable -> the one that replaced it: still read, with a warning, until the next release.
DEPRECATED_ENV_VARS = {"LTR_SIDECAR_TARGET": TARGET_ENV}


# A longer wait for scores would stall the engine rather than rank it.
MAX_SCORE_WAIT_MS = 60_000.0
# More retries would keep scoring requests long after the sidecar stopped helping.
MAX_SCORE_RETRIES = 10


@dataclass(frozen=True)
class LTRConfig:
    """Settings of the vLLM scheduler hook. See `clients/python/README.md` for each one."""

    # host:port of the sidecar (any gRPC target string).
    target: str = DEFAULT_TARGET
    # The deadline each Score call is sized to, never a scheduling step's:
    # steps wait for scores only as score_wait_ms allows. The hook sizes its
    # calls to it from the latency it measures (a busy CPU sidecar gets calls
    # of a few prompts, each answered in time), so a burst is scored in
    # several calls rather than lost in one that times out; a sidecar too
    # slow for one prompt in it gets one-prompt calls with the time they need
    # (at most 10x this, scorer.CallSizer).
    deadline_ms: float = 200.0
    # A Score call that fails or times out is tried again, with backoff, at
    # most this many times, for the requests that still wait (0: never).
    score_retries: int = 3
    # How long a step may wait for scores still in flight when it has to
    # choose: free slots, more waiting requests than free slots, and prompts
    # submitted since the last such wait. Without it, a burst's first batch
    # (up to max_num_seqs requests) is admitted before any score exists, first
    # come first served, and a long request admitted then holds its slot to
    # the end. Each burst of arrivals costs at most one wait, and an open
    # circuit breaker skips it. 0 (the default): steps never wait for scores.
    # With a sidecar that scores a burst in a few milliseconds (a GPU one),
    # about twice its Score p99 buys the ranked first batch for that much
    # inter-token latency once per burst.
    score_wait_ms: float = 0.0
    # The starvation guard (ordering.StarvationGuard): promote a waiting
    # request after this many idle engine steps (0: never), or once this many
    # later arrivals have been admitted ahead of it (0: never), for this many
    # executed steps (0 disables the guard).
    starvation_threshold: int = ordering.DEFAULT_THRESHOLD_STEPS
    starvation_quantum: int = ordering.DEFAULT_QUANTUM_STEPS
    starvation_overtakes: int = ordering.DEFAULT_MAX_OVERTAKES
    # Most prompts in one Score call.
    max_batch: int = 64
    # Prompts are cut to this many of the *engine's* tokens (the first and
    # last halves) before decoding to text: a ranker reads a few hundred
    # tokens from a prompt's ends at most, and decoding a 100k-token prompt
    # would only burn CPU.
    max_prompt_tokens: int = 2048
    # Circuit breaker: open after this many consecutive failures, retry after this long.
    breaker_failures: int = 3
    breaker_reset_s: float = 5.0
    # False: plain FCFS, no sidecar calls (an off switch that needs no relaunch flags).
    enabled: bool = True
    # Preempt the worst-ranked running request when the batch is full and a
    # better-ranked request waits (the paper's Algorithm 1). Off by default:
    # measured on vLLM (benchmarks/README.md) it recomputes more than it
    # gains, except for time to first token. Off is vLLM's own rule: a
    # running request keeps its slot until it finishes.
    preempt: bool = False
    # gRPC load balancing over the addresses the target resolves to. With one
    # address it behaves like pick_first; with a headless Service
    # (dns:///ltr-sidecar...:50051) it spreads calls over every ready replica.
    lb_policy: str = "round_robin"
    # TLS: a PEM CA file to verify the sidecar (empty: plaintext), and for
    # mTLS a PEM client certificate and key.
    tls_ca: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("ltr: target must not be empty")
        # Finite bounds: a NaN slips past comparisons, and an infinite timeout
        # raises OverflowError inside the engine's schedule() call.
        if not (0 < self.deadline_ms < math.inf and 0 < self.breaker_reset_s < math.inf):
            raise ValueError("ltr: deadline_ms and breaker_reset_s must be positive and finite")
        if not 0 <= self.score_wait_ms <= MAX_SCORE_WAIT_MS:
            raise ValueError(f"ltr: score_wait_ms must be between 0 and {MAX_SCORE_WAIT_MS:g} (a wait holds up every running request)")
        if min(self.starvation_threshold, self.starvation_quantum, self.starvation_overtakes) < 0:
            raise ValueError("ltr: starvation_threshold, starvation_quantum and starvation_overtakes must be >= 0")
        if not 0 <= self.score_retries <= MAX_SCORE_RETRIES:
            raise ValueError(f"ltr: score_retries must be between 0 and {MAX_SCORE_RETRIES}")
        if self.max_batch < 1 or self.max_prompt_tokens < 1 or self.breaker_failures < 1:
            raise ValueError("ltr: max_batch, max_prompt_tokens and breaker_failures must be >= 1")
        if bool(self.tls_client_cert) != bool(self.tls_client_key):
            raise ValueError("ltr: tls_client_cert and tls_client_key go together")
        if self.tls_client_cert and not self.tls_ca:
            raise ValueError("ltr: a client certificate (mTLS) needs tls_ca")

    @property
    def guard(self) -> ordering.StarvationGuard:
        return ordering.StarvationGuard(self.starvation_threshold, self.starvation_quantum, self.starvation_overtakes)

    @classmethod
    def load(cls, additional_config: object = None, environ: Mapping[str, str] | None = None) -> LTRConfig:
        """Defaults, overridden by `environ` (os.environ by default), overridden by `additional_config["ltr"]`."""
        environ = os.environ if environ is None else environ
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for old, new in DEPRECATED_ENV_VARS.items():
            if old in environ:
                log.warning("ltr: %s is deprecated and will be removed in the next release; set %s instead%s", old, new,
                            f" (ignoring {old}: {new} is set)" if new in environ else "")
        for name, var in ENV_VARS.items():
            old = next((o for o, n in DEPRECATED_ENV_VARS.items() if n == var and o in environ), None)
            if var in environ or old is not None:
                source = var if var in environ else str(old)
                values[name] = _parse(name, types[name], environ[source], source=source)
        plugin = _plugin_section(additional_config)
        unknown = set(plugin) - set(types)
        if unknown:
            raise ValueError(f"ltr: unknown additional_config keys {sorted(unknown)}; known: {sorted(types)}")
        for name, value in plugin.items():
            values[name] = _parse(name, types[name], value, source=f'additional_config["ltr"]["{name}"]')
        return cls(**values)


def _plugin_section(additional_config: object) -> Mapping[str, Any]:
    # vLLM allows a dict or an object with compute_hash(); only dicts can carry our section.
    if not isinstance(additional_config, Mapping):
        return {}
    section = additional_config.get(ADDITIONAL_CONFIG_KEY) or {}
    if not isinstance(section, Mapping):
        raise ValueError('ltr: additional_config["ltr"] must be a mapping')
    return section


def _parse(name: str, type_name: object, raw: object, source: str) -> Any:
    # Field types are strings here (from __future__ annotations).
    try:
        if type_name == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_name == "int":
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)  # type: ignore[call-overload]
        if type_name == "float":
            return float(raw)  # type: ignore[arg-type]
        return str(raw)
    except (TypeError, ValueError):
        raise ValueError(f"ltr: bad value {raw!r} for {name} (from {source})") from None

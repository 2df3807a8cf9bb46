"""The scheduling policies compared: stock FCFS, the LTR hook in its settings, the oracle and the bucket baseline."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .trace import TraceRequest

POLICIES = ("fcfs", "ltr", "ltr-noguard", "ltr-preempt", "ltr-fair", "ltr-instant", "oracle", "bucket")
# ltr-instant's score_wait_ms: long enough for any batch of this CPU sidecar,
# and the most the hook accepts (ltr_client.vllm.config.MAX_SCORE_WAIT_MS).
INSTANT_SCORE_WAIT_MS = 60_000.0


@dataclass(frozen=True)
class Policy:
    name: str
    scheduler_cls: str | None  # None: vLLM's own
    scheduling_policy: str  # vLLM's: "fcfs" or "priority"
    ltr: dict[str, Any] | None = None  # the hook's additional_config["ltr"]
    priority: Callable[[TraceRequest], int] | None = None
    # The step clock counts the hook's waits for scores (score_wait_ms) as
    # time, unless the policy models a sidecar that scores within a step.
    free_score_waits: bool = False


def make_policies(args: argparse.Namespace, target: str, bucket_priority: Callable[[TraceRequest], int] | None) -> dict[str, Policy]:
    hook: dict[str, Any] = {"target": target, "score_wait_ms": args.ltr_score_wait_ms}
    # Unset flags leave the hook's own defaults.
    hook.update({k: v for k, v in (("deadline_ms", args.ltr_deadline_ms), ("max_batch", args.ltr_max_batch)) if v is not None})
    policies = {
        "fcfs": Policy("fcfs", None, "fcfs"),
        # Guard settings left out: the hook's defaults (or LTR_STARVATION_* from the environment) apply.
        "ltr": Policy("ltr", "ltr_client.vllm.LTRScheduler", "fcfs", hook),
        "ltr-noguard": Policy(
            "ltr-noguard", "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, "starvation_threshold": 0, "starvation_overtakes": 0}
        ),
        "ltr-preempt": Policy("ltr-preempt", "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, "preempt": True}),
        "ltr-fair": Policy("ltr-fair", "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, "starvation_overtakes": 2 * args.max_num_seqs}),
        "ltr-instant": Policy(
            "ltr-instant", "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, "score_wait_ms": INSTANT_SCORE_WAIT_MS}, free_score_waits=True
        ),
        "oracle": Policy("oracle", None, "priority", priority=lambda r: r.max_tokens),
    }
    if bucket_priority is not None:
        policies["bucket"] = Policy("bucket", None, "priority", priority=bucket_priority)
    for guard in args.guard_sweep:
        name = guard_policy_name(guard)
        threshold, quantum, overtakes = guard
        settings = {"starvation_threshold": threshold, "starvation_quantum": quantum, "starvation_overtakes": overtakes}
        policies[name] = Policy(name, "ltr_client.vllm.LTRScheduler", "fcfs", {**hook, **settings})
    return policies


def guard_policy_name(guard: tuple[int, int, int]) -> str:
    threshold, quantum, overtakes = guard
    return f"ltr-guard-{threshold}-{quantum}" + (f"-{overtakes}" if overtakes else "")

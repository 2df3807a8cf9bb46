"""vLLM scheduler hook: serve the shortest predicted requests first.

    vllm serve MODEL --scheduler-cls ltr_client.vllm.LTRScheduler

Modules, one job each:

- `config`: settings from env vars and `additional_config["ltr"]`;
- `scorer`: the background thread that gets scores from the sidecar;
- `tokenizer`: the engine's tokenizer, to turn prompt token ids back into text;
- `ranking`: the adapter to the shared policy (`ltr_client.ordering`): per-request
  rank state, a candidate table from the engine's lists, the decision applied back;
- `request_queue`: vLLM's FCFS queue, for `waiting` and `kv_holding_waiting`, re-ranked when it can have changed;
- `scheduler`: the Scheduler / AsyncScheduler subclasses that tie them together.

Supported: vLLM 0.32 and 0.33 (see clients/python/README.md). The scheduler classes are
imported lazily, so `config`, `scorer` and `ranking` load without vLLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import LTRConfig

if TYPE_CHECKING:
    from .request_queue import LTRRequestQueue
    from .scheduler import LTRAsyncScheduler, LTRScheduler

__all__ = ["LTRAsyncScheduler", "LTRConfig", "LTRRequestQueue", "LTRScheduler"]


def __getattr__(name: str) -> Any:
    # vLLM resolves "ltr_client.vllm.LTRScheduler" by import + getattr, which lands here.
    if name in ("LTRScheduler", "LTRAsyncScheduler"):
        from . import scheduler

        return getattr(scheduler, name)
    if name == "LTRRequestQueue":
        from .request_queue import LTRRequestQueue

        return LTRRequestQueue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Collect traces from your own model: prompts in, {prompt, output_tokens} JSONL out.

Sends each prompt to an OpenAI-compatible endpoint (vLLM, SGLang, TGI, ...)
with bounded concurrency and records the output token count that the server
reports in ``usage.completion_tokens``: the length in your model's own
tokenizer, which is the label a ranker for that model should learn.

Failed requests are counted and reported, never written.  Rows go to
``<out>.partial`` as answers arrive and the file is renamed to ``out`` when
the run ends with at least one answer, so ``out`` is never empty or half
written; an interrupted run leaves its rows in ``<out>.partial``.  Prompts
and answers go to the output file only, never to the logs.  Needs aiohttp
(the ``proxy`` extra).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SHAREGPT, TrainConfig
from .dataset import load_source, split_source
from .traces import read_traces

log = logging.getLogger(__name__)


class CollectError(Exception):
    """The run cannot produce a trace: the endpoint is unreachable or answered nothing usable. No file is left."""

    exit_code = 1


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _check_endpoint(endpoint: str) -> str:
    """The endpoint without a trailing slash; CollectError (exit 2) unless it is an http(s) URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        error = CollectError(f"--endpoint {endpoint!r}: must be an http:// or https:// URL, e.g. http://127.0.0.1:8000")
        error.exit_code = 2
        raise error
    return endpoint.rstrip("/")


async def _reachable(http: Any, endpoint: str, timeout_s: float) -> None:
    """Fail fast, naming the URL, when nothing answers at `endpoint` (any HTTP answer will do: only the connection is tested)."""
    import aiohttp

    try:
        async with http.get("/v1/models", timeout=aiohttp.ClientTimeout(total=timeout_s)):
            pass
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise CollectError(f"cannot reach --endpoint {endpoint}: {e or type(e).__name__}; nothing written") from e


@dataclass
class CollectReport:
    prompts: int = 0
    written: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "written": self.written, "failed": dict(self.failed), "seconds": round(self.seconds, 1)}


def read_prompts(source: str, split: str = "test", seed: int = 0, limit: int = 0) -> list[str]:
    """Prompts from ``sharegpt`` (a split of it) or a JSONL file of rows with a "prompt" field."""
    if source == SHAREGPT:
        default = TrainConfig()  # the split training makes with this seed
        parts = split_source(load_source(SHAREGPT), seed, default.val_fraction, default.test_fraction)
        rows = {"train": parts.train, "val": parts.val, "test": parts.test}[split]
        prompts = [e.prompt for e in rows]
    else:
        prompts = []
        path = Path(source)
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError:
                    log.warning("%s line %d: not JSON, skipped", path, line_no)
                    continue
                prompt = row.get("prompt") if isinstance(row, dict) else None
                if not isinstance(prompt, str) or not prompt.strip():
                    log.warning("%s line %d: no non-empty string 'prompt', skipped", path, line_no)
                    continue
                prompts.append(prompt)
    return prompts[:limit] if limit else prompts


def _request(api: str, model: str, prompt: str, max_tokens: int, temperature: float) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature}
    if api == "chat":
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**body, "prompt": prompt}


def _answer_text(api: str, reply: dict[str, Any]) -> str:
    choice = (reply.get("choices") or [{}])[0]
    if api == "chat":
        return str((choice.get("message") or {}).get("content") or "")
    return str(choice.get("text") or "")


async def collect(
    endpoint: str,
    model: str,
    prompts: Sequence[str],
    out: str | Path,
    concurrency: int = 8,
    max_tokens: int = 2048,
    temperature: float = 0.0,
    api: str = "chat",
    timeout_s: float = 600.0,
    api_key: str | None = None,
    keep_text: bool = True,
    progress: bool = True,
) -> CollectReport:
    """Send every prompt, at most `concurrency` at a time; write one JSONL row per answered prompt.

    Rows are written to ``<out>.partial`` as answers arrive (so an interrupted
    run keeps what it got there), each with its prompt index for order, and
    the file becomes `out` at the end.  Raises CollectError, leaving no file,
    when the endpoint cannot be reached or no prompt got a usable answer.
    """
    import aiohttp
    from tqdm import tqdm

    endpoint = _check_endpoint(endpoint)
    report = CollectReport(prompts=len(prompts))
    out, partial = Path(out), partial_path(out)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limit = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(endpoint, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        await _reachable(http, endpoint, min(timeout_s, 10.0))
        bar = tqdm(total=len(prompts), desc="collect", unit=" prompt", disable=not progress)
        sink = open(partial, "w", encoding="utf-8")  # noqa: ASYNC230,SIM115 (one short line per answer; the network is the wait)
        try:

            async def one(index: int, prompt: str) -> None:
                path, body = _request(api, model, prompt, max_tokens, temperature)
                async with limit:
                    try:
                        async with http.post(path, json=body) as response:
                            if response.status != 200:
                                report.failed[f"HTTP {response.status}"] += 1
                                return
                            reply = await response.json()
                    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
                        report.failed[type(e).__name__] += 1
                        return
                    finally:
                        bar.update(1)
                tokens = (reply.get("usage") or {}).get("completion_tokens")
                if not isinstance(tokens, int) or isinstance(tokens, bool):
                    report.failed["no usage.completion_tokens"] += 1
                    return
                choice = (reply.get("choices") or [{}])[0]
                row: dict[str, Any] = {"id": f"collect-{index}", "prompt": prompt, "output_tokens": tokens,
                                       "finish_reason": choice.get("finish_reason"), "model": reply.get("model", model)}
                if keep_text:
                    row["generated"] = _answer_text(api, reply)
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                report.written += 1

            await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        finally:
            sink.close()
            bar.close()
            if not report.written:
                partial.unlink(missing_ok=True)
            elif report.written + sum(report.failed.values()) < len(prompts):  # interrupted
                log.warning("collect: interrupted; %d answered prompts kept in %s", report.written, partial)
    report.seconds = time.perf_counter() - t0
    if report.failed:
        log.warning("collect: %d of %d prompts failed: %s", sum(report.failed.values()), len(prompts), dict(report.failed))
    if not report.written:
        raise CollectError(f"no usable answer from {endpoint} for any of {len(prompts)} prompts "
                           f"({dict(report.failed)}); nothing written")
    partial.replace(out)
    # Re-read what was written: the same checks training applies.
    _, check = read_traces(out)
    if check.bad_rows:
        log.warning("collect: wrote bad rows: %s", check.summary())
    return report


def api_key_from_env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None

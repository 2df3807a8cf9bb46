"""An OpenAI-compatible proxy that sets each request's `priority` (`ltr-sidecar proxy`).

For engines without a custom scheduler (vLLM with `--scheduling-policy
priority`, SGLang with `--enable-priority-scheduling`). For every
/v1/chat/completions and /v1/completions POST it scores the prompt with the
sidecar, turns the score into a virtual-deadline priority
(`ltr_client.priority`), sets `priority` in the JSON body and forwards it.
Responses, streamed ones included, are relayed chunk by chunk. Everything
else passes through untouched.

The proxy never holds a request back for the ranker: scoring has a short
deadline, and a failed or slow score gives the request the neutral rank, so
unscored requests keep arrival order (FCFS) instead of jumping the queue.
A `priority` the client set itself is kept.

Client code, so it lives in ltr_client and needs only the client and aiohttp
(the `proxy` extra); `ltr-sidecar proxy` imports it when that subcommand runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import uuid
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from .client import AsyncRankerClient, ScoreItem
from .priority import VirtualDeadline

log = logging.getLogger(__name__)

SCORED_PATHS = ("/v1/chat/completions", "/v1/completions")
# Connection-level headers describe one hop, not the message: never relay them.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


def prompt_text(path: str, body: dict[str, Any]) -> str | None:
    """The text the ranker should see: the last user message for chat, the prompt for completions."""
    if path.endswith("/chat/completions"):
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):  # multi-part content: keep the text parts
                    content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
                return content if isinstance(content, str) and content else None
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, list):  # a batch of prompts shares one priority: rank by the first
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else None
    return prompt if isinstance(prompt, str) and prompt else None


class PriorityProxy:
    def __init__(self, upstream: str, ranker: AsyncRankerClient, deadlines: VirtualDeadline, engine: str = "vllm"):
        self.upstream = upstream.rstrip("/")
        self.ranker = ranker
        self.deadlines = deadlines
        self.engine = engine
        self.session: ClientSession | None = None

    async def start(self, app: web.Application) -> None:
        # auto_decompress=False: bytes pass through exactly as the upstream sent them.
        self.session = ClientSession(
            auto_decompress=False, timeout=ClientTimeout(total=None, sock_connect=10), connector=TCPConnector(limit=0)
        )

    async def stop(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()
        await self.ranker.close()

    async def prioritize(self, path: str, raw: bytes) -> tuple[bytes, int | float | None, bool]:
        """The body with `priority` set, the priority, and whether the ranker answered."""
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return raw, None, False  # not ours to judge: the upstream answers with its own error
        if not isinstance(body, dict) or "priority" in body:
            return raw, body.get("priority") if isinstance(body, dict) else None, False
        text = prompt_text(path, body)
        score = None
        if text is not None:
            result = await self.ranker.score([ScoreItem(str(uuid.uuid4()), text)])
            score = next(iter(result.scores.values()), None)
        body["priority"] = self.deadlines.priority(score, self.engine)
        return json.dumps(body).encode(), body["priority"], score is not None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        raw = await request.read()
        priority, scored = None, False
        if request.method == "POST" and request.path in SCORED_PATHS:
            raw, priority, scored = await self.prioritize(request.path, raw)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            upstream = await self.session.request(request.method, self.upstream + request.path_qs, headers=headers, data=raw)
        except ClientError as e:
            log.warning("upstream unreachable", extra={"path": request.path, "error": type(e).__name__})
            return web.json_response({"error": {"message": "upstream unreachable", "type": "bad_gateway"}}, status=502)
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    response.headers[k] = v
            if priority is not None:
                response.headers["x-ltr-priority"] = str(priority)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        log.debug("proxied", extra={"path": request.path, "status": upstream.status, "priority": priority, "scored": scored})
        return response


def build_app(upstream: str, sidecar: str, engine: str = "vllm", weight_ms: float = 10_000, window: int = 1024, score_timeout_s: float = 0.05) -> web.Application:
    # The breaker keeps a dead sidecar from costing even the short deadline on every request.
    proxy = PriorityProxy(upstream, AsyncRankerClient(sidecar, timeout_s=score_timeout_s, max_attempts=1), VirtualDeadline(weight_ms, window), engine)
    app = web.Application(client_max_size=64 << 20)
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.stop)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


def main(args: argparse.Namespace) -> int:
    """Run the proxy until SIGTERM or SIGINT; the caller has configured logging."""
    # `ltr-sidecar proxy` has checked every flag; only the address can still fail.
    async def run() -> int:
        app = build_app(args.upstream, args.sidecar, args.engine, args.weight_ms, args.window, args.score_timeout_ms / 1e3)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, args.listen_host, args.listen_port)
        try:
            await site.start()
        except OSError as e:  # a taken port, an address this machine does not have
            await runner.cleanup()
            log.error(f"cannot listen on {args.listen_host}:{args.listen_port}: {e.strerror or e}")
            return 2
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("proxying", extra={"address": f"{args.listen_host}:{port}", "upstream": args.upstream, "engine": args.engine})
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await runner.cleanup()
        return 0

    return asyncio.run(run())

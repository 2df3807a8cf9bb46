"""The priority proxy in front of a real HTTP upstream, with a real sidecar scoring prompts."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import ClientSession, web

from ltr_client.priority import VirtualDeadline
from ltr_client.proxy import build_app, prompt_text


class Upstream:
    """A small OpenAI-style server that records what it receives; `stream` answers in SSE chunks."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        self.app = app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if not body.get("stream"):
            return web.json_response({"id": "x", "choices": [{"text": "ok"}], "echo_priority": body.get("priority")})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"data: {json.dumps({'chunk': i})}\n\n".encode())
            await asyncio.sleep(0.05)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "tiny"}]})


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def run_with_proxy(sidecar_target: str, scenario, engine: str = "vllm"):
    async def main():
        upstream = Upstream()
        up_runner, up_port = await serve(upstream.app)
        proxy_runner, proxy_port = await serve(build_app(f"http://127.0.0.1:{up_port}", sidecar_target, engine=engine, score_timeout_s=2.0))
        try:
            async with ClientSession(base_url=f"http://127.0.0.1:{proxy_port}") as session:
                return await scenario(session, upstream)
        finally:
            await proxy_runner.cleanup()
            await up_runner.cleanup()

    return asyncio.run(main())


def chat(text: str, **kw) -> dict:
    return {"model": "tiny", "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": text}], **kw}


def test_shorter_predicted_requests_get_earlier_virtual_deadlines(sidecar):
    async def scenario(session, upstream):
        for text in ["warm up the window", "what is two plus two", "tell me a story"]:
            await session.post("/v1/chat/completions", json=chat(text))
        essay = await (await session.post("/v1/chat/completions", json=chat("essay essay essay"))).json()
        brief = await (await session.post("/v1/completions", json={"model": "tiny", "prompt": "brief brief brief"})).json()
        return essay, brief, upstream.bodies

    essay, brief, bodies = run_with_proxy(sidecar.target, scenario)
    assert all(isinstance(b["priority"], int) for b in bodies)
    # The brief request arrived later but its deadline is earlier: it runs first under vLLM's priority policy.
    assert brief["echo_priority"] < essay["echo_priority"]


def test_streamed_responses_are_relayed_chunk_by_chunk(sidecar):
    async def scenario(session, upstream):
        resp = await session.post("/v1/chat/completions", json=chat("brief", stream=True))
        chunks = []
        async for chunk in resp.content.iter_any():
            chunks.append(chunk)
        return resp.headers, b"".join(chunks), len(chunks)

    headers, data, n = run_with_proxy(sidecar.target, scenario)
    assert headers["Content-Type"].startswith("text/event-stream")
    assert "x-ltr-priority" in headers
    assert data.count(b"data: ") == 4 and data.endswith(b"data: [DONE]\n\n")
    assert n >= 2, "the stream should arrive in pieces, not buffered whole"


def test_other_paths_and_client_set_priorities_pass_through_untouched(sidecar):
    async def scenario(session, upstream):
        models = await (await session.get("/v1/models")).json()
        kept = await (await session.post("/v1/chat/completions", json=chat("essay", priority=-7))).json()
        return models, kept

    models, kept = run_with_proxy(sidecar.target, scenario)
    assert models == {"data": [{"id": "tiny"}]}
    assert kept["echo_priority"] == -7


def test_with_the_sidecar_down_requests_are_forwarded_with_the_neutral_rank_in_arrival_order():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"

    async def scenario(session, upstream):
        for text in ["essay essay", "brief brief", "essay again"]:
            resp = await session.post("/v1/chat/completions", json=chat(text))
            assert resp.status == 200
            await asyncio.sleep(0.01)
        return [b["priority"] for b in upstream.bodies]

    priorities = run_with_proxy(dead, scenario)
    assert priorities == sorted(priorities), "unscored requests must keep arrival order (FCFS)"


def test_sglang_priorities_are_negated_deadlines(sidecar):
    async def scenario(session, upstream):
        await session.post("/v1/chat/completions", json=chat("hello"))
        return upstream.bodies[0]["priority"]

    assert run_with_proxy(sidecar.target, scenario, engine="sglang") < 0


def test_prompt_text_takes_the_last_user_message_or_the_completion_prompt():
    assert prompt_text("/v1/chat/completions", chat("hi")) == "hi"
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}]}
    assert prompt_text("/v1/chat/completions", parts) == "a"
    assert prompt_text("/v1/completions", {"prompt": ["x", "y"]}) == "x"
    assert prompt_text("/v1/completions", {"prompt": [1, 2]}) is None


def test_virtual_deadline_bounds_how_far_a_short_request_overtakes():
    now = [1000.0]
    vd = VirtualDeadline(weight_ms=5000, clock=lambda: now[0])
    for s in [0.0, 1.0, 2.0, 3.0]:
        vd.relative_rank(s)
    long_first = vd.deadline_ms(-10.0)  # predicted longest: rank 1.0
    now[0] += 4.0
    short_4s_later = vd.deadline_ms(10.0)  # predicted shortest: rank 0.0
    now[0] += 2.0
    short_6s_later = vd.deadline_ms(10.0)
    assert short_4s_later < long_first < short_6s_later


@pytest.mark.parametrize("engine", ["nope"])
def test_unknown_engines_are_refused(engine):
    with pytest.raises(ValueError, match="engine"):
        VirtualDeadline().priority(1.0, engine)

"""`ltr-sidecar collect` against a real OpenAI-compatible HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from aiohttp import web
from ltr_sidecar.cli import main
from ltr_sidecar.training.traces import read_traces


class FakeModelServer:
    """Answers /v1/chat/completions with 3 tokens per prompt word; a prompt containing 'fail' gets HTTP 500."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            if "fail" in prompt:
                return web.Response(status=500, text="boom")
            n = 3 * len(prompt.split())
            return web.json_response({
                "model": body["model"],
                "choices": [{"message": {"role": "assistant", "content": "word " * n}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
            })
        finally:
            self.in_flight -= 1


@pytest.fixture
def model_server():
    server = FakeModelServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)  # its thread would log to a stream pytest has closed
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_collect_records_usage_token_counts_with_bounded_concurrency_and_reports_failures(model_server, tmp_path: Path, capsys):
    server, url = model_server
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": " ".join(["w"] * (i + 1))} for i in range(12)] + [{"prompt": "please fail"}, {"nope": 1}]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "traces.jsonl"
    code = main(["collect", "--endpoint", url, "--model", "m", "--prompts", str(prompts), "--out", str(out),
                 "--concurrency", "3", "--no-progress"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["prompts"] == 13 and report["written"] == 12 and report["failed"] == {"HTTP 500": 1}
    assert 1 < server.max_in_flight <= 3
    examples, check = read_traces(out)
    assert check.bad_rows == 0
    assert not (tmp_path / "traces.jsonl.partial").exists()
    assert sorted(e.output_tokens for e in examples) == [3 * (i + 1) for i in range(12)]


def _dead_port() -> int:
    """A loopback port with nothing listening: bound once to learn a free number, then closed."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_collect_against_a_dead_endpoint_names_the_url_exits_nonzero_and_leaves_no_file(tmp_path: Path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n{"prompt": "world"}\n')
    out = tmp_path / "traces.jsonl"
    url = f"http://127.0.0.1:{_dead_port()}"
    code = main(["collect", "--endpoint", url, "--model", "m", "--prompts", str(prompts), "--out", str(out), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot reach --endpoint {url}" in err
    assert list(tmp_path.iterdir()) == [prompts]  # neither traces.jsonl nor traces.jsonl.partial


def test_collect_with_no_usable_answer_names_the_url_and_leaves_no_file(model_server, tmp_path: Path, capsys):
    _, url = model_server
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "please fail"}\n{"prompt": "fail again"}\n')
    out = tmp_path / "traces.jsonl"
    code = main(["collect", "--endpoint", url, "--model", "m", "--prompts", str(prompts), "--out", str(out), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"no usable answer from {url} for any of 2 prompts" in err and "HTTP 500" in err
    assert list(tmp_path.iterdir()) == [prompts]


@pytest.mark.parametrize("endpoint", ["127.0.0.1:8000", "ftp://host", "http://"])
def test_collect_refuses_an_endpoint_that_is_not_an_http_url_naming_the_flag(endpoint, tmp_path: Path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    code = main(["collect", "--endpoint", endpoint, "--model", "m", "--prompts", str(prompts), "--out", str(tmp_path / "t.jsonl"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"--endpoint {endpoint!r}" in err
    assert list(tmp_path.iterdir()) == [prompts]


def test_collect_refuses_a_missing_prompts_file_naming_the_flag(tmp_path: Path, capsys):
    missing = tmp_path / "nope.jsonl"
    code = main(["collect", "--endpoint", "http://127.0.0.1:1", "--model", "m", "--prompts", str(missing), "--out",
                 str(tmp_path / "t.jsonl"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"--prompts {missing}" in err

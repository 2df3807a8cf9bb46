"""Shared fixtures: a tiny bundle built in the test run, and a real sidecar on loopback (in this process or its own)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from ltr_client.api import ranker_pb2_grpc as pbg
from ltr_sidecar.config import ServerConfig
from ltr_sidecar.server import SidecarServer
from tools.tiny_bundle import build_tiny_bundle
from tools.sidecar_process import SidecarProcess

# Words whose effect on the tiny model's score is known: "brief" prompts rank
# first (shortest predicted output), "essay" prompts last.
WORD_BIAS = {"brief": 5.0, "essay": -5.0}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", word_bias=WORD_BIAS)


class RunningSidecar:
    """A SidecarServer on its own event loop in a background thread, so tests can use plain blocking clients."""

    def __init__(self, config: ServerConfig):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: SidecarServer = self.call(SidecarServer.start(config))
        self.target = f"127.0.0.1:{self.server.port}"

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stub(self) -> pbg.RankerServiceStub:
        return pbg.RankerServiceStub(self.channel())

    def stop(self, grace: float = 0.5) -> None:
        if not self.thread.is_alive():
            return
        self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def start_sidecar(tiny_bundle: Path) -> Iterator:
    """Start sidecars with config overrides; every one is stopped after the test."""
    running: list[RunningSidecar] = []

    def start(**overrides) -> RunningSidecar:
        config = dataclasses.replace(ServerConfig(model=tiny_bundle, port=0, metrics_port=0), **overrides)
        sidecar = RunningSidecar(config)
        running.append(sidecar)
        return sidecar

    yield start
    for sidecar in running:
        sidecar.stop()


@pytest.fixture
def sidecar(start_sidecar) -> RunningSidecar:
    return start_sidecar()


@pytest.fixture
def sidecar_process() -> Iterator[Callable[..., SidecarProcess]]:
    """Start `ltr-sidecar serve` processes (arguments as for SidecarProcess); every one still running is stopped after the test."""
    started: list[SidecarProcess] = []

    def start(*args: str, **kw: object) -> SidecarProcess:
        started.append(SidecarProcess(*args, **kw))  # type: ignore[arg-type]
        return started[-1]

    yield start
    for process in started:
        process.stop()

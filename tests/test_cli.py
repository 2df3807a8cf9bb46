"""`ltr-sidecar serve` as a process: start-up checks, environment config, SIGTERM, and what it logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ltr_client.api import ranker_pb2 as pb
from ltr_client.api import ranker_pb2_grpc as pbg
from ltr_sidecar.cli import build_parser

SECRET = "zanzibar-quokka-7731"  # appears in prompts only; must never reach the logs


class ServeProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ltr_sidecar", "serve", *args],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int | None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                return None  # exited
            self.lines.append(line)
            entry = json.loads(line)
            if entry["msg"] == "serving":
                return int(entry["address"].rsplit(":", 1)[1])
        raise TimeoutError("server did not start")

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        rest = self.proc.communicate(timeout=timeout)[1]
        return self.proc.returncode, "".join(self.lines) + rest


def test_serve_refuses_to_start_on_a_corrupted_model_and_names_the_file(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:-10] + b"x" * 10)
    server = ServeProcess("--model", str(bundle), "--port", "0", "--metrics-port", "-1")
    code, logs = server.finish()
    assert server.port is None and code == 2
    assert "model.onnx: sha256 mismatch" in logs


def test_sigterm_sets_health_not_serving_drains_and_exits_cleanly_without_logging_prompts(tiny_bundle):
    server = ServeProcess(
        "--model", str(tiny_bundle), "--port", "0", "--metrics-port", "-1", "--log-level", "debug", "--grace", "5"
    )
    target = f"127.0.0.1:{server.port}"
    with grpc.insecure_channel(target) as ch:
        stub = pbg.RankerServiceStub(ch)
        items = [pb.ScoreItem(request_id=f"{SECRET}-{i}", prompt=f"{SECRET} brief question {i}") for i in range(20)]
        assert len(stub.Score(pb.ScoreRequest(items=items), timeout=10).scores) == 20
        stub.NextBatch(
            pb.NextBatchRequest(
                candidates=[pb.Candidate(request_id="x", prompt=SECRET)], budget=pb.Budget(max_num_seqs=1, max_num_batched_tokens=8)
            ),
            timeout=10,
        )
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="ltr.v1.RankerService"), timeout=20)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    code, logs = server.finish()
    assert code == 0
    entries = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert [e["msg"] for e in entries if e["msg"] in ("serving", "shutting down", "stopped")] == ["serving", "shutting down", "stopped"]
    assert any(e.get("method") == "Score" for e in entries), "debug logs should record the RPCs"
    assert SECRET not in logs


def test_health_command_exits_zero_for_a_serving_sidecar_and_one_otherwise(sidecar):
    ok = subprocess.run([sys.executable, "-m", "ltr_sidecar", "health", "--target", sidecar.target], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    sidecar.stop()
    down = subprocess.run(
        [sys.executable, "-m", "ltr_sidecar", "health", "--target", sidecar.target, "--timeout", "0.5"], capture_output=True, text=True
    )
    assert down.returncode == 1 and down.stderr.strip() == "UNAVAILABLE"


def test_flags_fall_back_to_ltr_environment_variables(monkeypatch):
    monkeypatch.setenv("LTR_PORT", "6123")
    monkeypatch.setenv("LTR_MAX_BATCH_SIZE", "7")
    args = build_parser().parse_args(["serve"])
    assert (args.port, args.max_batch_size, args.host) == (6123, 7, "127.0.0.1")
    assert build_parser().parse_args(["serve", "--port", "1"]).port == 1


def test_every_serve_flag_is_explained_in_help_with_its_environment_variable(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = [a for a in serve._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 20
    for action in flags:
        assert action.option_strings[0] in out
        assert f"[env LTR_{action.dest.upper()}]" in out


def test_default_model_is_the_bundle_shipped_in_the_package():
    from ltr_sidecar.bundle import DEFAULT_BUNDLE

    assert build_parser().parse_args(["serve"]).model == DEFAULT_BUNDLE
    assert Path(DEFAULT_BUNDLE).is_relative_to(Path(__import__("ltr_sidecar").__file__).parent)

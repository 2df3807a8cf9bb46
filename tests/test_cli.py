"""`ltr-sidecar serve` as a process: start-up checks, environment config, SIGTERM, and what it logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ltr_client.api import ranker_pb2 as pb
from ltr_client.api import ranker_pb2_grpc as pbg
from ltr_sidecar.cli import build_parser
from tools.sidecar_process import SidecarProcess, SidecarStartError

SECRET = "zanzibar-quokka-7731"  # appears in prompts only; must never reach the logs


def test_serve_refuses_to_start_on_a_corrupted_model_and_names_the_file(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:-10] + b"x" * 10)
    with pytest.raises(SidecarStartError) as refused:
        SidecarProcess("--model", str(bundle))
    assert refused.value.returncode == 2
    assert "model.onnx: sha256 mismatch" in refused.value.log


def test_sigterm_sets_health_not_serving_drains_and_exits_cleanly_without_logging_prompts(tiny_bundle, sidecar_process):
    server = sidecar_process("--model", str(tiny_bundle), "--log-level", "debug", "--grace", "5")
    with grpc.insecure_channel(server.target) as ch:
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
    code, logs = server.wait(), server.log()
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


# Tried in turn for each serve flag until the command line accepts one that changes the parsed value.
SAMPLE_VALUES = ("7", "2.5", "127.0.0.2", "debug", "text", "CPUExecutionProvider", "/tmp/ltr-sample")


def test_the_environment_variable_help_names_for_each_serve_flag_sets_it_as_the_flag_does(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    usage, _, options = " ".join(capsys.readouterr().out.split()).partition("show this help message and exit")
    # Each option's entry: its name first, then its help, ending in "[env LTR_...]".
    named = dict(re.findall(r"(--[a-z][a-z0-9-]*)[^\[]*?\[env (LTR_\w+)\]", options))
    assert len(named) > 20 and set(named) == set(re.findall(r"\[(--[a-z][a-z0-9-]*)", usage))

    def settings(*argv: str) -> dict:
        # The parsed values, less the handler (a new bound callable per parser).
        return {k: v for k, v in vars(build_parser().parse_args(["serve", *argv])).items() if not callable(v)}

    for flag, env in named.items():
        for value in SAMPLE_VALUES:
            try:
                from_flag = settings(flag, value)
            except SystemExit:
                continue
            if from_flag != settings():
                break
        else:
            pytest.fail(f"{flag}: none of {SAMPLE_VALUES} is accepted and changes it")
        monkeypatch.setenv(env, value)
        assert settings() == from_flag, f"{env}={value} should act as {flag} {value}"
        monkeypatch.delenv(env)


def test_default_model_is_the_bundle_shipped_in_the_package():
    from ltr_sidecar.bundle import DEFAULT_BUNDLE

    assert build_parser().parse_args(["serve"]).model == DEFAULT_BUNDLE
    assert Path(DEFAULT_BUNDLE).is_relative_to(Path(__import__("ltr_sidecar").__file__).parent)


# --- start-up refusals -------------------------------------------------------------


def refused(*args: str, env: dict[str, str] | None = None, command: tuple[str, ...] = ("serve", "--metrics-port", "-1")) -> list[str]:
    """Run `command` (serve) with args that must be refused: exit 2, one line on stderr, nothing on stdout, no traceback."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LTR_")} | (env or {})
    run = subprocess.run([sys.executable, "-m", "ltr_sidecar", *command, *args],
                         capture_output=True, text=True, timeout=120, env=environ)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and not run.stdout
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    return lines


@pytest.mark.parametrize(
    "args, named",
    [
        (["--port", "99999"], "--port 99999"),
        (["--port", "-5"], "--port -5"),
        (["--port", "0", "--metrics-port", "99999"], "--metrics-port 99999"),
        (["--log-level", "verbose"], "--log-level verbose"),
        (["--log-format", "yaml"], "--log-format yaml"),
        (["--max-items", "0"], "--max-items 0"),
        (["--max-batch-size", "0"], "--max-batch-size 0"),
        (["--max-queue", "0"], "--max-queue 0"),
        (["--max-queue", "8", "--max-batch-size", "16"], "--max-queue 8"),
        (["--max-prompt-bytes", "0"], "--max-prompt-bytes 0"),
        (["--max-message-bytes", "4294967296"], "--max-message-bytes 4294967296"),
        (["--cache-size", "-1"], "--cache-size -1"),
        (["--starvation-quantum", "-1"], "--starvation-quantum -1"),
        (["--grace", "nan"], "--grace nan"),
        (["--max-delay-ms", "-1"], "--max-delay-ms -1"),
        (["--tls-cert", "/no/such/cert.pem", "--tls-key", "/no/such/key.pem"], "--tls-cert /no/such/cert.pem"),
        (["--tls-cert", "/no/such/cert.pem"], "--tls-key"),
        (["--port", "x"], "--port: invalid int value: 'x'"),
        (["--host", "999.1.1.1", "--port", "0"], "999.1.1.1:0"),
        (["--port", "0", "--max-length", "100000"], "--max-length: 100000"),
    ],
)
def test_an_invalid_serve_setting_ends_start_up_with_one_line_naming_the_flag_and_value(args, named):
    (line,) = refused(*args)
    assert named in line


def test_an_invalid_setting_from_the_environment_names_the_variable():
    (line,) = refused(env={"LTR_PORT": "70000"})
    assert "--port 70000" in line and "LTR_PORT" in line
    (line,) = refused(env={"LTR_MAX_ITEMS": "many"})
    assert "LTR_MAX_ITEMS='many'" in line


def test_a_taken_port_ends_start_up_with_one_line_naming_the_address(tiny_bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (line,) = refused("--model", str(tiny_bundle), "--port", str(port))
        assert f"--host/--port 127.0.0.1:{port}: cannot listen there: Address already in use" in line
        (line,) = refused("--model", str(tiny_bundle), "--port", "0", "--metrics-port", str(port))
        assert f"--metrics-host/--metrics-port 127.0.0.1:{port}: cannot listen there" in line


def test_the_cli_defaults_are_server_configs_defaults(monkeypatch):
    from ltr_sidecar.cli import server_config
    from ltr_sidecar.config import ServerConfig

    for name in [k for k in os.environ if k.startswith("LTR_")]:
        monkeypatch.delenv(name)
    assert server_config(build_parser().parse_args(["serve"])) == ServerConfig()


def test_every_serve_flag_in_help_is_in_the_readme_flag_table_and_no_other(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    in_help = set(re.findall(r"^  (--[a-z][a-z0-9-]*)", capsys.readouterr().out, re.MULTILINE))
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("## `ltr-sidecar serve` flags", 1)[1].split("\n## ", 1)[0]
    in_table = {flag for row in table.splitlines() if row.startswith("| `--") for flag in re.findall(r"`(--[a-z0-9-]+)`", row.split("|")[1])}
    assert in_help == in_table


@pytest.mark.parametrize(
    "args, named",
    [
        ([], "--upstream (unset)"),
        (["--upstream", "127.0.0.1:8000"], "--upstream 127.0.0.1:8000"),
        (["--upstream", "http://127.0.0.1:9", "--listen-port", "99999"], "--listen-port 99999"),
        (["--upstream", "http://127.0.0.1:9", "--engine", "tgi"], "--engine tgi"),
        (["--upstream", "http://127.0.0.1:9", "--weight-ms", "-1"], "--weight-ms -1"),
        (["--upstream", "http://127.0.0.1:9", "--window", "0"], "--window 0"),
        (["--upstream", "http://127.0.0.1:9", "--score-timeout-ms", "0"], "--score-timeout-ms 0"),
        (["--upstream", "http://127.0.0.1:9", "--log-level", "verbose"], "--log-level verbose"),
        (["--upstream", "http://127.0.0.1:9", "--listen-host", "999.1.1.1", "--listen-port", "0"], "cannot listen on 999.1.1.1:0"),
    ],
)
def test_an_invalid_proxy_setting_ends_start_up_with_one_line_naming_it(args, named):
    (line,) = refused(*args, command=("proxy",))
    assert named in line, line


def test_health_and_the_proxy_read_the_sidecar_address_from_ltr_target(monkeypatch):
    monkeypatch.setenv("LTR_TARGET", "ranker.example:7000")
    assert build_parser().parse_args(["health"]).target == "ranker.example:7000"
    assert build_parser().parse_args(["proxy"]).sidecar == "ranker.example:7000"

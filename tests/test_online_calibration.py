"""Online calibration on a real sidecar (gRPC on loopback, ONNX Runtime, the tiny bundle): Observe feeds a served
model's finished requests, a background refit promotes a calibration only when it ranks held-out observations
better, Score says which version scored, and the state dir survives restarts, refuses corrupt files and never
holds a prompt."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from scipy.stats import kendalltau

from ltr_client.api import ranker_pb2 as pb
from tests.test_adapt import MARKER, served_trace

MODEL = "served/model-a"


def score(stub, rows: list[dict], model: str = "", prefix: str = "s") -> pb.ScoreResponse:
    items = [pb.ScoreItem(request_id=f"{prefix}{i}", prompt=r["prompt"]) for i, r in enumerate(rows)]
    return stub.Score(pb.ScoreRequest(items=items, model=model), timeout=30)


def observe(stub, rows: list[dict], prefix: str = "s", with_prompt: bool = False, model: str = MODEL) -> pb.ObserveResponse:
    observations = []
    for i, r in enumerate(rows):
        finish = pb.FINISH_STOPPED if r["finish_reason"] == "stop" else pb.FINISH_LENGTH
        o = pb.Observation(request_id=f"{prefix}{i}", output_tokens=r["output_tokens"], finish=finish, model=model)
        if with_prompt:
            o.prompt = r["prompt"]
        observations.append(o)
    return stub.Observe(pb.ObserveRequest(observations=observations), timeout=60)


def feed(sidecar, rows: list[dict], prefix: str = "s") -> pb.ObserveResponse:
    """Score the rows as an engine would (naming the model), then report them finished; wait for the refit."""
    stub = sidecar.stub()
    score(stub, rows, MODEL, prefix)
    response = observe(stub, rows, prefix)
    assert sidecar.server.scorer.calibrator.wait_idle(120)
    return response


def tau(response: pb.ScoreResponse, rows: list[dict]) -> float:
    # Higher score = shorter answer: tau against -length.
    return float(kendalltau([s.score for s in response.scores], [-r["output_tokens"] for r in rows]).statistic)


def calibration(stub, model: str = MODEL) -> pb.Calibration | None:
    return next((c for c in stub.ModelInfo(pb.ModelInfoRequest(), timeout=10).calibrations if c.model == model), None)


def test_a_served_model_that_reverses_part_of_the_base_order_is_learned_and_promoted_online(start_sidecar, tmp_path: Path) -> None:
    sidecar = start_sidecar(calibration="on")
    stub = sidecar.stub()
    held_out = served_trace(tmp_path / "held.jsonl", 200, seed=99)
    before = score(stub, held_out, MODEL, "h")
    assert {s.calibration_version for s in before.scores} == {""}  # nothing learned yet: the base ranker

    response = feed(sidecar, served_trace(tmp_path / "train.jsonl", 400, seed=1))
    assert response.accepted == 400 and response.unknown == 0 and response.calibration_enabled
    info = calibration(stub)
    assert info is not None and info.promotions == 1 and info.version and info.observations == 400
    assert info.serving_tau_b > info.base_tau_b

    after = score(stub, held_out, MODEL, "h")  # the same prompts (cached), now calibrated
    assert {s.calibration_version for s in after.scores} == {info.version}
    assert tau(after, held_out) > tau(before, held_out) + 0.2
    # Another model, or none, still gets the base ranker.
    assert [s.score for s in score(stub, held_out, "", "h").scores] == [s.score for s in before.scores]
    assert {s.calibration_version for s in score(stub, held_out, "other", "h").scores} == {""}
    metrics = _metrics(sidecar)
    assert f'ltr_calibration_info{{served_model="{MODEL}",version="{info.version}"}} 1.0' in metrics
    assert f'ltr_calibration_observations_total{{served_model="{MODEL}"}} 400.0' in metrics


def test_noise_labels_are_never_promoted_online(start_sidecar, tmp_path: Path) -> None:
    sidecar = start_sidecar(calibration="on")
    for part in range(3):
        feed(sidecar, served_trace(tmp_path / f"noise{part}.jsonl", 300, seed=10 + part, shuffle=True), prefix=f"n{part}-")
    info = calibration(sidecar.stub())
    assert info is not None and info.refits >= 2 and info.promotions == 0 and info.version == ""


def test_cut_answers_are_kept_as_censored_and_prompts_sent_with_an_observation_are_scored_not_stored(start_sidecar, tmp_path: Path) -> None:
    sidecar = start_sidecar(calibration="on", state_dir=tmp_path / "state")
    rows = served_trace(tmp_path / "t.jsonl", 300, seed=2)
    # Never scored: Observe carries the prompts, which are read once for their features.
    response = observe(sidecar.stub(), rows, prefix="p", with_prompt=True)
    assert response.accepted == 300 and response.unknown == 0
    assert sidecar.server.scorer.calibrator.wait_idle(120)
    held = sidecar.server.scorer.calibrator.models[MODEL]
    assert held.censored[:300].tolist() == [r["finish_reason"] == "length" for r in rows]
    assert any(held.censored[:300])
    sidecar.stop()
    for file in (tmp_path / "state").iterdir():
        assert MARKER.encode() not in file.read_bytes(), file


def test_an_observation_of_an_unknown_request_without_prompt_is_counted_unknown(start_sidecar) -> None:
    sidecar = start_sidecar(calibration="on")
    response = sidecar.stub().Observe(pb.ObserveRequest(observations=[
        pb.Observation(request_id="never-scored", output_tokens=5, finish=pb.FINISH_STOPPED, model=MODEL)]), timeout=10)
    assert response.accepted == 0 and response.unknown == 1


def test_calibration_survives_a_restart_from_the_state_dir(start_sidecar, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_sidecar(calibration="on", state_dir=state)
    feed(first, served_trace(tmp_path / "train.jsonl", 400, seed=3))
    held_out = served_trace(tmp_path / "held.jsonl", 50, seed=98)
    served = score(first.stub(), held_out, MODEL, "h")
    version = calibration(first.stub()).version
    assert version
    first.stop()

    second = start_sidecar(calibration="on", state_dir=state)
    info = calibration(second.stub())
    assert info.version == version and info.observations == 400 and info.held == 400
    again = score(second.stub(), held_out, MODEL, "h")
    assert {s.calibration_version for s in again.scores} == {version}
    assert [s.score for s in again.scores] == pytest.approx([s.score for s in served.scores], abs=1e-5)


@pytest.mark.parametrize("target", ["json", "npz"])
def test_a_corrupt_state_file_is_refused_naming_it_and_the_base_ranker_serves(start_sidecar, tmp_path: Path, target: str, caplog) -> None:
    state = tmp_path / "state"
    first = start_sidecar(calibration="on", state_dir=state)
    feed(first, served_trace(tmp_path / "train.jsonl", 400, seed=4))
    assert calibration(first.stub()).version
    first.stop()
    victim = next(state.glob(f"*.{target}"))
    data = bytearray(victim.read_bytes())
    middle = len(data) // 2
    data[middle] = (data[middle] + 1) % 256 if target == "npz" else ord("7") if data[middle] != ord("7") else ord("8")
    victim.write_bytes(bytes(data))

    second = start_sidecar(calibration="on", state_dir=state)
    errors = second.server.scorer.calibrator.load_errors
    assert len(errors) == 1 and str(victim) in errors[0]
    assert str(victim) in caplog.text
    held_out = served_trace(tmp_path / "held.jsonl", 20, seed=97)
    assert {s.calibration_version for s in score(second.stub(), held_out, MODEL, "h").scores} == {""}
    assert calibration(second.stub()) is None


def test_calibration_off_keeps_nothing(start_sidecar, tmp_path: Path) -> None:
    sidecar = start_sidecar(calibration="off", state_dir=tmp_path / "state")
    rows = served_trace(tmp_path / "t.jsonl", 100, seed=5)
    score(sidecar.stub(), rows, MODEL)
    response = observe(sidecar.stub(), rows)
    assert not response.calibration_enabled and response.accepted == 0
    info = sidecar.stub().ModelInfo(pb.ModelInfoRequest(), timeout=10)
    assert not info.calibration_enabled and not info.calibrations
    assert sidecar.server.scorer.calibrator is None and len(sidecar.server.scorer.features) == 0
    sidecar.stop()
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


@pytest.mark.parametrize(
    ("observation", "field"),
    [
        (dict(request_id="", output_tokens=3, finish=pb.FINISH_STOPPED, model=MODEL), "observations[2].request_id"),
        (dict(request_id="c", output_tokens=3, finish=pb.FINISH_STOPPED, model=""), "observations[2].model"),
        (dict(request_id="c", output_tokens=3, model=MODEL), "observations[2].finish"),
        (dict(request_id="c", output_tokens=0, finish=pb.FINISH_LENGTH, model=MODEL), "observations[2].output_tokens"),
        (dict(request_id="c", output_tokens=3, finish=pb.FINISH_STOPPED, model=MODEL, prompt=""), "observations[2].prompt"),
        (dict(request_id="c", output_tokens=3, finish=pb.FINISH_STOPPED, model=MODEL, token_ids=pb.TokenIds(ids=[10**9])),
         "observations[2].token_ids"),
        (dict(request_id="a", output_tokens=3, finish=pb.FINISH_STOPPED, model=MODEL), "observations[2].request_id"),
    ],
)
def test_observe_refuses_bad_observations_naming_the_field(start_sidecar, observation: dict, field: str) -> None:
    sidecar = start_sidecar(calibration="on")
    good = [pb.Observation(request_id=r, output_tokens=3, finish=pb.FINISH_STOPPED, model=MODEL) for r in ("a", "b")]
    request = pb.ObserveRequest(observations=[*good, pb.Observation(**observation)])
    with pytest.raises(grpc.RpcError) as info:
        sidecar.stub().Observe(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details().startswith(field), info.value.details()


def test_the_cli_refuses_a_bad_calibration_mode_naming_the_flag(capsys) -> None:
    from ltr_sidecar.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--calibration", "maybe", "--port", "0"])
    assert exit_info.value.code == 2 and "--calibration maybe" in capsys.readouterr().err


def test_the_python_clients_observe_and_get_calibrated_scores_and_a_dead_sidecar_costs_nothing(start_sidecar, tmp_path: Path) -> None:
    import asyncio
    import time

    from ltr_client import AsyncRankerClient, CircuitBreaker, Finished, RankerClient, ScoreItem

    sidecar = start_sidecar(calibration="on")
    rows = served_trace(tmp_path / "t.jsonl", 400, seed=6)
    items = [ScoreItem(f"c{i}", r["prompt"]) for i, r in enumerate(rows)]
    finished = [Finished(f"c{i}", r["output_tokens"], "stop" if r["finish_reason"] == "stop" else "length", MODEL)
                for i, r in enumerate(rows)]
    with RankerClient(sidecar.target, timeout_s=30) as client:
        assert not client.score(items, model=MODEL).fallback
        observed = client.observe(finished[:200])
        assert (observed.accepted, observed.unknown, observed.calibration_enabled, observed.fallback) == (200, 0, True, False)

    async def rest() -> tuple:
        client = AsyncRankerClient(sidecar.target, timeout_s=30)
        try:
            observed = await client.observe(finished[200:])
            assert sidecar.server.scorer.calibrator.wait_idle(120)
            return observed, await client.score(items[:5], model=MODEL)
        finally:
            await client.close()

    observed, scores = asyncio.run(rest())
    assert observed.accepted == 200 and scores.calibration_version == calibration(sidecar.stub()).version != ""

    # Nobody listens: observe returns at once with a fallback, and the breaker opens instead of retrying forever.
    dead = RankerClient("127.0.0.1:1", timeout_s=0.2, breaker=CircuitBreaker(failure_threshold=2))
    started = time.monotonic()
    results = [dead.observe(finished[:10]) for _ in range(5)]
    assert time.monotonic() - started < 5 and all(r.fallback and r.accepted == 0 for r in results)
    assert results[-1].error == "breaker_open"
    dead.close()


def _metrics(sidecar) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.server.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_refit_due_waits_for_more_observations_as_the_reservoir_grows() -> None:
    from ltr_sidecar.online_calibration import refit_due

    assert not refit_due(49, 0) and refit_due(50, 0)
    assert not refit_due(399, 400) and refit_due(400, 400)
    assert refit_due(1000, 9000) and not refit_due(999, 9000)

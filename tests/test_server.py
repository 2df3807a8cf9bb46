"""The real gRPC server on loopback: RPCs, health, reflection, metrics, bad input and overload."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ltr_client.api import ranker_pb2 as pb
from ltr_client.api import ranker_pb2_grpc as pbg
from ltr_sidecar.config import Limits, ServerConfig
from ltr_sidecar.ranker import OnnxRanker
from ltr_sidecar.server import SidecarServer


def score(stub, *prompts: str, ids: list[str] | None = None, **kw) -> pb.ScoreResponse:
    ids = ids or [f"r{i}" for i in range(len(prompts))]
    return stub.Score(pb.ScoreRequest(items=[pb.ScoreItem(request_id=i, prompt=p) for i, p in zip(ids, prompts)]), timeout=10, **kw)


def rpc_error(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=10, **kw)
    return info.value


# --- Score ---------------------------------------------------------------------


def test_score_returns_one_score_per_item_higher_for_shorter_predicted_output(sidecar):
    resp = score(sidecar.stub(), "give a brief answer", "write an essay please", "hello")
    assert [s.request_id for s in resp.scores] == ["r0", "r1", "r2"]
    brief, essay, _ = (s.score for s in resp.scores)
    assert brief > essay
    assert resp.model_version.startswith("tiny-test-ranker@")


def test_scores_are_comparable_across_calls_and_replicas(start_sidecar):
    a, b = start_sidecar(), start_sidecar()
    prompts = ["brief reply", "essay about rome", "list ten ideas"]
    together = [s.score for s in score(a.stub(), *prompts).scores]
    alone = [score(b.stub(), p, ids=[f"x{i}"]).scores[0].score for i, p in enumerate(prompts)]
    assert together == pytest.approx(alone, abs=1e-5)


def test_token_ids_are_scored_like_the_text_they_encode(sidecar):
    ranker = sidecar.server.scorer.ranker
    text = "tell me a story about a dragon"
    ids = ranker.tokenize([text])[0]
    resp = sidecar.stub().Score(
        pb.ScoreRequest(items=[pb.ScoreItem(request_id="a", prompt=text), pb.ScoreItem(request_id="b", token_ids=pb.TokenIds(ids=ids))])
    )
    assert resp.scores[0].score == pytest.approx(resp.scores[1].score, abs=1e-6)


def test_long_token_ids_are_cut_like_long_text_by_a_bundle_that_keeps_the_tail(start_sidecar, tmp_path):
    from tools.tiny_bundle import build_tiny_bundle

    bundle = build_tiny_bundle(tmp_path / "ht", word_bias={"brief": 5.0, "essay": -5.0}, max_length=8, head_tokens=3)
    sidecar = start_sidecar(model=bundle)
    text = "tell me " * 30 + "brief brief brief brief brief"
    whole = sidecar.server.scorer.ranker.tokenizer.encode(text).ids  # the caller's tokenization, uncut
    resp = sidecar.stub().Score(
        pb.ScoreRequest(items=[pb.ScoreItem(request_id="a", prompt=text), pb.ScoreItem(request_id="b", token_ids=pb.TokenIds(ids=whole))]),
        timeout=10,
    )
    assert len(whole) > 8 and resp.scores[0].score == pytest.approx(resp.scores[1].score, abs=1e-6)
    # The tail was read: the same prompt ending in "essay" scores lower.
    assert score(sidecar.stub(), "tell me " * 30 + "essay " * 5).scores[0].score < resp.scores[0].score


def test_a_repeated_prompt_is_served_from_the_cache(sidecar):
    stub = sidecar.stub()
    first = score(stub, "summarize this article", ids=["a"]).scores[0]
    again = score(stub, "summarize this article", ids=["b"]).scores[0]
    assert not first.cached and again.cached
    assert again.score == first.score


def test_an_over_long_prompt_is_truncated_not_rejected(sidecar):
    stub = sidecar.stub()
    max_tokens = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10).max_input_tokens
    head = "brief " * max_tokens  # as many words as the model reads tokens: the cut falls inside it
    resp = score(stub, head + "essay " * 5000, head + "essay " * 50, head)
    # Only the first max_input_tokens count: what follows them, 5,000 "essay" words or none, changes nothing ...
    assert resp.scores[0].score == pytest.approx(resp.scores[1].score, abs=1e-6)
    assert resp.scores[0].score == pytest.approx(resp.scores[2].score, abs=1e-6)
    # ... though read they would rank it last.
    assert score(stub, "essay " * max_tokens + head).scores[0].score < resp.scores[0].score - 1


# --- NextBatch -----------------------------------------------------------------


def budget(seqs: int = 8, tokens: int = 1024) -> pb.Budget:
    return pb.Budget(max_num_seqs=seqs, max_num_batched_tokens=tokens)


def test_next_batch_orders_by_prompt_score_and_fills_the_budget(sidecar):
    req = pb.NextBatchRequest(
        candidates=[
            pb.Candidate(request_id="essay", prompt="write an essay", running=True),
            pb.Candidate(request_id="plain", prompt="what is two plus two"),
            pb.Candidate(request_id="brief", prompt="brief answer please"),
        ],
        budget=budget(seqs=2),
    )
    resp = sidecar.stub().NextBatch(req, timeout=10)
    assert list(resp.order) == [2, 1, 0]
    assert resp.num_scheduled == 2
    assert list(resp.preempted) == [0]
    assert list(resp.idle_steps) == [1, 0, 0]


def test_next_batch_uses_given_scores_and_cached_scores_by_request_id(sidecar):
    stub = sidecar.stub()
    score(stub, "brief answer", ids=["known"])
    req = pb.NextBatchRequest(
        candidates=[
            pb.Candidate(request_id="given", score=-100.0),
            pb.Candidate(request_id="never-seen"),
            pb.Candidate(request_id="known"),
        ],
        budget=budget(),
    )
    resp = stub.NextBatch(req, timeout=10)
    assert list(resp.order) == [2, 1, 0], "the unscored candidate keeps its first-come-first-served slot"
    assert list(resp.unscored) == [1]
    assert math.isnan(resp.scores[1])


def test_next_batch_counts_overtakes_by_arrival_step_in_both_encodings(sidecar):
    # a, b and c arrived in one step, d in the next; c and d are admitted: only d overtakes a and b.
    ids, scores, steps = ["a", "b", "c", "d"], [0.0, 1.0, 5.0, 9.0], [7, 7, 7, 8]
    by_columns = pb.NextBatchRequest(columns=pb.CandidateColumns(request_ids=ids, scores=scores, arrival_steps=steps), budget=budget(seqs=2))
    by_messages = pb.NextBatchRequest(
        candidates=[pb.Candidate(request_id=i, score=s, arrival_step=t) for i, s, t in zip(ids, scores, steps)], budget=budget(seqs=2)
    )
    for req in (by_columns, by_messages):
        resp = sidecar.stub().NextBatch(req, timeout=10)
        assert list(resp.order[: resp.num_scheduled]) == [3, 2] and list(resp.overtakes) == [1, 1, 0, 0]


def test_next_batch_is_stateless_counters_round_trip_through_the_caller(start_sidecar):
    # Two replicas: each step goes to the other one, as behind a load balancer.
    replicas = [start_sidecar(), start_sidecar()]
    guard = pb.StarvationGuard(threshold_steps=2, quantum_steps=1)
    idle = [0, 0]
    promoted = [0, 0]
    ran_long = []
    for step in range(4):
        req = pb.NextBatchRequest(
            candidates=[
                pb.Candidate(request_id="long", score=-5.0, idle_steps=idle[0], promoted_steps_left=promoted[0]),
                pb.Candidate(request_id="short", score=5.0, idle_steps=idle[1], promoted_steps_left=promoted[1]),
            ],
            budget=budget(seqs=1),
            guard=guard,
        )
        resp = replicas[step % 2].stub().NextBatch(req, timeout=10)
        idle, promoted = list(resp.idle_steps), list(resp.promoted_steps_left)
        ran_long.append(resp.order[0] == 0)
    assert ran_long == [False, False, True, False]


def test_a_promoted_running_request_stays_protected_through_replicas_in_both_encodings(start_sidecar):
    # The protected flag travels with the candidate like the counters do; replica 0 gets
    # one message per candidate, replica 1 columns, so both decoders are exercised.
    replicas = [start_sidecar(), start_sidecar()]
    guard = pb.StarvationGuard(threshold_steps=2, quantum_steps=1)
    ids, scores = ["long", "short"], [-5.0, 5.0]
    running, idle, promoted, protected = [False, True], [0, 0], [0, 0], [False, False]
    ran_long, flags = [], []
    for step in range(5):
        if step % 2 == 0:
            cands = [
                pb.Candidate(request_id=ids[i], score=scores[i], running=running[i], idle_steps=idle[i],
                             promoted_steps_left=promoted[i], protected=protected[i])
                for i in range(2)
            ]
            req = pb.NextBatchRequest(candidates=cands, budget=budget(seqs=1), guard=guard)
        else:
            cols = pb.CandidateColumns(request_ids=ids, scores=scores, running=running, idle_steps=idle,
                                       promoted_steps_left=promoted, protected=protected)
            req = pb.NextBatchRequest(columns=cols, budget=budget(seqs=1), guard=guard)
        resp = replicas[step % 2].stub().NextBatch(req, timeout=10)
        idle, promoted, protected = list(resp.idle_steps), list(resp.promoted_steps_left), list(resp.protected)
        running = [i in resp.order[: resp.num_scheduled] for i in range(2)]
        ran_long.append(running[0])
        flags.append(protected[0])
    # Promoted at step 2 for a one-step quantum; protected, it keeps running after the quantum ends.
    assert ran_long == [False, False, True, True, True]
    assert flags == [False, False, True, True, True]


def test_columns_give_the_same_decision_as_one_message_per_candidate(sidecar):
    stub = sidecar.stub()
    rows = [("a", 0.5, True, 1, 0, 0), ("b", 2.0, False, 30, 1, 0), ("c", -1.0, False, 20, 0, 800), ("d", 1.0, True, 1, 0, 0)]
    messages = pb.NextBatchRequest(
        candidates=[
            pb.Candidate(request_id=r, score=sc, running=run, num_tokens=nt, priority=pr, idle_steps=idle)
            for r, sc, run, nt, pr, idle in rows
        ],
        budget=budget(seqs=3, tokens=40),
    )
    columns = pb.NextBatchRequest(
        columns=pb.CandidateColumns(
            request_ids=[r[0] for r in rows],
            scores=[r[1] for r in rows],
            running=[r[2] for r in rows],
            num_tokens=[r[3] for r in rows],
            priorities=[r[4] for r in rows],
            idle_steps=[r[5] for r in rows],
        ),
        budget=budget(seqs=3, tokens=40),
    )
    a, b = stub.NextBatch(messages, timeout=10), stub.NextBatch(columns, timeout=10)
    assert a == b
    assert list(a.order) == [2, 3, 0, 1]  # c promoted (idle 800), then by score; b has priority 1


def test_columns_score_prompts_where_the_score_is_nan(sidecar):
    req = pb.NextBatchRequest(
        columns=pb.CandidateColumns(request_ids=["x", "y"], scores=[float("nan"), 0.0], prompts=["brief brief", ""]),
        budget=budget(),
    )
    resp = sidecar.stub().NextBatch(req, timeout=10)
    assert list(resp.order) == [0, 1] and resp.scores[0] > 1.0


def test_explicit_priority_outranks_the_score(sidecar):
    req = pb.NextBatchRequest(
        candidates=[pb.Candidate(request_id="a", score=9.0, priority=5), pb.Candidate(request_id="b", score=-9.0, priority=-1)],
        budget=budget(),
    )
    assert list(sidecar.stub().NextBatch(req, timeout=10).order) == [1, 0]


# --- ModelInfo, health, reflection, metrics --------------------------------------


def test_the_overtake_trigger_is_served_by_default_when_configured_and_can_be_set_per_call(start_sidecar):
    from ltr_client.ordering import StarvationGuard

    sidecar = start_sidecar(guard=StarvationGuard(threshold_steps=0, quantum_steps=2, max_overtakes=3))
    stub = sidecar.stub()
    guard = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10).default_guard
    assert (guard.threshold_steps, guard.quantum_steps, guard.max_overtakes) == (0, 2, 3)
    cands = [pb.Candidate(request_id="long", score=-5.0, overtakes=2), pb.Candidate(request_id="short", score=5.0)]
    resp = stub.NextBatch(pb.NextBatchRequest(candidates=cands, budget=budget(seqs=1)), timeout=10)
    assert list(resp.order[:1]) == [1] and list(resp.overtakes) == [3, 0], "the short one, a later arrival, overtook it"
    cands[0].overtakes = 3
    resp = stub.NextBatch(pb.NextBatchRequest(candidates=cands, budget=budget(seqs=1)), timeout=10)
    assert list(resp.order[:1]) == [0] and list(resp.protected) == [True, False], "3 overtakes: promoted"
    # A per-call guard without max_overtakes turns the trigger off for that call.
    call_guard = pb.StarvationGuard(threshold_steps=0, quantum_steps=2)
    resp = stub.NextBatch(pb.NextBatchRequest(candidates=cands, budget=budget(seqs=1), guard=call_guard), timeout=10)
    assert list(resp.order[:1]) == [1]


def test_model_info_describes_the_serving_bundle(sidecar):
    info = sidecar.stub().ModelInfo(pb.ModelInfoRequest(), timeout=10)
    bundle = sidecar.server.scorer.ranker.bundle
    assert (info.name, info.model_sha256, info.max_input_tokens) == (bundle.name, bundle.model_sha256, 64)
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.default_guard.threshold_steps == 768 and info.default_guard.max_overtakes == 0


def test_a_shorter_max_length_is_what_the_server_reads_and_reports(start_sidecar):
    sidecar = start_sidecar(max_length=8)
    assert sidecar.stub().ModelInfo(pb.ModelInfoRequest(), timeout=10).max_input_tokens == 8
    assert sidecar.server.scorer.ranker.max_length == 8


def test_standard_health_reports_serving_for_the_server_and_the_service(sidecar):
    health = health_pb2_grpc.HealthStub(sidecar.channel())
    for service in ("", "ltr.v1.RankerService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services_and_serves_the_proto(sidecar):
    stub = reflection_pb2_grpc.ServerReflectionStub(sidecar.channel())
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="ltr.v1.RankerService"),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {"ltr.v1.RankerService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_metrics_endpoint_exports_requests_latency_batches_queue_cache_and_provider(sidecar):
    score(sidecar.stub(), "brief", "essay")
    text = urllib.request.urlopen(f"http://127.0.0.1:{sidecar.server.metrics_port}/metrics", timeout=5).read().decode()
    for name in (
        'ltr_requests_total{code="OK",method="Score"}',
        "ltr_request_latency_seconds_bucket",
        "ltr_batch_size_bucket",
        "ltr_queue_depth",
        "ltr_cache_hit_ratio",
        'provider="CPUExecutionProvider"',
    ):
        assert name in text


# --- bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "items, field",
    [
        ([], "items: must not be empty"),
        ([pb.ScoreItem(request_id="a", prompt="")], "items[0].prompt: must not be empty"),
        ([pb.ScoreItem(request_id="a")], "items[0]: set prompt or token_ids"),
        ([pb.ScoreItem(request_id="", prompt="x")], "items[0].request_id: must not be empty"),
        ([pb.ScoreItem(request_id="a", prompt="x"), pb.ScoreItem(request_id="a", prompt="y")], "items[1].request_id: duplicate"),
        ([pb.ScoreItem(request_id="a", token_ids=pb.TokenIds())], "items[0].token_ids: must not be empty"),
        ([pb.ScoreItem(request_id="a", token_ids=pb.TokenIds(ids=[1, 10**9]))], "items[0].token_ids: ids must lie in"),
        ([pb.ScoreItem(request_id="a", token_ids=pb.TokenIds(ids=[-1]))], "items[0].token_ids: ids must lie in"),
    ],
)
def test_invalid_score_requests_get_invalid_argument_naming_the_field(sidecar, items, field):
    err = rpc_error(sidecar.stub().Score, pb.ScoreRequest(items=items))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details()


def test_a_prompt_over_the_byte_limit_is_refused(start_sidecar):
    small = start_sidecar(limits=Limits(max_prompt_bytes=100))
    err = rpc_error(small.stub().Score, pb.ScoreRequest(items=[pb.ScoreItem(request_id="a", prompt="é" * 60)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[0].prompt: longer than the limit of 100 bytes" in err.details()


def test_too_many_items_are_refused(start_sidecar):
    small = start_sidecar(limits=Limits(max_items=3))
    err = rpc_error(small.stub().Score, pb.ScoreRequest(items=[pb.ScoreItem(request_id=str(i), prompt="x") for i in range(4)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items: 4 items exceed the limit of 3" in err.details()


def test_invalid_utf8_gets_invalid_argument_naming_the_field(sidecar):
    good = pb.ScoreRequest(items=[pb.ScoreItem(request_id="a", prompt="ok"), pb.ScoreItem(request_id="b", prompt="XXXX")])
    raw = good.SerializeToString().replace(b"XXXX", b"\xff\xfe\xfd\xfc")
    call = sidecar.channel().unary_unary("/ltr.v1.RankerService/Score", request_serializer=None, response_deserializer=None)
    err = rpc_error(call, raw)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "items[1].prompt: not valid UTF-8"


def columns(**kw) -> pb.NextBatchRequest:
    return pb.NextBatchRequest(columns=pb.CandidateColumns(**kw), budget=budget(tokens=100))


@pytest.mark.parametrize(
    "req, field",
    [
        (columns(request_ids=[]), "columns.request_ids: must not be empty"),
        (columns(request_ids=["a", ""]), "columns.request_ids[1]: must not be empty"),
        (columns(request_ids=["a", "b", "a"]), "columns.request_ids[2]: duplicate"),
        (columns(request_ids=["a", "b"], scores=[1.0]), "columns.scores: 1 entries, expected 0 or 2"),
        (columns(request_ids=["a", "b"], running=[True]), "columns.running: 1 entries, expected 0 or 2"),
        (columns(request_ids=["a"], scores=[float("inf")]), "columns.scores[0]: must be finite or NaN"),
        (columns(request_ids=["a", "b"], num_tokens=[1, 101]), "columns.num_tokens[1]: 101 exceeds budget.max_num_batched_tokens"),
        (columns(request_ids=["a", "b"], arrival_steps=[1]), "columns.arrival_steps: 1 entries, expected 0 or 2"),
        (columns(request_ids=["a", "b", "c"], arrival_steps=[3, 4, 2]), "columns.arrival_steps[2]: 2 is less than the one before it (4)"),
        (
            pb.NextBatchRequest(
                candidates=[pb.Candidate(request_id="a", score=1)], columns=pb.CandidateColumns(request_ids=["b"]), budget=budget()
            ),
            "set candidates or columns, not both",
        ),
    ],
)
def test_invalid_columns_get_invalid_argument_naming_the_field(sidecar, req, field):
    err = rpc_error(sidecar.stub().NextBatch, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details()


@pytest.mark.parametrize(
    "req, field",
    [
        (pb.NextBatchRequest(budget=budget()), "candidates: must not be empty"),
        (pb.NextBatchRequest(candidates=[pb.Candidate(request_id="a", score=1)]), "budget: required"),
        (pb.NextBatchRequest(candidates=[pb.Candidate(request_id="a", score=1)], budget=budget(seqs=0)), "budget.max_num_seqs: must be positive"),
        (pb.NextBatchRequest(candidates=[pb.Candidate(request_id="a", score=1)], budget=budget(tokens=0)), "budget.max_num_batched_tokens: must be positive"),
        (pb.NextBatchRequest(candidates=[pb.Candidate(request_id="a", score=float("nan"))], budget=budget()), "candidates[0].score: must be finite"),
        (pb.NextBatchRequest(candidates=[pb.Candidate(request_id="a", prompt="")], budget=budget()), "candidates[0].prompt: must not be empty"),
        (
            pb.NextBatchRequest(candidates=[pb.Candidate(request_id="a", score=1), pb.Candidate(request_id="a", score=2)], budget=budget()),
            "candidates[1].request_id: duplicate",
        ),
        (
            pb.NextBatchRequest(candidates=[pb.Candidate(request_id="a", score=1, num_tokens=2000)], budget=budget(tokens=1024)),
            "candidates[0].num_tokens: 2000 exceeds budget.max_num_batched_tokens",
        ),
        (
            pb.NextBatchRequest(candidates=[pb.Candidate(request_id="a", score=1, arrival_step=1), pb.Candidate(request_id="b", score=2)], budget=budget()),
            "candidates[1].arrival_step: set it on every candidate or on none",
        ),
    ],
)
def test_invalid_next_batch_requests_get_invalid_argument_naming_the_field(sidecar, req, field):
    err = rpc_error(sidecar.stub().NextBatch, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details()


# --- load and abandoned calls ------------------------------------------------------


def test_a_burst_beyond_the_queue_gets_resource_exhausted_and_every_accepted_call_is_answered(start_sidecar, tmp_path):
    from tools.tiny_bundle import build_tiny_bundle

    # A heavier model and a small queue, so that a burst really queues.
    heavy = build_tiny_bundle(tmp_path / "heavy", dim=256, num_layers=4, max_length=256)
    sidecar = start_sidecar(model=heavy, max_batch_size=4, max_queue=8)
    stub = sidecar.stub()
    prompt = "tell me a story about a dragon and a knight " * 20

    def one(i: int) -> str:
        try:
            score(stub, prompt + str(i), ids=[f"b{i}"])
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        codes = list(pool.map(one, range(200)))
    assert codes.count("RESOURCE_EXHAUSTED") > 0
    assert codes.count("OK") > 0
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, "accepted calls must all be answered"
    health = health_pb2_grpc.HealthStub(sidecar.channel()).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert math.isfinite(score(stub, "brief after the burst", ids=["after"]).scores[0].score)


def test_cancelled_and_expired_calls_do_not_wedge_the_batcher(start_sidecar, tmp_path):
    from tools.tiny_bundle import build_tiny_bundle

    heavy = build_tiny_bundle(tmp_path / "heavy", dim=256, num_layers=4, max_length=256)
    sidecar = start_sidecar(model=heavy, max_batch_size=2)
    stub = sidecar.stub()
    long_prompt = "write an essay on the history of rome " * 30
    futures = [
        stub.Score.future(pb.ScoreRequest(items=[pb.ScoreItem(request_id=f"c{i}", prompt=long_prompt + str(i))]), timeout=30)
        for i in range(40)
    ]
    for f in futures:
        f.cancel()
    expired = []
    for i in range(20):
        try:
            stub.Score(pb.ScoreRequest(items=[pb.ScoreItem(request_id=f"d{i}", prompt=long_prompt + "x" * i)]), timeout=0.001)
        except grpc.RpcError as e:
            expired.append(e.code())
    assert expired and set(expired) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    # The server still answers promptly afterwards.
    assert math.isfinite(score(stub, "brief", ids=["alive"]).scores[0].score)


# --- TLS ---------------------------------------------------------------------------


def test_tls_and_mtls_serve_trusted_clients_and_refuse_others(start_sidecar, tmp_path):
    from tests.certs import make_pki

    pki = make_pki(tmp_path)
    tls = start_sidecar(tls_cert=pki.server_cert, tls_key=pki.server_key)
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
    with grpc.secure_channel(tls.target, creds) as ch:
        assert score(pbg.RankerServiceStub(ch), "brief").scores

    mtls = start_sidecar(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca_cert)
    client = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes())
    with grpc.secure_channel(mtls.target, client) as ch:
        assert score(pbg.RankerServiceStub(ch), "brief").scores
    with grpc.secure_channel(mtls.target, creds) as ch:  # no client certificate
        err = rpc_error(pbg.RankerServiceStub(ch).Score, pb.ScoreRequest(items=[pb.ScoreItem(request_id="a", prompt="x")]))
        assert err.code() == grpc.StatusCode.UNAVAILABLE


# --- limits that no retry can meet, deadlines, warm-up -------------------------------


def test_a_call_with_more_prompts_to_score_than_the_queue_holds_gets_invalid_argument_not_resource_exhausted(start_sidecar):
    sidecar = start_sidecar(max_batch_size=2, max_queue=4)
    stub = sidecar.stub()
    err = rpc_error(stub.Score, pb.ScoreRequest(items=[pb.ScoreItem(request_id=f"r{i}", prompt=f"question {i}") for i in range(5)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items: 5 prompts to run exceed the queue's 4" in err.details() and "--max-queue" in err.details()
    cands = [pb.Candidate(request_id=f"c{i}", prompt=f"task {i}") for i in range(5)]
    err = rpc_error(stub.NextBatch, pb.NextBatchRequest(candidates=cands, budget=budget()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("candidates: 5 prompts")
    # What fits an empty queue is served; repeated and cached prompts take no place in it.
    assert len(score(stub, *[f"question {i}" for i in range(4)]).scores) == 4
    assert len(score(stub, *[f"question {i % 4}" for i in range(8)], ids=[f"s{i}" for i in range(8)]).scores) == 8


class GatedRanker(OnnxRanker):
    """The real ranker that runs only while `gate` is open, so a test can hold the model mid-call."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gate = threading.Event()

    def score_ids(self, token_ids):
        assert self.gate.wait(30), "the test never opened the gate"
        return super().score_ids(token_ids)


@pytest.fixture
def gated(tiny_bundle):
    """A sidecar on its own loop whose start() is still in progress: (ranker, port, the start future, the loop)."""
    from tools.sidecar_process import free_port

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = free_port()
    ranker = GatedRanker(tiny_bundle)
    config = ServerConfig(model=tiny_bundle, port=port, metrics_port=0)
    started = asyncio.run_coroutine_threadsafe(SidecarServer.start(config, ranker), loop)
    yield ranker, port, started, loop
    ranker.gate.set()
    asyncio.run_coroutine_threadsafe(started.result(30).stop(0.5), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_health_is_not_serving_until_the_model_has_warmed_up(gated):
    ranker, port, started, _ = gated
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    check = health_pb2.HealthCheckRequest(service="ltr.v1.RankerService")
    status = health.Check(check, timeout=30, wait_for_ready=True).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING and not started.done(), "answering while the warm-up runs"
    ranker.gate.set()
    server = started.result(30)
    assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert server.metrics.registry.get_sample_value("ltr_warmup_seconds") > 0


def test_a_call_past_its_deadline_is_counted_as_deadline_exceeded_and_one_the_client_cancels_as_cancelled(gated):
    ranker, port, started, _ = gated
    ranker.gate.set()
    server = started.result(30)
    ranker.gate.clear()  # every call now waits in the model
    stub = pbg.RankerServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    with pytest.raises(grpc.RpcError) as late:
        stub.Score(pb.ScoreRequest(items=[pb.ScoreItem(request_id="late", prompt="brief late")]), timeout=0.3)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    abandoned = stub.Score.future(pb.ScoreRequest(items=[pb.ScoreItem(request_id="gone", prompt="brief gone")]), timeout=30)
    time.sleep(0.3)
    abandoned.cancel()

    def count(code: str) -> float:
        return server.metrics.registry.get_sample_value("ltr_requests_total", {"method": "Score", "code": code}) or 0.0

    deadline = time.monotonic() + 10
    while count("CANCELLED") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (count("DEADLINE_EXCEEDED"), count("CANCELLED")) == (1, 1)
    ranker.gate.set()

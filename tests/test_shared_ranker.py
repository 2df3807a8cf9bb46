"""The shared-ranker pattern (deploy/k8s/overlays/shared) from the client's side.

Three sidecar replicas on loopback ports stand in for the headless Service's
pods; one RankerClient with lb_policy="round_robin" over an `ipv4:` list stands
in for `dns:///ltr-sidecar.<ns>.svc.cluster.local:50051` (the same resolver
result: one address per ready replica). Then a replica dies mid-run while a few
threads keep calling Score and NextBatch: every call must come back within its
deadline with an answer or a clean fallback, never an exception or a hang.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from ltr_client import Candidate, RankerClient, ScoreItem
from tools.sidecar_process import SidecarProcess

DEADLINE_S = 1.0  # the client's per-call deadline (generous: 2 shared cores, 3 servers, 4 client threads)
RETURN_SLACK_S = 0.5  # a call may return this much after its deadline (fallback work, thread scheduling)
THREADS = 4


def requests_served(replica) -> float:
    """RPCs a replica has answered (ltr_requests_total, every method and code)."""
    if isinstance(replica, SidecarProcess):
        assert replica.metrics_port is not None
        return scraped_requests(replica.metrics_port)
    return sum(
        s.value for fam in replica.server.metrics.registry.collect() if fam.name == "ltr_requests" for s in fam.samples if s.name == "ltr_requests_total"
    )


def scraped_requests(metrics_port: int) -> float:
    """The same figure, scraped over HTTP from a replica in another process."""
    from urllib.request import urlopen

    text = urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ltr_requests_total{"))


def round_robin_client(targets: list[str]) -> RankerClient:
    # What the engine hook does with dns:///ltr-sidecar.<ns>.svc.cluster.local:50051.
    addresses = ",".join(targets)
    return RankerClient(f"ipv4:{addresses}", timeout_s=DEADLINE_S, lb_policy="round_robin")


def test_round_robin_spreads_the_calls_over_every_replica(start_sidecar):
    replicas = [start_sidecar() for _ in range(3)]
    with round_robin_client([r.target for r in replicas]) as client:
        for i in range(60):
            if i % 2:
                assert not client.score([ScoreItem(f"s{i}", "brief question")]).fallback
            else:
                assert not client.next_batch([Candidate(f"n{i}", prompt="essay on rome"), Candidate(f"m{i}", score=1.0)], 2, 1024).fallback
    served = [requests_served(r) for r in replicas]
    assert sum(served) == 60
    # Round robin over READY subchannels: each replica gets its share, not one replica everything.
    assert all(n >= 10 for n in served), served


@dataclass
class Tally:
    """Every call one worker made: (start time, seconds it took, method, fell back?)."""

    calls: list[tuple[float, float, str, bool]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def call_loop(client: RankerClient, worker: int, stop: threading.Event, tally: Tally) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        t0 = time.monotonic()
        try:
            if i % 2:
                method = "Score"
                fallback = client.score([ScoreItem(f"w{worker}-{i}-a", "brief answer please"), ScoreItem(f"w{worker}-{i}-b", "an essay on rome")]).fallback
            else:
                method = "NextBatch"
                cands = [
                    Candidate(f"w{worker}-{i}-r", score=0.5, running=True, num_tokens=1),
                    Candidate(f"w{worker}-{i}-p", prompt="brief brief", num_tokens=40),
                    Candidate(f"w{worker}-{i}-q", prompt="essay essay", num_tokens=40, idle_steps=3),
                ]
                batch = client.next_batch(cands, max_num_seqs=2, max_num_batched_tokens=64)
                assert sorted(batch.order) == [0, 1, 2]  # an answer or FCFS, always a full decision
                fallback = batch.fallback
        except BaseException as e:  # noqa: BLE001 - the point is that nothing escapes
            tally.errors.append(e)
            return
        tally.calls.append((t0, time.monotonic() - t0, method, fallback))
        stop.wait(0.001)  # an engine calls once per step, not in a hot loop


@pytest.mark.parametrize("how", ["sigkill", "abrupt-stop"])
def test_a_replica_dying_mid_run_costs_no_call_more_than_its_deadline(how, start_sidecar, sidecar_process, tiny_bundle):
    """sigkill: a replica process dies (crash, OOM kill, node loss: no drain, no NOT_SERVING).
    abrupt-stop: an in-process replica stops with no grace (in-flight calls cancelled)."""
    survivors = [start_sidecar(), start_sidecar()]
    # A replica in its own process can be SIGKILLed like a crashed pod.
    victim = sidecar_process("--model", str(tiny_bundle), "--metrics-port", "0") if how == "sigkill" else start_sidecar()
    replicas = [*survivors, victim]
    client = round_robin_client([r.target for r in replicas])
    stop, tallies = threading.Event(), [Tally() for _ in range(THREADS)]
    workers = [threading.Thread(target=call_loop, args=(client, w, stop, tallies[w]), daemon=True) for w in range(THREADS)]
    start = time.monotonic()
    for w in workers:
        w.start()

    time.sleep(1.5)
    victim_served = requests_served(victim)
    survivors_before = [requests_served(r) for r in survivors]
    killed_at = time.monotonic()
    if how == "sigkill":
        victim.kill()
    else:
        victim.stop(grace=0)
    time.sleep(2.5)
    # Then the rest go too: from here on only fallbacks are possible, and they must be as clean.
    survivors_served = [requests_served(r) for r in survivors]
    all_gone_at = time.monotonic()
    for r in survivors:
        r.stop(grace=0)
    time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join(DEADLINE_S + RETURN_SLACK_S + 5)
    hung = [w.name for w in workers if w.is_alive()]
    client.close()

    calls = [c for t in tallies for c in t.calls]
    errors = [e for t in tallies for e in t.errors]
    answers = sum(1 for c in calls if not c[3])
    fallbacks = len(calls) - answers
    after = [c for c in calls if killed_at < c[0] < all_gone_at]
    none_left = [c for c in calls if c[0] > all_gone_at + DEADLINE_S]
    slowest = max(c[1] for c in calls)
    print(
        f"\n{how}: {len(calls)} calls in {time.monotonic() - start:.1f}s, {answers} answers, {fallbacks} fallbacks, "
        f"{len(after)} after the kill ({sum(1 for c in after if not c[3])} answered), "
        f"{len(none_left)} with no replica left (all fallbacks), slowest {slowest * 1000:.0f} ms"
    )
    assert not hung, f"calls hung: {hung}"
    assert not errors, f"calls raised: {errors!r}"
    assert slowest <= DEADLINE_S + RETURN_SLACK_S, f"a call took {slowest:.2f}s with a {DEADLINE_S}s deadline"
    assert victim_served > 0, "the victim served nothing before it died: the calls were not spread"
    # The client routed around the dead replica: the survivors kept answering after the kill ...
    assert sum(1 for c in after if not c[3]) > 0
    assert all(now > before for now, before in zip(survivors_served, survivors_before))
    # ... and the kill cost at most a handful of fallbacks (in-flight calls; UNAVAILABLE is retried elsewhere).
    lost = sum(1 for c in after if c[3])
    assert lost <= max(5, len(after) // 20), f"{lost} fallbacks of {len(after)} calls after the kill"
    # With every replica gone the engine still gets a decision each call: FCFS / no scores, within the deadline.
    assert none_left and all(c[3] for c in none_left)

// Integration tests against a real sidecar at $LTR_TARGET (tests/test_node_client.py starts
// one with the tiny test bundle, in which "brief" prompts score high and "essay" prompts low).
// Skipped when the variable is unset.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { CircuitBreaker, RankerClient, RankerError, status } from '../index.js';

const TARGET = process.env.LTR_TARGET;
const silent = { warn() {}, info() {} };

/** A port nothing listens on. */
async function deadPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  await new Promise((resolve) => server.close(resolve));
  return port;
}

describe('against a live sidecar', { skip: TARGET ? false : 'LTR_TARGET is not set' }, () => {
  /** @type {RankerClient} */
  let client;
  before(() => {
    // Generous deadline: the CI machine is small and the first call loads the model's session.
    client = new RankerClient(TARGET, { timeoutMs: 10_000, logger: silent });
  });
  after(() => client.close());

  test('Score: brief prompts score higher than essay prompts', async () => {
    const result = await client.score([
      { requestId: 'a', prompt: 'brief answer' },
      { requestId: 'b', prompt: 'essay on rome' },
    ]);
    assert.equal(result.fallback, false, String(result.error));
    assert.equal(result.error, null);
    assert.deepEqual(Object.keys(result.scores).sort(), ['a', 'b']);
    assert.ok(result.scores.a > result.scores.b, JSON.stringify(result.scores));
    assert.match(result.modelVersion, /^tiny-test-ranker@/);
  });

  test('NextBatch: order, budget, preemption and the starvation guard for known scores', async () => {
    const cands = [
      { requestId: 'a', score: 0.5, running: true },
      { requestId: 'b', score: 2.0, numTokens: 30 },
      { requestId: 'c', score: -1.0, numTokens: 20, idleSteps: 800 },
      { requestId: 'd', score: 1.0, running: true, priority: 1 },
    ];
    const budget = { maxNumSeqs: 3, maxNumBatchedTokens: 40 };
    // Server default guard (768 steps): c has waited 800 steps, so it is promoted and runs first.
    const guarded = await client.nextBatch(cands, budget);
    assert.equal(guarded.fallback, false, String(guarded.error));
    assert.deepEqual(guarded.order, [2, 1, 0, 3]);
    assert.equal(guarded.numScheduled, 1);
    assert.deepEqual(guarded.scheduled, [2]);
    assert.deepEqual(guarded.preempted, [0, 3]);
    assert.deepEqual(guarded.idleSteps, [1, 1, 0, 1]);
    assert.deepEqual(guarded.promotedStepsLeft, [0, 0, 31, 0]);
    assert.deepEqual(guarded.protected, [false, false, true, false]);
    assert.deepEqual(guarded.scores, [0.5, 2.0, -1.0, 1.0]);
    assert.deepEqual(guarded.unscored, []);
    assert.match(guarded.modelVersion, /^tiny-test-ranker@/);
    // Guard off for this call: pure shortest-predicted-first under priority.
    const plain = await client.nextBatch(cands, budget, { guard: { thresholdSteps: 0, quantumSteps: 0 } });
    assert.deepEqual(plain.order, [1, 0, 2, 3]);
    assert.equal(plain.numScheduled, 2);
    assert.deepEqual(plain.preempted, [3]);
    assert.deepEqual(plain.promotedStepsLeft, [0, 0, 0, 0]);
  });

  test('NextBatch: the overtake trigger, set per call, promotes a candidate passed over by later arrivals', async () => {
    const budget = { maxNumSeqs: 1, maxNumBatchedTokens: 100 };
    const guard = { thresholdSteps: 0, quantumSteps: 2, maxOvertakes: 2 };
    const first = await client.nextBatch([{ requestId: 'long', score: -5.0, overtakes: 1 }, { requestId: 'short', score: 5.0 }], budget, { guard });
    assert.equal(first.fallback, false, String(first.error));
    assert.deepEqual(first.scheduled, [1]);
    assert.deepEqual(first.overtakes, [2, 0]);
    const second = await client.nextBatch([{ requestId: 'long', score: -5.0, overtakes: 2 }, { requestId: 'later', score: 9.0 }], budget, { guard });
    assert.deepEqual(second.scheduled, [0]);
    assert.deepEqual(second.protected, [true, false]);
    const info = await client.modelInfo();
    assert.equal(info.defaultGuard.maxOvertakes, 0);
  });

  test('NextBatch: a protected running candidate keeps its slot against a better-ranked one', async () => {
    const cands = [
      { requestId: 'long', score: -5.0, running: true, protected: true },
      { requestId: 'short', score: 5.0 },
    ];
    const batch = await client.nextBatch(cands, { maxNumSeqs: 1, maxNumBatchedTokens: 100 });
    assert.equal(batch.fallback, false, String(batch.error));
    assert.deepEqual(batch.scheduled, [0]);
    assert.deepEqual(batch.preempted, []);
    assert.deepEqual(batch.protected, [true, false]);
  });

  test('NextBatch: prompt candidates are scored by the sidecar; bare ones stay unscored', async () => {
    const batch = await client.nextBatch(
      [
        { requestId: 'x', prompt: 'essay essay' },
        { requestId: 'y', prompt: 'brief brief' },
        { requestId: 'never-seen' },
      ],
      { maxNumSeqs: 1, maxNumBatchedTokens: 100 },
    );
    assert.equal(batch.fallback, false, String(batch.error));
    assert.deepEqual(batch.scheduled, [1]);
    assert.deepEqual(batch.order, [1, 0, 2]);
    assert.ok(Number.isFinite(batch.scores[0]) && Number.isFinite(batch.scores[1]));
    assert.ok(batch.scores[1] > batch.scores[0]);
    assert.ok(Number.isNaN(batch.scores[2]));
    assert.deepEqual(batch.unscored, [2]);
  });

  test('ModelInfo describes the tiny bundle', async () => {
    const info = await client.modelInfo();
    assert.ok(info);
    assert.equal(info.name, 'tiny-test-ranker');
    assert.ok(info.version.length > 0);
    assert.match(info.modelSha256, /^[0-9a-f]{64}$/);
    assert.ok(info.maxInputTokens > 0);
    assert.equal(info.executionProvider, 'CPUExecutionProvider');
    assert.deepEqual(info.defaultGuard, { thresholdSteps: 768, quantumSteps: 32, maxOvertakes: 0 });
    assert.equal(typeof info.evaluation, 'object');
  });

  test('INVALID_ARGUMENT: fallback with the error, breaker untouched; raw mode rejects', async () => {
    const dup = [
      { requestId: 'same', prompt: 'brief' },
      { requestId: 'same', prompt: 'essay' },
    ];
    const result = await client.score(dup);
    assert.equal(result.fallback, true);
    assert.deepEqual(result.scores, {});
    assert.ok(result.error instanceof RankerError);
    assert.equal(result.error.code, status.INVALID_ARGUMENT);
    assert.equal(result.error.local, false);
    assert.match(result.error.details, /duplicate/);

    const cands = [{ requestId: 'big', score: 1, numTokens: 500 }, { requestId: 'small', score: 2, priority: -1 }];
    const batch = await client.nextBatch(cands, { maxNumSeqs: 4, maxNumBatchedTokens: 100 });
    assert.equal(batch.fallback, true);
    assert.equal(batch.error?.code, status.INVALID_ARGUMENT);
    assert.match(batch.error.details, /columns\.num_tokens\[0\]/);
    assert.deepEqual(batch.order, [1, 0]);
    assert.equal(batch.numScheduled, 1);
    assert.equal(client.breaker.isOpen, false, 'a refused request must not open the breaker');

    await assert.rejects(client.score(dup, { raw: true }), (e) => e instanceof RankerError && e.code === status.INVALID_ARGUMENT);
    await assert.rejects(
      client.nextBatch(cands, { maxNumSeqs: 0, maxNumBatchedTokens: 100 }, { raw: true }),
      (e) => e instanceof RankerError && e.code === status.INVALID_ARGUMENT && /max_num_seqs/.test(e.details),
    );
    // The client still works afterwards.
    assert.equal((await client.score([{ requestId: 'ok', prompt: 'brief' }])).fallback, false);
  });
});

test('a dead sidecar gives fallbacks, never exceptions, and opens the breaker', async () => {
  const breaker = new CircuitBreaker({ failureThreshold: 2, resetAfterMs: 60_000 });
  const warnings = [];
  const client = new RankerClient(`127.0.0.1:${await deadPort()}`, {
    timeoutMs: 200,
    breaker,
    logger: { warn: (m) => warnings.push(m), info() {} },
  });
  try {
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await client.score([{ requestId: 'a', prompt: 'hi' }]));
    for (const r of results) {
      assert.equal(r.fallback, true);
      assert.deepEqual(r.scores, {});
      assert.ok(r.error instanceof RankerError);
    }
    assert.ok([status.UNAVAILABLE, status.DEADLINE_EXCEEDED].includes(results[0].error.code), results[0].error.message);
    assert.ok(breaker.isOpen);
    assert.equal(breaker.timesOpened, 1);
    assert.equal(results[3].error.local, true, 'an open breaker answers locally');
    assert.equal(warnings.filter((w) => w.includes('unavailable')).length, 1);

    const t0 = performance.now();
    const batch = await client.nextBatch(
      [{ requestId: 'a', running: true }, { requestId: 'b', priority: -1 }, { requestId: 'c' }],
      { maxNumSeqs: 2, maxNumBatchedTokens: 10 },
    );
    assert.ok(performance.now() - t0 < 50, 'an open breaker must not touch the network');
    assert.equal(batch.fallback, true);
    assert.deepEqual(batch.order, [1, 0, 2]);
    assert.deepEqual(batch.scheduled, [1, 0]);
    assert.equal(batch.numScheduled, 2);
    assert.equal(await client.modelInfo(), null);

    // Raw mode skips the breaker and surfaces the transport error.
    await assert.rejects(
      client.modelInfo({ raw: true }),
      (e) => e instanceof RankerError && [status.UNAVAILABLE, status.DEADLINE_EXCEEDED].includes(e.code) && !e.local,
    );
  } finally {
    client.close();
  }
  // After close, calls still resolve to fallbacks.
  const closed = await client.score([{ requestId: 'a', prompt: 'hi' }]);
  assert.equal(closed.fallback, true);
  assert.equal(closed.error.code, status.CANCELLED);
});

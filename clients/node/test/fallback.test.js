// Unit tests that need no sidecar: the FCFS fallback and the circuit breaker.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { CircuitBreaker, fcfsBatch } from '../index.js';

// Decisions of the shared Python policy (ltr_client.ordering.fcfs_decision), from tools/fcfs_vectors.py.
const VECTORS = JSON.parse(readFileSync(new URL('../../../tests/vectors/fcfs_decisions.json', import.meta.url), 'utf8'));

test('fcfsBatch decides every shared vector exactly as the Python policy does', () => {
  assert.ok(VECTORS.cases.length > 50);
  for (const { name, candidates, budget, expected } of VECTORS.cases) {
    const batch = fcfsBatch(candidates, budget);
    const got = Object.fromEntries(Object.keys(expected).map((key) => [key, batch[key]]));
    assert.deepEqual(got, expected, name);
    assert.deepEqual(batch.scheduled, expected.order.slice(0, expected.numScheduled), name);
  }
});

test('fcfsBatch: requests that arrived in the same step do not overtake one another', () => {
  const cands = [{ requestId: 'a', arrivalStep: 4 }, { requestId: 'b', arrivalStep: 4 }, { requestId: 'c', arrivalStep: 5 }];
  const batch = fcfsBatch(cands, { maxNumSeqs: 2, maxNumBatchedTokens: 10 });
  assert.deepEqual(batch.overtakes, [0, 0, 0]);
  const burst = fcfsBatch([{ requestId: 'x', priority: 1, arrivalStep: 0 }, { requestId: 'y', arrivalStep: 0 }], { maxNumSeqs: 1, maxNumBatchedTokens: 10 });
  assert.deepEqual(burst.overtakes, [0, 0], 'y was admitted past x, but they arrived together');
});

test('fcfsBatch: explicit priority, then arrival, within the budget', () => {
  const cands = [
    { requestId: 'a', running: true },
    { requestId: 'b', priority: -1 },
    { requestId: 'c' },
    { requestId: 'd', running: true, numTokens: 5 },
  ];
  const batch = fcfsBatch(cands, { maxNumSeqs: 3, maxNumBatchedTokens: 4 });
  assert.deepEqual(batch.order, [1, 0, 2, 3]);
  assert.equal(batch.numScheduled, 3);
  assert.deepEqual(batch.scheduled, [1, 0, 2]);
  assert.deepEqual(batch.preempted, [3]);
  assert.deepEqual(batch.idleSteps, [0, 0, 0, 1]);
  assert.equal(batch.fallback, true);
  assert.equal(batch.modelVersion, null);
});

test('fcfsBatch: the prefix is strict and promoted candidates keep their band', () => {
  const cands = [
    { requestId: 'a', numTokens: 8 },
    { requestId: 'b', numTokens: 1 },
    { requestId: 'c', promotedStepsLeft: 2, idleSteps: 7 },
  ];
  const batch = fcfsBatch(cands, { maxNumSeqs: 8, maxNumBatchedTokens: 5 });
  assert.deepEqual(batch.order, [2, 0, 1]);
  assert.equal(batch.numScheduled, 1, 'a does not fit, so b may not overtake it');
  assert.deepEqual(batch.idleSteps, [1, 1, 0]);
  assert.deepEqual(batch.promotedStepsLeft, [0, 0, 1]);
  assert.deepEqual(fcfsBatch([], { maxNumSeqs: 1, maxNumBatchedTokens: 1 }).order, []);
});

test('fcfsBatch: a candidate left out counts one overtake per later arrival admitted', () => {
  const cands = [
    { requestId: 'a', priority: 1, overtakes: 2 },
    { requestId: 'b' },
    { requestId: 'c', running: true },
  ];
  const batch = fcfsBatch(cands, { maxNumSeqs: 2, maxNumBatchedTokens: 10 });
  assert.deepEqual(batch.scheduled, [1, 2]);
  assert.deepEqual(batch.overtakes, [3, 0, 0], 'b was admitted past a; c was already running');
});

test('fcfsBatch: a protected running candidate keeps the top band; a protected waiting one does not', () => {
  const cands = [
    { requestId: 'a' },
    { requestId: 'b', protected: true },
    { requestId: 'c', running: true, protected: true },
  ];
  const batch = fcfsBatch(cands, { maxNumSeqs: 1, maxNumBatchedTokens: 10 });
  assert.deepEqual(batch.order, [2, 0, 1]);
  assert.deepEqual(batch.preempted, []);
  assert.deepEqual(batch.protected, [false, true, true]);
});

test('CircuitBreaker opens after the threshold and lets one trial through after the reset period', () => {
  let now = 0;
  const breaker = new CircuitBreaker({ failureThreshold: 2, resetAfterMs: 100, clock: () => now });
  assert.equal(breaker.recordFailure(), false);
  assert.equal(breaker.recordFailure(), true);
  assert.ok(breaker.isOpen && !breaker.allow());
  now = 150;
  assert.equal(breaker.allow(), true, 'half-open: one trial');
  assert.equal(breaker.allow(), false, 'only one trial at a time');
  assert.equal(breaker.recordFailure(), false, 'a failed trial re-opens without counting a new opening');
  assert.ok(breaker.isOpen && !breaker.allow());
  now = 300;
  assert.ok(breaker.allow());
  breaker.recordSuccess();
  assert.ok(!breaker.isOpen && breaker.allow());
  assert.equal(breaker.timesOpened, 1);
});

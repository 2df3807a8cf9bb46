// @ltr-sidecar/client: call the ltr-sidecar ranker from Node.js, never fail the engine.
//
// One RankerClient holds one gRPC channel for its lifetime, puts a deadline on
// every call, lets gRPC retry UNAVAILABLE with backoff (a service-config retry
// policy) and keeps a circuit breaker. Every failure (sidecar down, slow,
// overloaded, or a bad request) resolves to a well-defined fallback instead of
// rejecting: no scores for score(), first-come-first-served for nextBatch(),
// null for modelInfo(). The fallback carries the error; `raw: true` rejects
// with it instead. This mirrors clients/python/ltr_client/client.py.

import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** The default sidecar address. */
export const DEFAULT_TARGET = '127.0.0.1:50051';

/** The API's .proto file, resolved relative to this module (the repo's proto/ directory). */
export const PROTO_PATH = fileURLToPath(new URL('../../proto/ltr/v1/ranker.proto', import.meta.url));

/** gRPC status codes, re-exported for comparing with `RankerError.code`. */
export const status = grpc.status;

/** gRPC channel credentials factories (e.g. `credentials.createSsl(rootCert)`), re-exported. */
export const credentials = grpc.credentials;

// Failures that say "the sidecar cannot help right now": they count toward
// opening the breaker. Others (INVALID_ARGUMENT) are the caller's bug and only fall back.
const UNHEALTHY = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.INTERNAL,
  grpc.status.UNKNOWN,
]);

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/** @type {Map<string, any>} */
const serviceCache = new Map();

/**
 * Load the RankerService client constructor from a .proto file (cached per path).
 * @param {string} [protoPath] defaults to {@link PROTO_PATH}
 * @returns {typeof grpc.Client} the generated client class for ltr.v1.RankerService
 */
export function loadRankerService(protoPath = PROTO_PATH) {
  let service = serviceCache.get(protoPath);
  if (!service) {
    const definition = protoLoader.loadSync(protoPath, {
      keepCase: true,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    service = /** @type {any} */ (grpc.loadPackageDefinition(definition)).ltr.v1.RankerService;
    serviceCache.set(protoPath, service);
  }
  return service;
}

/**
 * A failed call. `code` is a gRPC status code (see {@link status}); `codeName` its name.
 * `local` is true when the sidecar was never asked (breaker open, client closed, bad input).
 */
export class RankerError extends Error {
  /**
   * @param {string} method the RPC, e.g. "Score"
   * @param {number} code gRPC status code
   * @param {string} details the server's (or the client's) message
   * @param {{local?: boolean, metadata?: grpc.Metadata, cause?: unknown}} [extra]
   */
  constructor(method, code, details, extra = {}) {
    super(`${method} failed: ${CODE_NAMES[code] ?? code}: ${details}`, extra.cause ? { cause: extra.cause } : undefined);
    this.name = 'RankerError';
    /** @type {string} */
    this.method = method;
    /** @type {number} */
    this.code = code;
    /** @type {string} */
    this.codeName = CODE_NAMES[code] ?? String(code);
    /** @type {string} */
    this.details = details;
    /** @type {boolean} */
    this.local = Boolean(extra.local);
    /** @type {grpc.Metadata | undefined} */
    this.metadata = extra.metadata;
  }
}

/**
 * A circuit breaker, so that a dead sidecar costs the engine nothing.
 *
 * After `failureThreshold` consecutive failures it opens: calls are not attempted
 * and the caller falls back at once. After `resetAfterMs` one trial call is let
 * through (half-open); success closes it, failure opens it for another period.
 */
export class CircuitBreaker {
  /**
   * @param {{failureThreshold?: number, resetAfterMs?: number, clock?: () => number}} [options]
   *   clock returns milliseconds (default performance.now)
   */
  constructor({ failureThreshold = 3, resetAfterMs = 5000, clock = () => performance.now() } = {}) {
    this.failureThreshold = failureThreshold;
    this.resetAfterMs = resetAfterMs;
    this.clock = clock;
    this.failures = 0;
    /** @type {number | null} */
    this.openedAt = null;
    this.trialInFlight = false;
    this.timesOpened = 0;
  }

  /** @returns {boolean} true while open (including half-open). */
  get isOpen() {
    return this.openedAt !== null;
  }

  /** @returns {boolean} true if a call may be attempted now. */
  allow() {
    if (this.openedAt === null) return true;
    if (this.trialInFlight || this.clock() - this.openedAt < this.resetAfterMs) return false;
    this.trialInFlight = true; // half-open: exactly one trial call
    return true;
  }

  /** Record an answer from the sidecar: closes the breaker. */
  recordSuccess() {
    this.failures = 0;
    this.openedAt = null;
    this.trialInFlight = false;
  }

  /** Count a failure. @returns {boolean} true if this one opened the breaker. */
  recordFailure() {
    this.failures += 1;
    const wasOpen = this.openedAt !== null;
    if (wasOpen || this.failures >= this.failureThreshold) {
      this.openedAt = this.clock();
      this.trialInFlight = false;
      if (!wasOpen) {
        this.timesOpened += 1;
        return true;
      }
    }
    return false;
  }
}

/**
 * gRPC service config: retry UNAVAILABLE with exponential backoff (when maxAttempts >= 2).
 * @param {number} [maxAttempts]
 * @returns {string} JSON for the `grpc.service_config` channel option
 */
export function serviceConfig(maxAttempts = 3) {
  /** @type {Record<string, unknown>} */
  const config = {};
  if (maxAttempts >= 2) {
    config.methodConfig = [
      {
        name: [{ service: 'ltr.v1.RankerService' }],
        retryPolicy: {
          maxAttempts,
          initialBackoff: '0.01s',
          maxBackoff: '0.2s',
          backoffMultiplier: 2,
          retryableStatusCodes: ['UNAVAILABLE'],
        },
      },
    ];
  }
  return JSON.stringify(config);
}

/**
 * @typedef {object} ScoreItem One request to score: an id and its prompt, or token ids from the bundle's tokenizer.
 * @property {string} requestId unique within one call; also the sidecar's score-cache key
 * @property {string} [prompt]
 * @property {number[]} [tokenIds] used when `prompt` is absent
 */

/**
 * @typedef {object} Scores
 * @property {Record<string, number>} scores by request id; higher = shorter predicted output. Empty on fallback.
 * @property {string | null} modelVersion "name@version", null on fallback
 * @property {boolean} fallback true when the sidecar did not answer
 * @property {RankerError | null} error why it fell back (null on success or for an empty input)
 */

/**
 * @typedef {object} Candidate One request the engine could run this step (see ltr.v1.Candidate).
 * @property {string} requestId unique within one call
 * @property {number | null} [score] from an earlier score(); absent = score `prompt`, or look up the cache by id
 * @property {string} [prompt] the prompt to score now when there is no score
 * @property {boolean} [running] true if it holds KV cache now (default false)
 * @property {number} [numTokens] tokens it needs this step (default 1)
 * @property {number} [priority] explicit user priority, lower first (default 0)
 * @property {number} [idleSteps] starvation counter from the previous nextBatch (default 0)
 * @property {number} [promotedStepsLeft] starvation counter from the previous nextBatch (default 0)
 * @property {boolean} [protected] from the previous nextBatch: promoted once, so never preempted for rank while running
 * @property {number} [overtakes] from the previous nextBatch: later arrivals admitted ahead of it (default 0)
 * @property {number} [arrivalStep] when it arrived (e.g. the engine step), on every candidate or on none: only a
 *   candidate that arrived in a later step overtakes it, so a burst's requests do not overtake one another
 */

/**
 * @typedef {object} Budget What the engine can run in one step; both positive.
 * @property {number} maxNumSeqs
 * @property {number} maxNumBatchedTokens
 */

/**
 * @typedef {object} StarvationGuard
 * @property {number} thresholdSteps promote a candidate left out this many consecutive steps; 0: never
 * @property {number} quantumSteps it stays promoted for this many executed steps; 0 disables the guard
 * @property {number} [maxOvertakes] also promote a waiting candidate once this many later arrivals were admitted ahead of it; 0 (default): never
 */

/**
 * @typedef {object} Batch A NextBatch decision; indices refer to the candidates as given.
 * @property {number[]} order every candidate index, highest priority first
 * @property {number} numScheduled the first numScheduled entries of order fit the budget
 * @property {number[]} scheduled order.slice(0, numScheduled): run these
 * @property {number[]} preempted running candidates that did not fit
 * @property {number[]} idleSteps updated counters, in candidate order: send them back next step
 * @property {number[]} promotedStepsLeft updated counters, in candidate order
 * @property {boolean[]} protected in candidate order: send back as each candidate's `protected`
 * @property {number[]} overtakes updated counts, in candidate order: send back as each candidate's `overtakes`
 * @property {number[]} scores the score used per candidate (NaN when unscored; all NaN on fallback)
 * @property {number[]} unscored indices of candidates that had no score
 * @property {string | null} modelVersion null on fallback
 * @property {boolean} fallback true when this is the local FCFS decision
 * @property {RankerError | null} error why it fell back
 */

/**
 * @typedef {object} ModelInfo
 * @property {string} name
 * @property {string} version
 * @property {string} modelSha256
 * @property {number} maxInputTokens
 * @property {string} executionProvider
 * @property {Record<string, number>} evaluation
 * @property {string} license
 * @property {StarvationGuard | null} defaultGuard
 */

/**
 * @typedef {object} ClientOptions
 * @property {number} [timeoutMs] deadline of every call (default 500)
 * @property {grpc.ChannelCredentials} [credentials] default insecure
 * @property {CircuitBreaker} [breaker] default `new CircuitBreaker()`
 * @property {number} [maxAttempts] attempts for UNAVAILABLE, incl. the first (default 3; < 2 disables retries)
 * @property {boolean} [raw] reject with RankerError instead of falling back, and skip the breaker (default false)
 * @property {number} [maxMessageBytes] send/receive limit (default 64 MiB)
 * @property {Record<string, unknown>} [channelOptions] extra gRPC channel options
 * @property {{warn: (...a: unknown[]) => void, info?: (...a: unknown[]) => void} | null} [logger] default console; null = silent
 * @property {string} [protoPath] default {@link PROTO_PATH}
 */

/**
 * @typedef {object} CallOptions
 * @property {number} [timeoutMs] this call's deadline, overriding the client's
 * @property {boolean} [raw] this call's raw mode, overriding the client's
 */

const clampInt = (/** @type {unknown} */ x, /** @type {number} */ lo, /** @type {number} */ hi, /** @type {number} */ dflt) => {
  if (x === undefined || x === null) return dflt;
  const v = Math.trunc(Number(x));
  return Number.isNaN(v) ? dflt : Math.min(hi, Math.max(lo, v));
};
const u32 = (/** @type {unknown} */ x, /** @type {number} */ dflt) => clampInt(x, 0, 0xffffffff, dflt);
const i32 = (/** @type {unknown} */ x) => clampInt(x, -0x80000000, 0x7fffffff, 0);

/**
 * The fallback decision, computed locally: the shared policy (`ltr_client.ordering.fcfs_decision`)
 * with no scores and no starvation guard. That is explicit priority, then arrival order, within the
 * budget; candidates already promoted, and protected ones that are running, keep the top band; the
 * counters advance as NextBatch advances them. tests/vectors/fcfs_decisions.json, generated from the
 * Python policy, holds the decisions this must reproduce (test/fallback.test.js).
 * @param {Candidate[]} candidates in arrival order
 * @param {Budget} budget a budget below 1 counts as 1
 * @returns {Batch}
 */
export function fcfsBatch(candidates, budget) {
  const n = candidates.length;
  const maxSeqs = Math.max(1, u32(budget?.maxNumSeqs, 1));
  const maxTokens = Math.max(1, u32(budget?.maxNumBatchedTokens, 1));
  const priority = candidates.map((c) => i32(c.priority));
  const promoted = candidates.map((c) => u32(c.promotedStepsLeft, 0));
  const isProtected = candidates.map((c) => Boolean(c.protected));
  const band = candidates.map((c, i) => (promoted[i] > 0 || (isProtected[i] && c.running) ? 0 : 1));
  const order = Array.from({ length: n }, (_, i) => i).sort(
    (a, b) => priority[a] - priority[b] || band[a] - band[b] || a - b,
  );
  // The prefix is strict: a candidate that does not fit ends the batch.
  let numScheduled = 0;
  let tokens = 0;
  for (const i of order) {
    const t = Math.max(1, u32(candidates[i].numTokens, 1));
    if (numScheduled + 1 > maxSeqs || tokens + t > maxTokens) break;
    numScheduled += 1;
    tokens += t;
  }
  const scheduled = order.slice(0, numScheduled);
  const isScheduled = new Uint8Array(n);
  for (const i of scheduled) isScheduled[i] = 1;
  return {
    order,
    numScheduled,
    scheduled,
    preempted: order.slice(numScheduled).filter((i) => Boolean(candidates[i].running)),
    idleSteps: candidates.map((c, i) => (isScheduled[i] ? 0 : u32(c.idleSteps, 0) + 1)),
    promotedStepsLeft: promoted.map((p, i) => (isScheduled[i] && p > 0 ? p - 1 : p)),
    protected: isProtected,
    overtakes: overtakesAfter(candidates, isScheduled),
    scores: new Array(n).fill(NaN),
    unscored: Array.from({ length: n }, (_, i) => i),
    modelVersion: null,
    fallback: true,
    error: null,
  };
}

/**
 * Each candidate's arrival key: its `arrivalStep` when every candidate has one, else its position.
 * @param {Candidate[]} candidates
 * @returns {number[] | null} the arrival steps, or null for positions
 */
function arrivalSteps(candidates) {
  const given = candidates.map((c) => c.arrivalStep !== undefined && c.arrivalStep !== null);
  if (!given.some(Boolean)) return null;
  const missing = given.indexOf(false);
  if (missing >= 0) throw new Error(`candidates[${missing}].arrivalStep: set it on every candidate or on none`);
  return candidates.map((c) => Math.max(0, Math.trunc(Number(c.arrivalStep))));
}

/**
 * Overtake counts after a decision: a candidate left out is overtaken once by every admission
 * (waiting -> scheduled) of a candidate that arrived later (a greater arrival step, or without
 * arrival steps a later position); scheduled candidates restart at 0.
 * @param {Candidate[]} candidates in arrival order
 * @param {Uint8Array} isScheduled
 * @returns {number[]}
 */
function overtakesAfter(candidates, isScheduled) {
  let arrival;
  try {
    arrival = arrivalSteps(candidates) ?? candidates.map((_, i) => i);
  } catch {
    arrival = candidates.map((_, i) => i); // a partial column is the caller's error; the fallback still answers
  }
  const admitted = arrival.filter((_, i) => isScheduled[i] && !candidates[i].running).sort((a, b) => a - b);
  const laterThan = (/** @type {number} */ step) => {
    let lo = 0;
    let hi = admitted.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (admitted[mid] <= step) lo = mid + 1;
      else hi = mid;
    }
    return admitted.length - lo;
  };
  return candidates.map((c, i) => (isScheduled[i] ? 0 : u32(c.overtakes, 0) + laterThan(arrival[i])));
}

/**
 * The NextBatch request with candidates as columns (far cheaper to encode than one message each).
 * Columns whose values are all the default are left empty.
 * @param {Candidate[]} candidates
 * @param {Budget} budget
 * @param {StarvationGuard} [guard]
 */
function nextBatchRequest(candidates, budget, guard) {
  const n = candidates.length;
  const requestIds = new Array(n);
  const scores = new Array(n);
  const prompts = new Array(n);
  const running = new Array(n);
  const numTokens = new Array(n);
  const priorities = new Array(n);
  const idleSteps = new Array(n);
  const promoted = new Array(n);
  const isProtected = new Array(n);
  const overtakes = new Array(n);
  const arrivals = arrivalSteps(candidates);
  let anyScore = false, anyPrompt = false, anyRunning = false, anyTokens = false;
  let anyPriority = false, anyIdle = false, anyPromoted = false, anyProtected = false, anyOvertakes = false;
  for (let i = 0; i < n; i++) {
    const c = candidates[i];
    requestIds[i] = String(c.requestId ?? '');
    const s = c.score === undefined || c.score === null ? NaN : Number(c.score);
    scores[i] = s;
    anyScore ||= !Number.isNaN(s);
    prompts[i] = c.prompt ? String(c.prompt) : '';
    anyPrompt ||= prompts[i] !== '';
    running[i] = Boolean(c.running);
    anyRunning ||= running[i];
    numTokens[i] = u32(c.numTokens, 1);
    anyTokens ||= numTokens[i] !== 1;
    priorities[i] = i32(c.priority);
    anyPriority ||= priorities[i] !== 0;
    idleSteps[i] = u32(c.idleSteps, 0);
    anyIdle ||= idleSteps[i] !== 0;
    promoted[i] = u32(c.promotedStepsLeft, 0);
    anyPromoted ||= promoted[i] !== 0;
    isProtected[i] = Boolean(c.protected);
    anyProtected ||= isProtected[i];
    overtakes[i] = u32(c.overtakes, 0);
    anyOvertakes ||= overtakes[i] !== 0;
  }
  /** @type {Record<string, unknown>} */
  const request = {
    columns: {
      request_ids: requestIds,
      scores: anyScore ? scores : [],
      prompts: anyPrompt ? prompts : [],
      running: anyRunning ? running : [],
      num_tokens: anyTokens ? numTokens : [],
      priorities: anyPriority ? priorities : [],
      idle_steps: anyIdle ? idleSteps : [],
      promoted_steps_left: anyPromoted ? promoted : [],
      protected: anyProtected ? isProtected : [],
      overtakes: anyOvertakes ? overtakes : [],
      arrival_steps: arrivals ?? [],
    },
    budget: {
      max_num_seqs: u32(budget?.maxNumSeqs, 0),
      max_num_batched_tokens: u32(budget?.maxNumBatchedTokens, 0),
    },
  };
  if (guard) {
    request.guard = {
      threshold_steps: u32(guard.thresholdSteps, 0),
      quantum_steps: u32(guard.quantumSteps, 0),
      max_overtakes: u32(guard.maxOvertakes, 0),
    };
  }
  return request;
}

/**
 * @param {ScoreItem[]} items
 */
function scoreRequest(items) {
  return {
    items: items.map((it) =>
      it.prompt !== undefined && it.prompt !== null
        ? { request_id: String(it.requestId ?? ''), prompt: String(it.prompt) }
        : { request_id: String(it.requestId ?? ''), token_ids: { ids: Array.from(it.tokenIds ?? [], Number) } },
    ),
  };
}

/** Client for ltr.v1.RankerService. Create one per target and reuse it; call close() when done. */
export class RankerClient {
  /**
   * @param {string} [target] "host:port" (default 127.0.0.1:50051)
   * @param {ClientOptions} [options]
   */
  constructor(target = DEFAULT_TARGET, options = {}) {
    const {
      timeoutMs = 500,
      credentials = grpc.credentials.createInsecure(),
      breaker = new CircuitBreaker(),
      maxAttempts = 3,
      raw = false,
      maxMessageBytes = 64 << 20,
      channelOptions = {},
      logger = console,
      protoPath = PROTO_PATH,
    } = options;
    this.target = target;
    this.timeoutMs = timeoutMs;
    this.breaker = breaker;
    this.raw = raw;
    this.logger = logger;
    this.closed = false;
    const Service = loadRankerService(protoPath);
    /** @type {any} */
    this.stub = new Service(target, credentials, {
      'grpc.enable_retries': 1,
      'grpc.service_config': serviceConfig(maxAttempts),
      'grpc.max_receive_message_length': maxMessageBytes,
      'grpc.max_send_message_length': maxMessageBytes,
      ...channelOptions,
    });
  }

  /**
   * Score requests by predicted output length. Resolves to `{fallback: true, scores: {}}` on any failure.
   * @param {ScoreItem[]} items
   * @param {CallOptions} [options]
   * @returns {Promise<Scores>}
   */
  async score(items, options = {}) {
    /** @param {RankerError | null} error @returns {Scores} */
    const fallback = (error) => ({ scores: {}, modelVersion: null, fallback: true, error });
    const raw = options.raw ?? this.raw;
    if (!raw && (!items || items.length === 0)) return fallback(null);
    const resp = await this._call('Score', () => scoreRequest(items), options);
    if (resp instanceof RankerError) return fallback(resp);
    return {
      scores: Object.fromEntries(resp.scores.map((/** @type {any} */ s) => [s.request_id, s.score])),
      modelVersion: resp.model_version,
      fallback: false,
      error: null,
    };
  }

  /**
   * Order the candidates and pick the prefix that fits the budget. Resolves to the local
   * FCFS decision ({@link fcfsBatch}) on any failure.
   * @param {Candidate[]} candidates in arrival order
   * @param {Budget} budget
   * @param {CallOptions & {guard?: StarvationGuard}} [options] guard overrides the server's for this call
   * @returns {Promise<Batch>}
   */
  async nextBatch(candidates, budget, options = {}) {
    /** @param {RankerError | null} error @returns {Batch} */
    const fallback = (error) => ({ ...fcfsBatch(candidates ?? [], budget), error });
    const raw = options.raw ?? this.raw;
    if (!raw && (!candidates || candidates.length === 0)) return fallback(null);
    const resp = await this._call('NextBatch', () => nextBatchRequest(candidates, budget, options.guard), options);
    if (resp instanceof RankerError) return fallback(resp);
    const order = resp.order;
    return {
      order,
      numScheduled: resp.num_scheduled,
      scheduled: order.slice(0, resp.num_scheduled),
      preempted: resp.preempted,
      idleSteps: resp.idle_steps,
      promotedStepsLeft: resp.promoted_steps_left,
      protected: resp.protected,
      overtakes: resp.overtakes,
      scores: resp.scores,
      unscored: resp.unscored,
      modelVersion: resp.model_version,
      fallback: false,
      error: null,
    };
  }

  /**
   * Describe the serving model. Resolves to null on any failure (rejects in raw mode).
   * @param {CallOptions} [options]
   * @returns {Promise<ModelInfo | null>}
   */
  async modelInfo(options = {}) {
    const resp = await this._call('ModelInfo', () => ({}), options);
    if (resp instanceof RankerError) return null;
    return {
      name: resp.name,
      version: resp.version,
      modelSha256: resp.model_sha256,
      maxInputTokens: resp.max_input_tokens,
      executionProvider: resp.execution_provider,
      evaluation: { ...resp.evaluation },
      license: resp.license,
      defaultGuard: resp.default_guard
        ? {
            thresholdSteps: resp.default_guard.threshold_steps,
            quantumSteps: resp.default_guard.quantum_steps,
            maxOvertakes: resp.default_guard.max_overtakes,
          }
        : null,
    };
  }

  /** Close the channel. Later calls fall back (or reject with CANCELLED in raw mode). */
  close() {
    if (!this.closed) {
      this.closed = true;
      this.stub.close();
    }
  }

  /**
   * One unary call with a deadline. In raw mode rejects with RankerError; otherwise resolves to
   * the response or to the RankerError, after consulting and updating the breaker.
   * @param {string} method
   * @param {() => object} build
   * @param {CallOptions} options
   * @returns {Promise<any>}
   */
  async _call(method, build, options) {
    const raw = options.raw ?? this.raw;
    const fail = (/** @type {RankerError} */ error) => {
      if (raw) throw error;
      return error;
    };
    let request;
    try {
      request = build();
    } catch (e) {
      return fail(new RankerError(method, grpc.status.INVALID_ARGUMENT, `bad input: ${e}`, { local: true, cause: e }));
    }
    if (this.closed) return fail(new RankerError(method, grpc.status.CANCELLED, 'client is closed', { local: true }));
    if (!raw && !this.breaker.allow()) {
      return fail(new RankerError(method, grpc.status.UNAVAILABLE, 'circuit breaker open; sidecar not called', { local: true }));
    }
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    try {
      const resp = await new Promise((resolve, reject) => {
        this.stub[method](request, { deadline: new Date(Date.now() + timeoutMs) }, (/** @type {any} */ err, /** @type {any} */ r) =>
          err ? reject(err) : resolve(r),
        );
      });
      if (!raw) this._succeeded();
      return resp;
    } catch (e) {
      const err = /** @type {any} */ (e);
      const code = typeof err?.code === 'number' ? err.code : grpc.status.UNKNOWN;
      const error = new RankerError(method, code, err?.details ?? String(err), { metadata: err?.metadata, cause: e });
      if (!raw) this._failed(error);
      return fail(error);
    }
  }

  /** @param {RankerError} error */
  _failed(error) {
    if (!UNHEALTHY.has(error.code)) {
      // The sidecar answered, so it is healthy: the request was the problem.
      this.breaker.recordSuccess();
      this.logger?.warn(`ltr sidecar refused ${error.method} (${error.codeName}): ${error.details}; using the fallback`);
      return;
    }
    if (this.breaker.recordFailure()) {
      this.logger?.warn(
        `ltr sidecar at ${this.target} is unavailable (${error.codeName}); scheduling falls back to FCFS until it answers again`,
      );
    }
  }

  _succeeded() {
    if (this.breaker.isOpen) this.logger?.info?.(`ltr sidecar at ${this.target} answers again`);
    this.breaker.recordSuccess();
  }
}

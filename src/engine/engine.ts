import { performance } from 'node:perf_hooks';
import type { SessionStore } from '../cache/session-store.ts';
import { NO_WINDOW, type Session, type Tier, type WindowState } from '../cache/session.ts';
import { dropAndShift, gatherRows, extractRow, prefixOf, rotaryInverseFrequencies } from '../cache/kv-ops.ts';
import { reusableSlots, type WindowPolicy } from '../cache/window.ts';
import { halfArrayToFloat } from '../lib/float16.ts';
import { silentLogger, type Logger } from '../lib/logger.ts';
import { emptyKv, type Decoder, type KvData, type KvTensors, type PositionEncoding } from '../model/types.ts';
import type { TokenDecoder } from './detokenizer.ts';
import { Sampler } from './sampler.ts';
import { Sequence } from './sequence.ts';
import type { EngineError, FinishReason, GenerationRequest, SubmitResult } from './types.ts';

export interface EngineModel {
  decoder: Decoder;
  tokenizer: TokenDecoder;
  /** Ids below this are valid inputs and sampling candidates. */
  vocabSize: number;
  eosTokenIds: readonly number[];
  positionEncoding: PositionEncoding;
}

export interface EngineOptions {
  maxBatchSize: number;
  maxQueue: number;
  /** Most prompt tokens prefilled per loop iteration, so running streams keep getting tokens. */
  prefillChunkTokens: number;
  /** A request still queued after this long is refused with cache_full / queue timeout. */
  queueTimeoutMs: number;
  window: WindowPolicy;
}

/** Hooks for telemetry; the engine itself knows nothing of spans or metrics. */
export interface EngineObserver {
  requestQueued?(sequence: Sequence): void;
  requestStarted?(sequence: Sequence, info: { restoredFrom: Tier; restoreMs: number }): void;
  prefillChunk?(sequence: Sequence, info: { tokens: number; kvTokens: number; startMs: number; durationMs: number }): void;
  decodeStep?(info: { sequences: readonly Sequence[]; kvTokens: number; startMs: number; durationMs: number }): void;
  windowDrop?(sequence: Sequence, info: { droppedTokens: number; strategy: WindowPolicy['strategy'] }): void;
  requestFinished?(sequence: Sequence): void;
}

/** Moves a session's KV from a lower tier (int8, disk) back to hot; leaves it evicted when it cannot. */
export type TierRestorer = (session: Session) => Promise<void>;

/** What a request reuses of its session's cache. */
interface CachePlan {
  /** Cache slots kept (a prefix of the session's cache). */
  keep: number;
  window: WindowState;
  /** Tokens to prefill are pending[pendingIndex..]. */
  pending: number[];
  pendingIndex: number;
  cachedTokens: number;
}

interface DecodeBatch {
  rows: Sequence[];
  /** `// [rows.length, numKvHeads, length, headDim]`, row r left-padded by padding[r] slots. */
  kv: KvTensors;
  padding: number[];
}

export interface EngineStats {
  running: number;
  waiting: number;
  batchSize: number;
}

function commonPrefixLength(a: readonly number[], b: readonly number[], limit: number): number {
  const n = Math.min(a.length, b.length, limit);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * The scheduler and generation loop. One loop serves every session: each iteration runs one batched
 * decode step for all streams that are generating, then at most one prefill chunk, so a long prompt
 * never stalls running streams for more than a chunk.
 */
export class Engine {
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private batch: DecodeBatch | null = null;
  private looping = false;
  private draining = false;
  private wakeLoop: (() => void) | null = null;
  /** Something happened since the loop last looked (a submit, an abort, freed room): do not sleep. */
  private woken = false;
  private readonly sampler: Sampler;
  private readonly logitsRow: Float32Array;
  private readonly inverseFrequencies: Float32Array | null;
  private restorer: TierRestorer | null = null;
  private readonly observers: EngineObserver[] = [];
  private readonly idleWaiters: Array<() => void> = [];

  constructor(
    readonly model: EngineModel,
    readonly store: SessionStore,
    readonly options: EngineOptions,
    private readonly logger: Logger = silentLogger,
    private readonly now: () => number = Date.now,
  ) {
    this.sampler = new Sampler(model.vocabSize);
    this.logitsRow = new Float32Array(model.vocabSize);
    const positions = model.positionEncoding;
    this.inverseFrequencies = positions.kind === 'rotary' ? rotaryInverseFrequencies(positions.theta, positions.rotaryDim) : null;
    if (options.window.strategy === 'shift' && !this.inverseFrequencies) throw new Error('shift strategy needs a rotary model');
  }

  get layout() {
    return this.model.decoder.io.kv;
  }

  get contextLength(): number {
    return this.options.window.capacity;
  }

  setTierRestorer(restorer: TierRestorer): void {
    this.restorer = restorer;
  }

  addObserver(observer: EngineObserver): void {
    this.observers.push(observer);
  }

  stats(): EngineStats {
    return { running: this.running.length, waiting: this.waiting.length, batchSize: this.batch?.rows.length ?? 0 };
  }

  /**
   * Queues a generation. Problems visible up front (bad tokens, busy or unknown session, full queue,
   * context overflow) come back at once as values; later failures arrive as the stream's end event.
   */
  async submit(request: GenerationRequest): Promise<SubmitResult> {
    const fail = (error: EngineError): SubmitResult => ({ ok: false, error });
    if (this.draining) return fail({ kind: 'shutting_down', message: 'the server is shutting down', retryAfterSeconds: 1 });
    const badToken = request.input.find((t) => !Number.isInteger(t) || t < 0 || t >= this.model.vocabSize);
    if (badToken !== undefined) {
      return fail({ kind: 'invalid_request', param: 'prompt', message: `token id ${badToken} is outside the vocabulary [0, ${this.model.vocabSize})` });
    }
    if (!(Number.isInteger(request.maxTokens) && request.maxTokens >= 0)) {
      return fail({ kind: 'invalid_request', param: 'max_tokens', message: 'max_tokens must be a non-negative integer' });
    }

    let session: Session | undefined;
    if (request.sessionId !== undefined) {
      session = await this.store.find(request.owner, request.sessionId);
      if (!session) {
        if (request.onUnknownSession === 'fail') return fail({ kind: 'session_not_found', param: 'session_id', message: `session ${request.sessionId} not found` });
        // Another submit may have created it while this one awaited the lookup.
        session = this.store.get(request.owner, request.sessionId) ?? this.store.create(request.owner, request.sessionId);
      }
    } else {
      session = this.store.create(request.owner, undefined, true);
    }

    const sequenceLength = request.mode === 'append' ? session.tokens.length + request.input.length : request.input.length;
    if (sequenceLength === 0) return fail({ kind: 'invalid_request', param: 'prompt', message: 'the prompt is empty' });
    if (request.truncation === 'error' && sequenceLength + request.maxTokens > this.contextLength) {
      return fail({
        kind: 'context_length_exceeded',
        param: 'max_tokens',
        message:
          `This model's maximum context length is ${this.contextLength} tokens. However, you requested ` +
          `${sequenceLength + request.maxTokens} tokens (${sequenceLength} in the prompt, ${request.maxTokens} in the completion). ` +
          'Please reduce the length of the prompt or completion, or allow truncation.',
      });
    }
    if (this.waiting.length >= this.options.maxQueue) {
      return fail({ kind: 'queue_full', message: `the request queue is full (${this.options.maxQueue} waiting)`, retryAfterSeconds: 1 });
    }
    if (!this.store.acquire(session)) {
      return fail({ kind: 'session_busy', param: 'session_id', message: `session ${session.id} is busy with another request` });
    }

    const sequence = new Sequence(request, session, this.model.tokenizer, this.model.eosTokenIds, this.now());
    this.waiting.push(sequence);
    request.signal?.addEventListener('abort', () => this.wake(), { once: true });
    for (const o of this.observers) o.requestQueued?.(sequence);
    this.kick();
    return { ok: true, sessionId: session.id, events: sequence.events };
  }

  /** Refuse new work, let running and queued requests finish for up to `timeoutMs`, then cancel the rest. */
  async drain(timeoutMs: number): Promise<void> {
    this.draining = true;
    if (this.running.length === 0 && this.waiting.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const result = await Promise.race([idle, timeout]);
    clearTimeout(timer);
    if (result === 'timeout') {
      const error: EngineError = { kind: 'shutting_down', message: 'the server shut down before the request finished' };
      for (const sequence of [...this.waiting, ...this.running]) sequence.abortReason = error;
      this.wake();
      await idle;
    }
  }

  private kick(): void {
    if (this.looping) {
      this.wake();
      return;
    }
    this.looping = true;
    void this.loop();
  }

  private wake(): void {
    this.woken = true;
    const wake = this.wakeLoop;
    this.wakeLoop = null;
    wake?.();
  }

  private async loop(): Promise<void> {
    try {
      while (this.waiting.length > 0 || this.running.length > 0) {
        this.woken = false;
        this.reapCancelled();
        await this.admit();
        const progressed = await this.iterate();
        if (!progressed && (this.waiting.length > 0 || this.running.length > 0)) await this.sleepUntilWoken();
      }
    } catch (error) {
      this.logger.error({ err: (error as Error).message, stack: (error as Error).stack }, 'engine loop failed');
      const engineError: EngineError = { kind: 'internal', message: 'internal error in the generation loop' };
      for (const sequence of [...this.running, ...this.waiting]) this.finish(sequence, 'error', engineError);
    } finally {
      this.looping = false;
      if (this.waiting.length > 0 || this.running.length > 0) this.kick();
      else for (const resolve of this.idleWaiters.splice(0)) resolve();
    }
  }

  /** Nothing can run: wait for a submit, a cancellation, or the earliest queue timeout. */
  private sleepUntilWoken(): Promise<void> {
    if (this.woken) return Promise.resolve();
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      if (this.waiting.length > 0) {
        const oldest = Math.min(...this.waiting.map((s) => s.enqueuedAt));
        timer = setTimeout(() => this.wake(), Math.max(1, oldest + this.options.queueTimeoutMs - this.now()));
      }
      this.wakeLoop = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private reapCancelled(): void {
    for (const sequence of [...this.waiting, ...this.running]) {
      if (sequence.abortReason) this.finish(sequence, 'error', sequence.abortReason);
      else if (sequence.request.signal?.aborted) this.finish(sequence, 'cancelled');
    }
    const now = this.now();
    for (const sequence of [...this.waiting]) {
      if (now - sequence.enqueuedAt >= this.options.queueTimeoutMs) {
        this.finish(sequence, 'error', {
          kind: 'cache_full',
          message: `no room to start the request within ${Math.round(this.options.queueTimeoutMs / 1000)} s; the server is at capacity`,
          retryAfterSeconds: 5,
        });
      }
    }
  }

  /** Moves queued requests into the running set, first come first served, while the batch and budget allow. */
  private async admit(): Promise<void> {
    while (this.waiting.length > 0 && this.running.length < this.options.maxBatchSize) {
      const sequence = this.waiting[0];
      const session = sequence.session;
      const restoreStart = performance.now();
      let restoredFrom: Tier = session.tier;
      if ((session.tier === 'int8' || session.tier === 'disk') && this.restorer) {
        session.pinned = true;
        try {
          await this.restorer(session);
        } finally {
          session.pinned = false;
        }
        if ((session.tier as Tier) !== 'hot') restoredFrom = 'evicted';
      }
      // The restorer awaited: the sequence may have been cancelled meanwhile.
      if (this.waiting[0] !== sequence) continue;

      const request = sequence.request;
      const fullInput = request.mode === 'append' ? session.tokens.concat(request.input) : request.input;
      const plan = this.planCache(session, fullInput);
      const policy = this.options.window;
      const finalLength = Math.min(plan.keep + plan.pending.length - plan.pendingIndex + request.maxTokens, policy.capacity);
      const bytes = this.store.budget.bytesFor(finalLength, this.layout.bytesPerToken);
      if (!this.store.couldEverFit(bytes)) {
        this.finish(sequence, 'error', {
          kind: 'request_too_large',
          message: `the request needs ${bytes} bytes of KV cache but the whole cache budget is ${this.store.budget.capacityBytes} bytes`,
        });
        continue;
      }
      session.pinned = true;
      if (!this.store.reserve(session, Math.max(bytes, session.reservedBytes))) {
        session.pinned = false;
        return;
      }
      this.waiting.shift();
      sequence.fullInput = fullInput.slice();
      sequence.kv = plan.keep > 0 ? prefixOf(this.layout, session.kv!, plan.keep) : null;
      sequence.cacheLength = plan.keep;
      sequence.window = plan.window;
      sequence.pending = plan.pending;
      sequence.pendingIndex = plan.pendingIndex;
      sequence.cachedTokens = plan.cachedTokens;
      sequence.originalTokens = session.tokens;
      session.tokens = sequence.fullInput.slice();
      session.kv = null;
      session.requests++;
      sequence.restoredFrom = sequence.cachedTokens > 0 ? restoredFrom : 'evicted';
      sequence.admittedAt = this.now();
      sequence.state = 'prefill';
      sequence.startOutput(this.model.tokenizer, this.model.vocabSize);
      this.running.push(sequence);
      sequence.events.push({
        type: 'start',
        sessionId: session.id,
        promptTokens: sequence.fullInput.length,
        cachedTokens: sequence.cachedTokens,
        restoredFrom: sequence.restoredFrom,
        queueMs: sequence.admittedAt - sequence.enqueuedAt,
      });
      const restoreMs = performance.now() - restoreStart;
      for (const o of this.observers) o.requestStarted?.(sequence, { restoredFrom: sequence.restoredFrom, restoreMs });
    }
  }

  /**
   * Decides what of the session's cache a new sequence keeps and what it must prefill: the longest
   * cached prefix (at least one token is always fed, to get logits). Copies nothing.
   */
  private planCache(session: Session, full: readonly number[]): CachePlan {
    const policy = this.options.window;
    if (session.kv && session.cachedLength > 0) {
      const cacheEnd = session.window.droppedTokens + session.cachedLength;
      const match = Math.min(commonPrefixLength(full, session.tokens, cacheEnd), full.length - 1);
      const keep = reusableSlots(session.window, session.cachedLength, match);
      if (keep > 0) {
        const start = session.window.droppedTokens + keep;
        return { keep, window: { ...session.window }, pending: full as number[], pendingIndex: start, cachedTokens: start };
      }
    } else if (session.window.droppedTokens > 0 && policy.strategy === 'recompute') {
      // After a recompute-style drop the cache is just a prefill of the kept tokens, so an evicted
      // session rebuilds it exactly from the transcript without replaying the drops.
      const match = commonPrefixLength(full, session.tokens, session.tokens.length);
      if (match >= session.window.lastDropAt && full.length > session.window.lastDropAt) {
        const sinks = policy.sinkTokens;
        const pending = full.slice(0, sinks).concat(full.slice(sinks + session.window.droppedTokens));
        return { keep: 0, window: { ...session.window }, pending, pendingIndex: 0, cachedTokens: 0 };
      }
    }
    return { keep: 0, window: { ...NO_WINDOW }, pending: full as number[], pendingIndex: 0, cachedTokens: 0 };
  }

  private async iterate(): Promise<boolean> {
    let progressed = false;
    const decoding = this.running.filter((s) => s.state === 'decode');
    if (decoding.length > 0) {
      await this.decodeStep(decoding);
      progressed = true;
    }
    const prefilling = this.running.find((s) => s.state === 'prefill');
    if (prefilling) {
      await this.prefillChunk(prefilling);
      progressed = true;
    }
    return progressed;
  }

  private async decodeStep(candidates: Sequence[]): Promise<void> {
    for (const sequence of candidates) {
      if (sequence.cacheLength >= this.options.window.capacity) this.dropWindow(sequence);
    }
    const rows = candidates.filter((s) => s.state === 'decode');
    if (rows.length === 0) return;
    const batch = this.syncBatch(rows);
    const batchSize = rows.length;
    const pastLength = batch.kv.length;
    const totalLength = pastLength + 1;
    const inputIds = new BigInt64Array(batchSize); // [batch, 1]
    const positionIds = new BigInt64Array(batchSize); // [batch, 1]
    const attentionMask = new BigInt64Array(batchSize * totalLength); // [batch, past + 1]
    for (let r = 0; r < batchSize; r++) {
      const sequence = rows[r];
      inputIds[r] = BigInt(sequence.pending[sequence.pendingIndex]);
      positionIds[r] = BigInt(sequence.cacheLength);
      attentionMask.fill(1n, r * totalLength + batch.padding[r], (r + 1) * totalLength);
    }
    const startMs = performance.now();
    let output;
    try {
      output = await this.model.decoder.run({ batchSize, seqLength: 1, inputIds, attentionMask, positionIds, past: batch.kv });
    } catch (error) {
      this.failStep(rows, error);
      return;
    }
    const durationMs = performance.now() - startMs;
    batch.kv = output.present;
    let kvTokens = 0;
    for (const sequence of rows) {
      sequence.cacheLength++;
      sequence.pendingIndex++;
      kvTokens += sequence.cacheLength;
    }
    for (const o of this.observers) o.decodeStep?.({ sequences: rows, kvTokens, startMs, durationMs });
    for (let r = 0; r < batchSize; r++) this.sampleNext(rows[r], output.logits, r, output.vocabSize);
  }

  private async prefillChunk(sequence: Sequence): Promise<void> {
    const policy = this.options.window;
    if (sequence.cacheLength >= policy.capacity) this.dropWindow(sequence);
    const count = Math.min(this.options.prefillChunkTokens, policy.capacity - sequence.cacheLength, sequence.remainingPending);
    const past = sequence.kv ?? emptyKv(this.layout, 1);
    const total = sequence.cacheLength + count;
    const inputIds = new BigInt64Array(count); // [1, count]
    const positionIds = new BigInt64Array(count); // [1, count]
    for (let i = 0; i < count; i++) {
      inputIds[i] = BigInt(sequence.pending[sequence.pendingIndex + i]);
      positionIds[i] = BigInt(sequence.cacheLength + i);
    }
    const attentionMask = new BigInt64Array(total).fill(1n); // [1, past + count]
    const startMs = performance.now();
    let output;
    try {
      output = await this.model.decoder.run({ batchSize: 1, seqLength: count, inputIds, attentionMask, positionIds, past });
    } catch (error) {
      this.failStep([sequence], error);
      return;
    }
    const durationMs = performance.now() - startMs;
    sequence.kv = output.present;
    sequence.cacheLength = total;
    sequence.pendingIndex += count;
    for (const o of this.observers) o.prefillChunk?.(sequence, { tokens: count, kvTokens: total, startMs, durationMs });
    if (sequence.remainingPending === 0) {
      // max_tokens 0 only fills the cache (the native API's session prefill).
      if (sequence.request.maxTokens === 0) {
        this.finish(sequence, 'length');
        return;
      }
      sequence.state = 'decode';
      this.sampleNext(sequence, output.logits, count - 1, output.vocabSize);
    }
  }

  /** Samples the token after row `row` of the logits and either finishes the sequence or queues the token. */
  private sampleNext(sequence: Sequence, logits: KvData, row: number, vocabSize: number): void {
    const offset = row * vocabSize;
    let rowLogits: Float32Array;
    if (logits instanceof Float32Array) rowLogits = logits.subarray(offset, offset + this.model.vocabSize);
    else rowLogits = halfArrayToFloat(logits.subarray(offset, offset + this.model.vocabSize), this.logitsRow);
    const request = sequence.request;
    const greedy = request.sampling.temperature <= 0;
    const token = this.sampler.sample(rowLogits, request.sampling, greedy ? null : sequence.rng, sequence.seen);
    if (sequence.firstTokenAt === 0) sequence.firstTokenAt = this.now();
    const reason = sequence.accept(token);
    if (reason) {
      this.finish(sequence, reason);
      return;
    }
    sequence.pending = [token];
    sequence.pendingIndex = 0;
  }

  /**
   * Makes the decode batch hold exactly `rows`, in order. Unchanged membership keeps the batch tensors
   * as they are (the model's present output is fed straight back); a change re-packs every row once.
   */
  private syncBatch(rows: Sequence[]): DecodeBatch {
    const current = this.batch;
    if (current && current.rows.length === rows.length && rows.every((s, i) => current.rows[i] === s && s.batchRow === i)) {
      return current;
    }
    let kv: KvTensors;
    let padding: number[];
    if (rows.length === 1 && rows[0].batchRow < 0) {
      kv = rows[0].kv!;
      padding = [0];
    } else {
      const packed = gatherRows(
        this.layout,
        rows.map((s) => {
          if (s.batchRow >= 0 && current) return { kv: current.kv, row: s.batchRow, segments: [[current.padding[s.batchRow], current.kv.length] as const] };
          return { kv: s.kv!, row: 0, segments: [[0, s.kv!.length] as const] };
        }),
      );
      kv = packed.kv;
      padding = packed.padding;
    }
    rows.forEach((s, i) => {
      s.batchRow = i;
      s.kv = null;
    });
    this.batch = { rows: rows.slice(), kv, padding };
    return this.batch;
  }

  /** Gives a sequence its own KV back out of the decode batch. */
  private leaveBatch(sequence: Sequence): void {
    const batch = this.batch;
    if (sequence.batchRow < 0 || !batch) return;
    sequence.kv = extractRow(this.layout, batch.kv, sequence.batchRow, batch.padding[sequence.batchRow]);
    sequence.batchRow = -1;
    if (batch.rows.every((s) => s.batchRow < 0)) this.batch = null;
  }

  /** The cache is full: drop `dropTokens` tokens after the sinks, by shifting keys or by recomputing. */
  private dropWindow(sequence: Sequence): void {
    this.leaveBatch(sequence);
    const policy = this.options.window;
    const { sinkTokens: sinks, dropTokens: drop } = policy;
    const length = sequence.cacheLength;
    const oldDropped = sequence.window.droppedTokens;
    sequence.window = {
      droppedTokens: oldDropped + drop,
      lastDropAt: oldDropped + length,
      dropEvents: sequence.window.dropEvents + 1,
    };
    sequence.droppedDuringRequest += drop;
    if (policy.strategy === 'shift') {
      sequence.kv = dropAndShift(this.layout, sequence.kv!, sinks, drop, this.inverseFrequencies!);
      sequence.cacheLength = length - drop;
    } else {
      const tokens = sequence.session.tokens;
      const kept = tokens.slice(0, sinks).concat(tokens.slice(oldDropped + sinks + drop, oldDropped + length));
      sequence.pending = kept.concat(sequence.pending.slice(sequence.pendingIndex));
      sequence.pendingIndex = 0;
      sequence.kv = null;
      sequence.cacheLength = 0;
      sequence.state = 'prefill';
    }
    for (const o of this.observers) o.windowDrop?.(sequence, { droppedTokens: drop, strategy: policy.strategy });
  }

  /** A model call failed: its sequences end with an error; their caches still hold the state before the call. */
  private failStep(sequences: Sequence[], error: unknown): void {
    this.logger.error({ err: (error as Error).message, sequences: sequences.map((s) => s.request.requestId) }, 'model step failed');
    const engineError: EngineError = { kind: 'internal', message: 'the model failed while generating' };
    for (const sequence of sequences) this.finish(sequence, 'error', engineError);
  }

  /** Ends a sequence: stores its cache in the session, settles the budget, and closes its stream. */
  private finish(sequence: Sequence, reason: FinishReason, error?: EngineError): void {
    if (sequence.state === 'finished') return;
    const session = sequence.session;
    const wasAdmitted = sequence.state !== 'queued';
    if (!wasAdmitted) {
      this.waiting.splice(this.waiting.indexOf(sequence), 1);
    } else {
      this.leaveBatch(sequence);
      this.running.splice(this.running.indexOf(sequence), 1);
      if (reason === 'error') this.rollBack(sequence);
      else this.keepCache(sequence);
    }
    sequence.state = 'finished';
    sequence.finishReason = reason;
    sequence.error = error;
    const budget = this.store.budget;
    const cacheBytes = session.tier === 'hot' ? budget.bytesFor(session.cachedLength, this.layout.bytesPerToken) : session.reservedBytes;
    if (session.ephemeral) budget.resize(session, 0);
    else if (wasAdmitted) budget.resize(session, Math.min(cacheBytes, session.reservedBytes));
    session.pinned = false;
    this.store.release(session);
    const text = wasAdmitted ? sequence.finalText() : '';
    sequence.events.push({
      type: 'end',
      finishReason: reason,
      text,
      error,
      usage: {
        promptTokens: sequence.fullInput.length,
        completionTokens: sequence.generated.length,
        cachedTokens: sequence.cachedTokens,
        droppedTokens: sequence.droppedDuringRequest,
      },
    });
    sequence.events.close();
    for (const o of this.observers) o.requestFinished?.(sequence);
    this.wake();
  }

  private keepCache(sequence: Sequence): void {
    const session = sequence.session;
    session.kv = sequence.cacheLength > 0 ? sequence.kv : null;
    session.cachedLength = session.kv ? sequence.cacheLength : 0;
    session.window = sequence.window;
    session.tier = session.kv ? 'hot' : 'evicted';
    sequence.kv = null;
  }

  /**
   * A failed request leaves the session as it was before the request: the old transcript, and of the
   * cache only the part that still matches it.
   */
  private rollBack(sequence: Sequence): void {
    const session = sequence.session;
    session.tokens = sequence.originalTokens;
    const window: WindowState = sequence.window;
    const match = commonPrefixLength(sequence.fullInput, session.tokens, session.tokens.length);
    const keep = sequence.kv ? reusableSlots(window, sequence.cacheLength, match) : 0;
    if (keep > 0) {
      session.kv = prefixOf(this.layout, sequence.kv!, keep);
      session.cachedLength = keep;
      session.window = { ...window };
      session.tier = 'hot';
    } else {
      session.kv = null;
      session.cachedLength = 0;
      session.window = { ...NO_WINDOW };
      session.tier = 'evicted';
    }
    sequence.kv = null;
  }
}

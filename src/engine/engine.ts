import { performance } from 'node:perf_hooks';
import type { SessionStore } from '../cache/session-store.ts';
import type { Session, Tier } from '../cache/session.ts';
import { dropAndShift, prefixOf, rotaryInverseFrequencies } from '../cache/kv-ops.ts';
import type { WindowPolicy } from '../cache/window.ts';
import { halfArrayToFloat } from '../lib/float16.ts';
import { silentLogger, type Logger } from '../lib/logger.ts';
import { emptyKv, FULL_CAPABILITIES, kvOnHost, type Decoder, type KvData, type ModelCapabilities, type PositionEncoding } from '../model/types.ts';
import type { TokenDecoder } from './detokenizer.ts';
import { tokenLogprob } from './logprobs.ts';
import { GrammarService, type GrammarCounters, type GrammarVocabulary } from './grammar.ts';
import { DecodeBatch } from './batch.ts';
import { planCache } from './cache-plan.ts';
import { keepCache, keepProcessed, rollBack } from './commit.ts';
import { Sampler } from './sampler.ts';
import type { PrefillCost } from './cost-model.ts';
import { Scheduler, type SchedulerOptions } from './scheduler.ts';
import { Sequence } from './sequence.ts';
import type { EngineError, FinishReason, GenerationRequest, RequestRecord, SubmitResult } from './types.ts';

export interface EngineModel {
  decoder: Decoder;
  tokenizer: TokenDecoder;
  /** Ids below this are valid inputs and sampling candidates. */
  vocabSize: number;
  eosTokenIds: readonly number[];
  positionEncoding: PositionEncoding;
  /** What the export can do (probed at load); default: everything. */
  capabilities?: ModelCapabilities;
  /** The tokenizer's vocabulary for constrained decoding (read on the first request with a grammar); absent: grammars are refused. */
  grammarVocabulary?: () => GrammarVocabulary;
}

/** The scheduler's options (queues, batch slots, chunk budget; see scheduler.ts) and the window policy. */
export interface EngineOptions extends SchedulerOptions {
  window: WindowPolicy;
}

/** Running totals, for benchmarks and profiling (what the loop spent its time on). */
export interface EngineCounters {
  decodeSteps: number;
  /** Rows over all decode steps (mean batch size = decodeRows / decodeSteps). */
  decodeRows: number;
  decodeMs: number;
  /** Cache slots of all decode steps' batches, and how many of them were left padding. */
  batchSlots: number;
  paddingSlots: number;
  prefillChunks: number;
  prefillTokens: number;
  prefillMs: number;
  /** Batch re-packs (every row copied into a new tensor), newcomers copied into a free row, and the copy time. */
  repacks: number;
  inPlaceJoins: number;
  repackMs: number;
}

/** Hooks for telemetry; the engine itself knows nothing of spans or metrics. */
export interface EngineObserver {
  requestQueued?(sequence: RequestRecord): void;
  requestStarted?(sequence: RequestRecord, info: { restoredFrom: Tier; restoreMs: number }): void;
  prefillChunk?(sequence: RequestRecord, info: { tokens: number; kvTokens: number; startMs: number; durationMs: number }): void;
  decodeStep?(info: { sequences: readonly RequestRecord[]; kvTokens: number; startMs: number; durationMs: number }): void;
  windowDrop?(sequence: RequestRecord, info: { droppedTokens: number; strategy: WindowPolicy['strategy'] }): void;
  requestFinished?(sequence: RequestRecord): void;
}

/** Moves a session's KV from a lower tier (int8, disk) back to hot; leaves it evicted when it cannot. */
export type TierRestorer = (session: Session) => Promise<void>;

/**
 * Called when a request on a stored session is admitted, before its transcript changes: makes sure no
 * durable copy of the session (a snapshot file) is older than what this request will answer. Null when
 * there is nothing to do; a rejection fails the request before it starts.
 */
export type SessionSuperseder = (session: Session) => Promise<void> | null;

export interface EngineStats {
  running: number;
  waiting: number;
  batchSize: number;
}

/**
 * The scheduler and generation loop. One loop serves every session: each iteration runs one batched
 * decode step for all streams that are generating, then at most one prefill chunk, so a long prompt
 * never stalls running streams for more than a chunk.
 */
export class Engine {
  /** The queues, admission and each iteration's step plan. */
  private readonly scheduler: Scheduler<Sequence>;
  private looping = false;
  private draining = false;
  private wakeLoop: (() => void) | null = null;
  /** Something happened since the loop last looked (a submit, an abort, freed room): do not sleep. */
  private woken = false;
  private readonly sampler: Sampler;
  private grammarService: GrammarService | null = null;
  private readonly logitsRow: Float32Array;
  /** A row of logits with a grammar's mask applied. `// [vocabSize]` */
  private readonly maskedRow: Float32Array;
  private readonly inverseFrequencies: Float32Array | null;
  private restorer: TierRestorer | null = null;
  private superseder: SessionSuperseder | null = null;
  private readonly observers: EngineObserver[] = [];
  private readonly idleWaiters: Array<() => void> = [];
  private readonly counterValues: EngineCounters = {
    decodeSteps: 0, decodeRows: 0, decodeMs: 0, batchSlots: 0, paddingSlots: 0,
    prefillChunks: 0, prefillTokens: 0, prefillMs: 0, repacks: 0, inPlaceJoins: 0, repackMs: 0,
  };
  /** The decoding sequences' shared KV (see batch.ts). */
  private readonly decodeBatch: DecodeBatch<Sequence>;

  constructor(
    readonly model: EngineModel,
    readonly store: SessionStore,
    readonly options: EngineOptions,
    private readonly logger: Logger = silentLogger,
    private readonly now: () => number = Date.now,
  ) {
    this.scheduler = new Scheduler(options, () => this.capabilities);
    // The step costs the scheduler sizes chunks by, measured on every call.
    this.observers.push({
      decodeStep: (info) => this.scheduler.cost.recordDecode(info.durationMs),
      prefillChunk: (_sequence, info) => this.scheduler.cost.recordPrefill(info.tokens, info.kvTokens - info.tokens, info.durationMs),
    });
    this.sampler = new Sampler(model.vocabSize);
    this.decodeBatch = new DecodeBatch(model.decoder.io.kv, this.counterValues);
    this.logitsRow = new Float32Array(model.vocabSize);
    this.maskedRow = new Float32Array(model.vocabSize);
    const positions = model.positionEncoding;
    this.inverseFrequencies = positions.kind === 'rotary' ? rotaryInverseFrequencies(positions.theta, positions.rotaryDim) : null;
    if (options.window.strategy === 'shift' && !this.inverseFrequencies) throw new Error('shift strategy needs a rotary model');
  }

  private get waiting(): Sequence[] {
    return this.scheduler.waiting;
  }

  private get running(): Sequence[] {
    return this.scheduler.running;
  }

  get capabilities(): ModelCapabilities {
    return this.model.capabilities ?? FULL_CAPABILITIES;
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

  setSessionSuperseder(superseder: SessionSuperseder): void {
    this.superseder = superseder;
  }

  addObserver(observer: EngineObserver): void {
    this.observers.push(observer);
  }

  stats(): EngineStats {
    return { running: this.running.length, waiting: this.waiting.length, batchSize: this.decodeBatch.live };
  }

  counters(): EngineCounters {
    return { ...this.counterValues };
  }

  /** What the scheduler sizes prefill chunks by: the decode step's moving average and the fitted prefill cost (null before enough chunks). */
  stepCosts(): { decodeStepMs: number; prefill: PrefillCost | null } {
    return { decodeStepMs: this.scheduler.cost.decodeStepMs, prefill: this.scheduler.cost.prefillCost() };
  }

  /** Grammar compiles, compile time and cache hits; null before the first request with a grammar. */
  grammarCounters(): GrammarCounters | null {
    return this.grammarService?.counters() ?? null;
  }

  /**
   * Cache slots filled so far by the request running on `session` (its prefill progress, then one
   * per generated token), or undefined when no admitted request runs on it. While a request runs,
   * the session itself holds no KV: the sequence does.
   */
  runningCacheLength(session: Session): number | undefined {
    return this.running.find((s) => s.session === session)?.cacheLength;
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
    let createdHere = false;
    if (request.sessionId !== undefined) {
      session = await this.store.find(request.owner, request.sessionId);
      if (!session) {
        if (request.onUnknownSession === 'fail') return fail({ kind: 'session_not_found', param: 'session_id', message: `session ${request.sessionId} not found` });
        // Another submit may have created it while this one awaited the lookup.
        session = this.store.get(request.owner, request.sessionId);
        if (!session) {
          session = this.store.create(request.owner, request.sessionId);
          createdHere = true;
        }
      }
    } else {
      session = this.store.create(request.owner, undefined, true);
    }
    // A refused request leaves no session behind that it created itself (as the server's admission does).
    const created = session;
    const refuse = (error: EngineError): SubmitResult => {
      if (createdHere) this.store.delete(created);
      return fail(error);
    };

    const sequenceLength = request.mode === 'append' ? session.tokens.length + request.input.length : request.input.length;
    if (sequenceLength === 0) return refuse({ kind: 'invalid_request', param: 'prompt', message: 'the prompt is empty' });
    if (request.truncation === 'error' && sequenceLength + request.maxTokens > this.contextLength) {
      return refuse({
        kind: 'context_length_exceeded',
        param: 'max_tokens',
        message:
          `This model's maximum context length is ${this.contextLength} tokens. However, you requested ` +
          `${sequenceLength + request.maxTokens} tokens (${sequenceLength} in the prompt, ${request.maxTokens} in the completion). ` +
          'Please reduce the length of the prompt or completion, or allow truncation.',
      });
    }
    if (this.scheduler.queueFull) {
      return refuse({ kind: 'queue_full', message: `the request queue is full (${this.options.maxQueue} waiting)`, retryAfterSeconds: 1 });
    }
    let constraint = null;
    if (request.grammar) {
      const vocabulary = this.model.grammarVocabulary;
      if (!vocabulary) return refuse({ kind: 'invalid_request', param: 'response_format', message: 'this model does not support constrained decoding' });
      this.grammarService ??= new GrammarService(vocabulary(), this.model.vocabSize, this.model.eosTokenIds);
      const made = await this.grammarService.constraint(request.grammar);
      if (!made.ok) return refuse(made.error);
      constraint = made.constraint;
    }
    if (!this.store.acquire(session)) {
      constraint?.dispose();
      return refuse({ kind: 'session_busy', param: 'session_id', message: `session ${session.id} is busy with another request` });
    }

    const sequence = new Sequence(request, session, this.model.eosTokenIds, this.now());
    sequence.constraint = constraint;
    this.scheduler.enqueue(sequence);
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
        // Cancelled sequences leave with their KV on the host (awaited only when some is on a device,
        // so a request that finds room is still admitted in the same tick it was submitted).
        if (this.hasDeviceKv() && this.running.some((s) => s.abortReason || s.request.signal?.aborted)) await this.hostAll();
        this.reapCancelled();
        await this.admit();
        const progressed = await this.iterate();
        if (!progressed && (this.waiting.length > 0 || this.running.length > 0)) await this.sleepUntilWoken();
      }
    } catch (error) {
      this.logger.error({ err: (error as Error).message, stack: (error as Error).stack }, 'engine loop failed');
      const engineError: EngineError = { kind: 'internal', message: 'internal error in the generation loop' };
      await this.hostAll().catch(() => {});
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
      const timeoutAt = this.scheduler.nextTimeoutAt();
      if (timeoutAt !== null) timer = setTimeout(() => this.wake(), Math.max(1, timeoutAt - this.now()));
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
    for (const { sequence, error } of this.scheduler.expired(this.now())) this.finish(sequence, 'error', error);
  }

  /** Moves queued requests into the running set, first come first served, while the batch and budget allow. */
  private async admit(): Promise<void> {
    this.scheduler.beginAdmission();
    for (let next = this.scheduler.nextAdmission(); next?.kind === 'admit'; next = this.scheduler.nextAdmission()) {
      const sequence = next.sequence;
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
      const superseding = this.superseder?.(session);
      if (superseding) {
        session.pinned = true;
        let failure: Error | null = null;
        try {
          await superseding;
        } catch (error) {
          failure = error as Error;
        } finally {
          session.pinned = false;
        }
        if (this.waiting[0] !== sequence) continue;
        if (failure) {
          this.logger.error({ sessionId: session.id, err: failure.message }, 'the session snapshot could not be superseded');
          this.finish(sequence, 'error', { kind: 'internal', message: "the session's snapshot could not be updated; the session is unchanged" });
          continue;
        }
      }

      const request = sequence.request;
      const fullInput = request.mode === 'append' ? session.tokens.concat(request.input) : request.input;
      const plan = planCache({ tokens: session.tokens, window: session.window, cachedLength: session.kv ? session.cachedLength : 0 }, fullInput, this.options.window);
      const policy = this.options.window;
      const finalLength = Math.min(plan.keep + plan.pending.length - plan.pendingIndex + request.maxTokens, policy.capacity);
      const bytes = this.store.budget.bytesFor(finalLength, this.layout.bytesPerToken);
      const room = !this.store.couldEverFit(bytes) ? 'too_large' : this.reserve(session, bytes);
      if (room === 'too_large') {
        this.finish(sequence, 'error', {
          kind: 'request_too_large',
          message: `the request needs ${bytes} bytes of KV cache but the whole cache budget is ${this.store.budget.capacityBytes} bytes`,
        });
        continue;
      }
      // No room now: the request stays at the head of the queue, and this admission pass ends.
      if (!this.scheduler.decideRoom(sequence, room)) return;
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

  /** Pins the session and reserves its KV bytes; no room unpins it again. */
  private reserve(session: Session, bytes: number): 'reserved' | 'no_room' {
    session.pinned = true;
    if (this.store.reserve(session, Math.max(bytes, session.reservedBytes))) return 'reserved';
    session.pinned = false;
    return 'no_room';
  }

  /** Executes the scheduler's plan for this iteration (its prefill half after the decode step); false when there was nothing to run. */
  private async iterate(): Promise<boolean> {
    const decode = this.scheduler.decodePlan();
    if (decode.length > 0) await this.decodeStep(decode);
    const prefill = this.scheduler.prefillPlan(this.decodeBatch.current?.rows.length ?? 1);
    if (prefill) await this.prefillChunk(prefill.sequence, prefill.tokens);
    return decode.length > 0 || prefill !== null;
  }

  private async decodeStep(candidates: Sequence[]): Promise<void> {
    // Rows of different lengths share a call only by left padding: without batching or padding, one row per call.
    if (!this.capabilities.batched || !this.capabilities.leftPadding) {
      for (const sequence of candidates) await this.decodeAlone(sequence);
      return;
    }
    const capacity = this.options.window.capacity;
    let joining = 0;
    let full = 0;
    for (const sequence of candidates) {
      if (sequence.batchRow < 0) joining++;
      if (sequence.cacheLength >= capacity) full++;
    }
    // Device-resident KV stays put while the batch does not change; anything else works on the host.
    if ((full > 0 || (joining > 0 && (this.decodeBatch.current || joining > 1))) && this.hasDeviceKv()) await this.hostAll();
    if (full > 0) {
      for (const sequence of candidates) if (sequence.cacheLength >= capacity) this.dropWindow(sequence);
    }
    const decoding = full > 0 ? candidates.filter((s) => s.state === 'decode') : candidates;
    if (decoding.length === 0) return;
    const batch = this.decodeBatch.sync(decoding);
    const slots = batch.rows;
    const batchSize = slots.length;
    const pastLength = batch.kv.length;
    const totalLength = pastLength + 1;
    const inputIds = new BigInt64Array(batchSize); // [batch, 1]
    const positionIds = new BigInt64Array(batchSize); // [batch, 1]
    const attentionMask = new BigInt64Array(batchSize * totalLength); // [batch, past + 1]
    for (let r = 0; r < batchSize; r++) {
      const sequence = slots[r];
      if (sequence) {
        inputIds[r] = BigInt(sequence.pending[sequence.pendingIndex]);
        positionIds[r] = BigInt(sequence.cacheLength);
        attentionMask.fill(1n, r * totalLength + batch.padding[r], (r + 1) * totalLength);
      } else {
        // A free row: token 0 at position 0 attending only to itself; its output is never read.
        attentionMask[(r + 1) * totalLength - 1] = 1n;
      }
    }
    const rows = slots.filter((s): s is Sequence => s !== null);
    const startMs = performance.now();
    let output;
    try {
      output = await this.model.decoder.run({ batchSize, seqLength: 1, inputIds, attentionMask, positionIds, past: batch.kv });
    } catch (error) {
      await this.failStep(rows, error);
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
    const c = this.counterValues;
    c.decodeSteps++;
    c.decodeRows += rows.length;
    c.decodeMs += durationMs;
    c.batchSlots += batchSize * totalLength;
    c.paddingSlots += batchSize * totalLength - kvTokens;
    for (const o of this.observers) o.decodeStep?.({ sequences: rows, kvTokens, startMs, durationMs });
    for (const sequence of rows) await sequence.constraint?.prepare();
    let finished: Array<[Sequence, FinishReason]> | null = null;
    for (let r = 0; r < batchSize; r++) {
      const sequence = slots[r];
      const reason = sequence ? this.sampleNext(sequence, output.logits, r, output.vocabSize) : null;
      if (reason) (finished ??= []).push([sequence!, reason]);
    }
    if (!finished) return;
    if (this.hasDeviceKv()) await this.hostAll();
    for (const [sequence, reason] of finished) this.finish(sequence, reason);
  }

  /** One decode step of one sequence on its own cache (for exports that cannot batch rows). */
  private async decodeAlone(sequence: Sequence): Promise<void> {
    if (sequence.cacheLength >= this.options.window.capacity) {
      await this.hostSequence(sequence);
      this.dropWindow(sequence);
      if (sequence.state !== 'decode') return; // recompute: the kept tokens are prefilled again first
    }
    const past = sequence.kv!;
    const total = sequence.cacheLength + 1;
    const inputIds = BigInt64Array.of(BigInt(sequence.pending[sequence.pendingIndex])); // [1, 1]
    const positionIds = BigInt64Array.of(BigInt(sequence.cacheLength)); // [1, 1]
    const attentionMask = new BigInt64Array(total).fill(1n); // [1, past + 1]
    const startMs = performance.now();
    let output;
    try {
      output = await this.model.decoder.run({ batchSize: 1, seqLength: 1, inputIds, attentionMask, positionIds, past });
    } catch (error) {
      await this.failStep([sequence], error);
      return;
    }
    const durationMs = performance.now() - startMs;
    sequence.kv = output.present;
    sequence.cacheLength = total;
    sequence.pendingIndex++;
    const c = this.counterValues;
    c.decodeSteps++;
    c.decodeRows++;
    c.decodeMs += durationMs;
    c.batchSlots += total;
    for (const o of this.observers) o.decodeStep?.({ sequences: [sequence], kvTokens: total, startMs, durationMs });
    const reason = this.sampleNext(sequence, output.logits, 0, output.vocabSize);
    if (!reason) return;
    await this.hostSequence(sequence);
    this.finish(sequence, reason);
  }

  private async prefillChunk(sequence: Sequence, chunkTokens: number): Promise<void> {
    const policy = this.options.window;
    if (sequence.cacheLength >= policy.capacity) {
      await this.hostSequence(sequence);
      this.dropWindow(sequence);
    }
    const count = Math.min(chunkTokens, policy.capacity - sequence.cacheLength, sequence.remainingPending);
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
      await this.failStep([sequence], error);
      return;
    }
    const durationMs = performance.now() - startMs;
    const c = this.counterValues;
    c.prefillChunks++;
    c.prefillTokens += count;
    c.prefillMs += durationMs;
    sequence.kv = output.present;
    sequence.cacheLength = total;
    sequence.pendingIndex += count;
    for (const o of this.observers) o.prefillChunk?.(sequence, { tokens: count, kvTokens: total, startMs, durationMs });
    if (sequence.remainingPending === 0) {
      // max_tokens 0 only fills the cache (the native API's session prefill).
      await sequence.constraint?.prepare();
      const reason = sequence.request.maxTokens === 0 ? 'length' : this.sampleNext(sequence, output.logits, count - 1, output.vocabSize);
      if (reason) {
        if (sequence.kv?.device) await this.hostSequence(sequence);
        this.finish(sequence, reason);
      } else sequence.state = 'decode';
    }
  }

  /**
   * Samples the token after row `row` of the logits; returns why the sequence ends, or null after
   * queueing the token as the next input.
   */
  private sampleNext(sequence: Sequence, logits: KvData, row: number, vocabSize: number): FinishReason | null {
    const offset = row * vocabSize;
    let rowLogits: Float32Array;
    if (logits instanceof Float32Array) rowLogits = logits.subarray(offset, offset + this.model.vocabSize);
    else rowLogits = halfArrayToFloat(logits.subarray(offset, offset + this.model.vocabSize), this.logitsRow);
    const request = sequence.request;
    const greedy = request.sampling.temperature <= 0;
    // The grammar masks a copy, so logprobs stay the raw model's.
    const sampled = sequence.constraint ? sequence.constraint.mask(rowLogits, this.maskedRow) : rowLogits;
    const token = this.sampler.sample(sampled, request.sampling, greedy ? null : sequence.rng, sequence.seen, sequence.row);
    // Raw-model logprobs (before any processing), only for rows that asked.
    const logprob = request.logprobs === undefined ? undefined : tokenLogprob(rowLogits, this.model.vocabSize, token, request.logprobs);
    if (sequence.firstTokenAt === 0) sequence.firstTokenAt = this.now();
    const reason = sequence.accept(token, logprob);
    if (reason) return reason;
    sequence.pending = [token];
    sequence.pendingIndex = 0;
    return null;
  }

  private hasDeviceKv(): boolean {
    return this.decodeBatch.onDevice || this.running.some((s) => s.kv?.device);
  }

  /** Brings the batch's and every running sequence's KV to host memory, where the cache code works. */
  private async hostAll(): Promise<void> {
    await this.decodeBatch.toHost();
    for (const sequence of this.running) await this.hostSequence(sequence);
  }

  private async hostSequence(sequence: Sequence): Promise<void> {
    if (sequence.kv?.device) sequence.kv = await kvOnHost(sequence.kv);
  }

  /** The cache is full: drop `dropTokens` tokens after the sinks, by shifting keys or by recomputing. */
  private dropWindow(sequence: Sequence): void {
    this.decodeBatch.leave(sequence);
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
  private async failStep(sequences: Sequence[], error: unknown): Promise<void> {
    this.logger.error({ err: (error as Error).message, sequences: sequences.map((s) => s.request.requestId) }, 'model step failed');
    const engineError: EngineError = { kind: 'internal', message: 'the model failed while generating' };
    await this.hostAll();
    for (const sequence of sequences) this.finish(sequence, 'error', engineError);
  }

  /** Ends a sequence: stores its cache in the session, settles the budget, and closes its stream. */
  private finish(sequence: Sequence, reason: FinishReason, error?: EngineError): void {
    if (sequence.state === 'finished') return;
    const session = sequence.session;
    const wasAdmitted = sequence.state !== 'queued';
    if (!wasAdmitted) {
      this.scheduler.remove(sequence);
    } else {
      this.decodeBatch.leave(sequence);
      this.scheduler.remove(sequence);
      if (reason === 'error') rollBack(sequence, this.layout);
      else if (reason === 'cancelled' && sequence.state === 'prefill' && sequence.generated.length === 0) keepProcessed(sequence, this.layout, this.options.window.sinkTokens);
      else keepCache(sequence);
    }
    sequence.state = 'finished';
    sequence.finishReason = reason;
    sequence.constraint?.dispose();
    sequence.constraint = null;
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
}

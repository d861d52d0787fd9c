import type { SessionStore } from '../cache/session-store.ts';
import type { Session, Tier } from '../cache/session.ts';
import { rotaryInverseFrequencies } from '../cache/kv-ops.ts';
import type { WindowPolicy } from '../cache/window.ts';
import { silentLogger, type Logger } from '../lib/logger.ts';
import { FULL_CAPABILITIES, type Decoder, type ModelCapabilities, type PositionEncoding } from '../model/types.ts';
import { Admitter } from './admit.ts';
import { DecodeBatch } from './batch.ts';
import { finishSequence } from './commit.ts';
import type { PrefillCost } from './cost-model.ts';
import { zeroCounters, type EngineCounters } from './counters.ts';
import type { TokenDecoder } from './detokenizer.ts';
import { GrammarService, type GrammarCounters, type GrammarVocabulary } from './grammar.ts';
import { InPlaceBatch } from './inplace-batch.ts';
import { inPlaceKv, OwnBuffers } from './own-buffer.ts';
import type { EngineParts } from './parts.ts';
import { PrefillLane } from './prefill-lane.ts';
import { Runner } from './runner.ts';
import { Scheduler, type SchedulerOptions } from './scheduler.ts';
import { Sequence } from './sequence.ts';
import { StepExecutor } from './step.ts';
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
  /**
   * `PREFILL_LANE=worker`: a second decoder of the same graph on its own thread, which runs long prompts'
   * chunks while `decoder` steps the decode batch (prefill-lane.ts); absent: every chunk runs inline.
   */
  prefillDecoder?: Decoder;
}

/** The scheduler's options (queues, batch slots, chunk budget; see scheduler.ts) and the window policy. */
export interface EngineOptions extends SchedulerOptions {
  window: WindowPolicy;
  /**
   * How running sequences keep their KV (issue 25). `inplace` (default): pre-allocated buffers, one per
   * decode batch (inplace-batch.ts) and one per prefilling or lone sequence (own-buffer.ts), written
   * with only the new rows each step (only logits and new rows fetched); needs a decoder loaded with
   * new-row outputs and an export that honours masked slots, else the engine logs it and runs `concat`.
   * `concat`: the model's whole present is fed back as the next past (batch.ts).
   */
  kvMode?: 'concat' | 'inplace';
  /** `inplace` only: the buffers' capacity grows in whole blocks of this many slots, up to the context. Default 64. */
  kvCapacityBlock?: number;
}

/** Hooks for telemetry; the engine itself knows nothing of spans or metrics. */
export interface EngineObserver {
  requestQueued?(sequence: RequestRecord): void;
  requestStarted?(sequence: RequestRecord, info: { restoredFrom: Tier; restoreMs: number }): void;
  /** `lane`: the chunk ran on the prefill lane, beside the decode steps (its time delayed nobody's step). */
  prefillChunk?(sequence: RequestRecord, info: { tokens: number; kvTokens: number; startMs: number; durationMs: number; lane: boolean }): void;
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
 * The generation loop's entry: submit, drain, and the loop itself. One loop serves every session: each
 * iteration reaps cancelled requests, admits queued ones (admit.ts), then executes the scheduler's plan
 * (step.ts): one batched decode step for all streams that are generating, then at most one prefill
 * chunk, so a long prompt never stalls running streams for more than a chunk. Finishing is commit.ts.
 */
export class Engine {
  /** The queues, admission's decisions and each iteration's step plan. */
  private readonly scheduler: Scheduler<Sequence>;
  private looping = false;
  private draining = false;
  private wakeLoop: (() => void) | null = null;
  /** Something happened since the loop last looked (a submit, an abort, freed room): do not sleep. */
  private woken = false;
  private grammarService: GrammarService | null = null;
  /** What admission, step execution and finishing share (see parts.ts). */
  private readonly parts: EngineParts;
  private readonly admitter: Admitter;
  private readonly steps: StepExecutor;
  private readonly observers: EngineObserver[] = [];
  private readonly idleWaiters: Array<() => void> = [];
  private readonly counterValues: EngineCounters = zeroCounters();
  /** The decoding sequences' shared KV (see batch.ts). */
  private readonly decodeBatch: DecodeBatch<Sequence> | InPlaceBatch<Sequence>;

  /** How running sequences keep their KV: in place (new rows written into buffers) or concat. */
  readonly kvPath: 'inplace' | 'concat';
  constructor(
    readonly model: EngineModel,
    readonly store: SessionStore,
    readonly options: EngineOptions,
    private readonly logger: Logger = silentLogger,
    private readonly now: () => number = Date.now,
  ) {
    this.scheduler = new Scheduler(options, () => this.capabilities);
    // A snapshot write that landed freed KV room: a request waiting for it may be admitted now.
    store.onRoomFreed(() => this.wake());
    // The step costs the scheduler sizes inline chunks by, measured on every call of the loop's decoder.
    this.observers.push({
      decodeStep: (info) => this.scheduler.cost.recordDecode(info.durationMs),
      prefillChunk: (_sequence, info) => void (info.lane || this.scheduler.cost.recordPrefill(info.tokens, info.kvTokens - info.tokens, info.durationMs)),
    });
    const kvPath = inPlaceKv(model, options, logger);
    this.kvPath = kvPath;
    const layout = model.decoder.io.kv;
    const block = options.kvCapacityBlock ?? 64;
    this.decodeBatch = kvPath === 'inplace' ? new InPlaceBatch(layout, block, this.counterValues, options.window.capacity) : new DecodeBatch(layout, this.counterValues);
    const positions = model.positionEncoding;
    const inverseFrequencies = positions.kind === 'rotary' ? rotaryInverseFrequencies(positions.theta, positions.rotaryDim) : null;
    if (options.window.strategy === 'shift' && !inverseFrequencies) throw new Error('shift strategy needs a rotary model');
    this.parts = {
      model,
      get capabilities() {
        return this.model.capabilities ?? FULL_CAPABILITIES;
      },
      layout: model.decoder.io.kv,
      store,
      window: options.window,
      inverseFrequencies,
      scheduler: this.scheduler,
      decodeBatch: this.decodeBatch,
      ownBuffers: kvPath === 'inplace' ? new OwnBuffers(layout, block, options.window.capacity) : null,
      runner: new Runner(model.decoder, model.vocabSize, this.counterValues, now),
      lane: model.prefillDecoder ? new PrefillLane(new Runner(model.prefillDecoder, model.vocabSize, this.counterValues, now), () => this.wake()) : null,
      counters: this.counterValues,
      observers: this.observers,
      logger,
      now,
      finish: (sequence, reason, error) => this.finish(sequence, reason, error),
    };
    this.admitter = new Admitter(this.parts);
    this.steps = new StepExecutor(this.parts);
  }

  private get waiting(): Sequence[] {
    return this.scheduler.waiting;
  }

  private get running(): Sequence[] {
    return this.scheduler.running;
  }

  get capabilities(): ModelCapabilities {
    return this.parts.capabilities;
  }

  get layout() {
    return this.model.decoder.io.kv;
  }

  get contextLength(): number {
    return this.options.window.capacity;
  }

  setTierRestorer(restorer: TierRestorer): void {
    this.admitter.restorer = restorer;
  }

  setSessionSuperseder(superseder: SessionSuperseder): void {
    this.admitter.superseder = superseder;
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
        if (this.steps.hasDeviceKv() && this.running.some((s) => s.abortReason || s.request.signal?.aborted)) await this.steps.hostAll();
        this.reapCancelled();
        await this.admitter.admit();
        const progressed = await this.steps.iterate();
        if (!progressed && (this.waiting.length > 0 || this.running.length > 0)) await this.sleepUntilWoken();
      }
    } catch (error) {
      this.logger.error({ err: (error as Error).message, stack: (error as Error).stack }, 'engine loop failed');
      const engineError: EngineError = { kind: 'internal', message: 'internal error in the generation loop' };
      await this.steps.hostAll().catch(() => {});
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
      // Its cache is with the lane's call: reaped once the chunk lands.
      if (sequence.inLane) continue;
      if (sequence.abortReason) this.finish(sequence, 'error', sequence.abortReason);
      else if (sequence.request.signal?.aborted) this.finish(sequence, 'cancelled');
    }
    for (const { sequence, error } of this.scheduler.expired(this.now())) this.finish(sequence, 'error', error);
  }

  /** Ends a sequence (see commit.ts) and wakes the loop: its batch slot and KV room are free now. */
  private finish(sequence: Sequence, reason: FinishReason, error?: EngineError): void {
    if (finishSequence(this.parts, sequence, reason, error)) this.wake();
  }
}

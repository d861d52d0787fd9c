/**
 * The deciding side of the engine loop (vLLM v1's split: the scheduler decides, the KV budget answers
 * "room or no room", the engine executes): the queues, admission into the running set (a batch slot, then
 * KV room), queue timeouts, and each iteration's step plan (every decoding sequence, plus at most one
 * prefill chunk of a size that fits the time budget). Generic over the member, so the decisions are
 * unit-tested on plain objects (tests/engine/scheduler.test.ts).
 */
import type { ModelCapabilities } from '../model/types.ts';
import { StepCostModel } from './cost-model.ts';
import type { EngineError } from './types.ts';

export interface SchedulerOptions {
  maxBatchSize: number;
  maxQueue: number;
  /**
   * Most prompt tokens prefilled per loop iteration (one chunk of one sequence). While no stream is
   * decoding, chunks have this size; while streams decode, see `prefillStepShare`.
   */
  prefillChunkTokens: number;
  /** A request still queued after this long is refused with cache_full (KV room) or batch_full (a batch slot). */
  queueTimeoutMs: number;
  /**
   * While streams are decoding, a prefill chunk is sized to take about this share of one decode step
   * (both measured as the engine runs, the chunk's cost by cost-model.ts from its length and the cache
   * before it), times (prefilling + decoding) / decoding sequences, so a newcomer's prompt adds about
   * that share to the running streams' inter-token latency, and a backlog of prompts gets more time.
   * Default 1. `Infinity` always uses full chunks.
   */
  prefillStepShare?: number;
  /**
   * Smallest prefill chunk while streams decode. Default 16: smaller chunks cost more per token (each
   * call re-reads the weights) and keep newcomers out of the decode batch for more iterations. Measured
   * on the fairness bench (4,096-token prompt, 1 thread): a floor of 1 or 4 doubled the long prompt's
   * TTFT (1.2 -> 2.1-2.5 s) and made the short request's worse, while the running stream's ITL p99
   * stayed 4.7-8.2 ms against 8.4 (its outliers are the prefill buffer's growth copies and the
   * machine, not the chunk size; docs/benchmarks.md, "Prefill fairness").
   */
  minPrefillChunkTokens?: number;
  /**
   * Which prefilling request gets the next chunk: `shortest` (default) the one with the fewest prompt
   * tokens left, `arrival` the earliest admitted (bench/fairness.ts compares the two).
   */
  prefillOrder?: 'shortest' | 'arrival';
}

/** What the scheduler reads of a request (the engine's `Sequence` is one). */
export interface Schedulable {
  readonly state: 'queued' | 'prefill' | 'decode' | 'finished';
  /** Prompt tokens not yet in the cache. */
  readonly remainingPending: number;
  /** Tokens in its cache so far (the past of its next chunk). */
  readonly cacheLength: number;
  readonly enqueuedAt: number;
  /** A chunk of it runs on the prefill lane now (prefill-lane.ts): it gets no other chunk until that lands. */
  readonly inLane?: boolean;
}

/** One iteration's work: a decode step of every decoding sequence, then at most one prefill chunk. */
export interface StepPlan<T> {
  decode: T[];
  prefill: { sequence: T; tokens: number } | null;
}

/** The KV budget's answer for one request: room reserved, no room now (wait), or never room. */
export type KvRoom = 'reserved' | 'no_room' | 'too_large';

/** What admission does with the head of the queue. */
export type Admission<T> = { kind: 'admit'; sequence: T } | { kind: 'wait'; blockedBy: 'batch_slot' | 'cache_room' };

export class Scheduler<T extends Schedulable> {
  readonly waiting: T[] = [];
  readonly running: T[] = [];
  readonly cost = new StepCostModel();
  /** What kept the head of the queue waiting at the last admission: a free batch slot, or KV cache room. */
  private blockedBy: 'batch_slot' | 'cache_room' = 'batch_slot';

  constructor(
    /** Read on every decision (tests and benches change options on a live engine). */
    readonly options: SchedulerOptions,
    private readonly capabilities: () => ModelCapabilities,
  ) {}

  get queueFull(): boolean {
    return this.waiting.length >= this.options.maxQueue;
  }

  enqueue(sequence: T): void {
    this.waiting.push(sequence);
  }

  /** Starts an admission pass (the engine calls `nextAdmission` until it says wait). */
  beginAdmission(): void {
    this.blockedBy = 'batch_slot';
  }

  /**
   * The head of the queue when a batch slot is free; the engine then prepares it (restores its cache,
   * plans its prefix) and asks the budget with `decideRoom`.
   */
  nextAdmission(): Admission<T> | null {
    if (this.waiting.length === 0) return null;
    if (this.running.length >= this.options.maxBatchSize) return { kind: 'wait', blockedBy: 'batch_slot' };
    return { kind: 'admit', sequence: this.waiting[0] };
  }

  /**
   * Acts on the budget's answer for the head of the queue: reserved moves it to the running set (true);
   * no room keeps it at the head and stops this admission pass (false); too large is for the engine to
   * refuse (false, and the sequence stays queued until the engine finishes it).
   */
  decideRoom(sequence: T, room: KvRoom): boolean {
    if (room === 'no_room') {
      this.blockedBy = 'cache_room';
      return false;
    }
    if (room === 'too_large') return false;
    this.waiting.splice(this.waiting.indexOf(sequence), 1);
    this.running.push(sequence);
    return true;
  }

  /** Removes a finished sequence from whichever queue holds it. */
  remove(sequence: T): void {
    const queue = sequence.state === 'queued' ? this.waiting : this.running;
    const index = queue.indexOf(sequence);
    if (index >= 0) queue.splice(index, 1);
  }

  /** Queued requests past the queue timeout, each with the error it ends with. */
  expired(now: number): Array<{ sequence: T; error: EngineError }> {
    const timeoutMs = this.options.queueTimeoutMs;
    const seconds = Math.round(timeoutMs / 1000);
    const out: Array<{ sequence: T; error: EngineError }> = [];
    for (const sequence of this.waiting) {
      if (now - sequence.enqueuedAt < timeoutMs) continue;
      // Both are 429; the kind (and so the code) says which resource the request waited for.
      const error: EngineError = this.blockedBy === 'batch_slot'
        ? { kind: 'batch_full', message: `no batch slot became free within ${seconds} s (all ${this.options.maxBatchSize} are generating); the server is at capacity`, retryAfterSeconds: 5 }
        : { kind: 'cache_full', message: `no KV cache room for the request within ${seconds} s; the server is at capacity`, retryAfterSeconds: 5 };
      out.push({ sequence, error });
    }
    return out;
  }

  /** When the oldest queued request times out (ms on the engine's clock), or null with none queued. */
  nextTimeoutAt(): number | null {
    if (this.waiting.length === 0) return null;
    return Math.min(...this.waiting.map((s) => s.enqueuedAt)) + this.options.queueTimeoutMs;
  }

  /** This iteration's plan: every decoding sequence (never starved), and the next prefill chunk. */
  plan(batchRows: number): StepPlan<T> {
    return { decode: this.decodePlan(), prefill: this.prefillPlan(batchRows) };
  }

  /** The decode half of the plan: every sequence that is decoding. */
  decodePlan(): T[] {
    return this.running.filter((s) => s.state === 'decode');
  }

  /**
   * The prefill half: the next chunk, sized by what is decoding now. The engine asks for it after the
   * decode step has run, since streams that finished in that step no longer wait for this chunk (with
   * none left, the chunk is a full one).
   */
  prefillPlan(batchRows: number): StepPlan<T>['prefill'] {
    const sequence = this.nextPrefill();
    if (!sequence) return null;
    const { decoding, prefilling } = this.rowCounts();
    return { sequence, tokens: this.chunkTokens(sequence, decoding, prefilling, batchRows) };
  }

  /**
   * The prefilling sequence that gets this iteration's chunk: the one with the fewest prompt tokens
   * left (shortest remaining first), ties to the earliest admitted. A short prompt behind a long one
   * gets its first token after its own chunks, not after the long prompt's; the long one loses only
   * the short ones' few chunks. Ongoing decodes are unaffected (a decode step runs every iteration).
   */
  private nextPrefill(): T | undefined {
    if (this.options.prefillOrder === 'arrival') return this.running.find((s) => s.state === 'prefill' && !s.inLane);
    let best: T | undefined;
    for (const s of this.running) {
      if (s.state === 'prefill' && !s.inLane && (!best || s.remainingPending < best.remainingPending)) best = s;
    }
    return best;
  }

  /**
   * What the prefill lane (a second decoder on its own thread, prefill-lane.ts) runs next, when it is
   * free: while streams decode, the prefilling sequence with the most prompt tokens left, in a full chunk,
   * if the chunk the step budget would give it inline does not finish it. A prompt that one budgeted
   * chunk finishes stays inline (its first token comes sooner from the loop's own decoder); a long one
   * no longer holds the running streams' steps back, since the lane runs beside them. With nothing
   * decoding there is nobody to hold back: chunks run inline, full size, on the loop's decoder.
   */
  lanePlan(batchRows: number): StepPlan<T>['prefill'] {
    if (!this.capabilities().multiTokenOverPast) return null;
    let longest: T | undefined;
    for (const s of this.running) {
      if (s.state === 'prefill' && !s.inLane && (!longest || s.remainingPending > longest.remainingPending)) longest = s;
    }
    const { decoding, prefilling } = this.rowCounts();
    if (decoding === 0 || !longest) return null;
    if (longest.remainingPending <= this.chunkTokens(longest, decoding, prefilling, batchRows)) return null;
    return { sequence: longest, tokens: this.options.prefillChunkTokens };
  }

  /** Sequences decoding, and those waiting for an inline chunk (one on the lane waits for nobody's budget). */
  private rowCounts(): { decoding: number; prefilling: number } {
    let decoding = 0;
    let prefilling = 0;
    for (const s of this.running) {
      if (s.state === 'decode') decoding++;
      else if (s.state === 'prefill' && !s.inLane) prefilling++;
    }
    return { decoding, prefilling };
  }

  /**
   * Prompt tokens for the next prefill chunk. Alone, a full chunk (fastest time to first token). With
   * streams decoding, as many tokens as the cost model says fit in `prefillStepShare` of a decode step
   * over this sequence's cache so far, so each running stream's next token is delayed by about that
   * much; the budget grows with the sequences waiting for their prefill, (prefilling + decoding) /
   * decoding, so a backlog of prompts (many clients arriving at once) does not leave the decode batch
   * half empty. The chunk is also capped by the prompt tokens left and the window (by the engine).
   */
  private chunkTokens(sequence: T, decodingRows: number, prefillingRows: number, batchRows: number): number {
    const max = this.options.prefillChunkTokens;
    // An export that cannot take several tokens over a past gets its prompt from the empty past in one
    // whole chunk (it cannot be cut later: every token after it costs a call), then one token per call.
    if (!this.capabilities().multiTokenOverPast) return sequence.cacheLength > 0 ? 1 : max;
    const share = this.options.prefillStepShare ?? 1;
    const decodeStepMs = this.cost.decodeStepMs;
    if (decodingRows === 0 || !Number.isFinite(share) || decodeStepMs === 0) return max;
    const min = Math.min(max, this.options.minPrefillChunkTokens ?? 16);
    // Before any chunk was measured, a prompt token costs about what a decode row costs.
    const fallbackPerTokenMs = decodeStepMs / Math.max(1, batchRows);
    const budgetMs = share * decodeStepMs * ((prefillingRows + decodingRows) / decodingRows);
    return Math.max(min, Math.min(max, this.cost.tokensWithin(budgetMs, sequence.cacheLength, fallbackPerTokenMs)));
  }
}

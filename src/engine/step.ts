/**
 * Executes the scheduler's plan for one loop iteration: one decode step of every decoding sequence
 * (batched, or one row per call for exports that cannot batch), then at most one prefill chunk. Around
 * the model calls (runner.ts) it applies the window drops a full cache needs, keeps the decode batch in
 * sync, runs prefill chunks and lone rows on the sequence's own buffer in KV_MODE=inplace
 * (own-buffer.ts), moves KV to the host (and out of own buffers) where the cache code needs it, and
 * hands finished or failed sequences to finishing. It decides nothing about which sequences run: that
 * is the scheduler's plan.
 */
import { needsDrop } from '../cache/window.ts';
import { kvOnHost } from '../model/types.ts';
import type { BatchRows, DecodeBatch } from './batch.ts';
import { InPlaceBatch } from './inplace-batch.ts';
import { LANE_GROWTH_SHARE, settleOwnBuffer } from './own-buffer.ts';
import type { EngineParts } from './parts.ts';
import type { PrefillLane } from './prefill-lane.ts';
import type { Runner, StepResult } from './runner.ts';
import type { Sequence } from './sequence.ts';
import type { EngineError } from './types.ts';
import { dropWindow, shiftWindowInBuffer } from './window-drop.ts';

export class StepExecutor {
  constructor(private readonly parts: EngineParts) {}

  /**
   * Runs this iteration's plan (its prefill half after the decode step); false when there was nothing to
   * run. With a prefill lane, a chunk that landed there is applied first, and the lane gets its next
   * chunk after the decode step, started without waiting: the inline chunk and the next iterations'
   * decode steps run while it does.
   */
  async iterate(): Promise<boolean> {
    const { scheduler, decodeBatch, lane } = this.parts;
    const landed = lane ? await this.landLaneChunk(lane) : false;
    const decode = scheduler.decodePlan();
    if (decode.length > 0) await this.decodeStep(decode);
    const batchRows = decodeBatch.current?.rows.length ?? 1;
    const toLane = lane && !lane.busy ? scheduler.lanePlan(batchRows) : null;
    if (toLane) this.startLaneChunk(lane!, toLane.sequence, toLane.tokens);
    const prefill = scheduler.prefillPlan(batchRows);
    if (prefill) await this.prefillChunk(prefill.sequence, prefill.tokens);
    return landed || decode.length > 0 || toLane !== null || prefill !== null;
  }

  /** Some KV (the batch's or a running sequence's) is in device memory. */
  hasDeviceKv(): boolean {
    return this.parts.decodeBatch.onDevice || this.parts.scheduler.running.some((s) => s.kv?.device);
  }

  /** Brings the batch's and every running sequence's KV to host memory, where the cache code works. */
  async hostAll(): Promise<void> {
    await this.parts.decodeBatch.toHost();
    for (const sequence of this.parts.scheduler.running) await this.hostSequence(sequence);
  }

  private async decodeStep(candidates: Sequence[]): Promise<void> {
    const { capabilities, window, runner, observers } = this.parts;
    // Rows of different lengths share a call only by left padding: without batching or padding, one row per call.
    if (!capabilities.batched || !capabilities.leftPadding) {
      for (const sequence of candidates) await this.decodeAlone(sequence);
      return;
    }
    let joining = 0;
    let full = 0;
    for (const sequence of candidates) {
      if (sequence.batchRow < 0) joining++;
      if (needsDrop(window, sequence.cacheLength)) full++;
    }
    // Device-resident KV stays put while the batch does not change; anything else works on the host.
    if ((full > 0 || (joining > 0 && (this.parts.decodeBatch.current || joining > 1))) && this.hasDeviceKv()) await this.hostAll();
    if (full > 0) {
      for (const sequence of candidates) if (needsDrop(window, sequence.cacheLength)) this.dropWindow(sequence);
    }
    // A recompute drop sent its sequence back to prefill: it sits this decode step out.
    const decoding = full > 0 ? candidates.filter((s) => s.state === 'decode') : candidates;
    if (decoding.length === 0) return;
    const decodeBatch = this.parts.decodeBatch;
    const inPlace = decodeBatch instanceof InPlaceBatch ? decodeBatch.sync(decoding) : null;
    const batch = inPlace ?? (decodeBatch as DecodeBatch<Sequence>).sync(decoding);
    const slots = batch.rows;
    const rows = slots.filter((s): s is Sequence => s !== null);
    const step = inPlace ? await runner.decodeInPlace(inPlace) : await runner.decodeBatch(batch as BatchRows<Sequence>);
    if (!step.ok) {
      await this.failStep(rows, step.error);
      return;
    }
    for (const o of observers) o.decodeStep?.({ sequences: rows, kvTokens: step.kvTokens, startMs: step.startMs, durationMs: step.durationMs });
    const finished = await runner.sampleRows(slots, step);
    if (finished.length === 0) return;
    // Finishing stores each sequence's own KV in its session, which works on the host.
    if (this.hasDeviceKv()) await this.hostAll();
    for (const [sequence, reason] of finished) this.parts.finish(sequence, reason);
  }

  /** One decode step of one sequence on its own cache (for exports that cannot batch rows). */
  private async decodeAlone(sequence: Sequence): Promise<void> {
    const { window, runner, observers } = this.parts;
    if (needsDrop(window, sequence.cacheLength)) {
      await this.hostSequence(sequence);
      this.dropWindow(sequence);
      if (sequence.state !== 'decode') return; // recompute: the kept tokens are prefilled again first
    }
    const ownBuffers = this.parts.ownBuffers;
    const step = ownBuffers ? await runner.decodeAloneInPlace(sequence, ownBuffers.take(sequence, 1)) : await runner.decodeAlone(sequence);
    if (!step.ok) {
      await this.failStep([sequence], step.error);
      return;
    }
    for (const o of observers) o.decodeStep?.({ sequences: [sequence], kvTokens: step.kvTokens, startMs: step.startMs, durationMs: step.durationMs });
    const reason = runner.sampleNext(sequence, step.logits, 0, step.vocabSize);
    if (!reason) return;
    await this.hostSequence(sequence);
    this.parts.finish(sequence, reason);
  }

  private async prefillChunk(sequence: Sequence, chunkTokens: number): Promise<void> {
    if (needsDrop(this.parts.window, sequence.cacheLength)) await this.hostSequence(sequence);
    const { tokens, call } = this.chunkCall(this.parts.runner, sequence, chunkTokens);
    await this.applyChunk(sequence, tokens, await call, false);
  }

  /** Starts a chunk of `sequence` on the lane (its KV needs no host copy first: only WebGPU keeps KV on the device, and it has no lane). */
  private startLaneChunk(lane: PrefillLane, sequence: Sequence, chunkTokens: number): void {
    const { tokens, call } = this.chunkCall(lane.runner, sequence, chunkTokens, true);
    this.parts.counters.laneChunks++;
    lane.start(sequence, tokens, call);
  }

  /**
   * Applies the chunk that landed on the lane, if any (true then). A sequence cancelled meanwhile (the
   * loop's reaping skipped it while its cache was on the lane) keeps the chunk in its cache and is
   * reaped here, as the loop would have; one the loop ended meanwhile (its failure path) is left alone.
   */
  private async landLaneChunk(lane: PrefillLane): Promise<boolean> {
    const landed = lane.take();
    if (!landed) return false;
    const { sequence, tokens, step } = landed;
    if (sequence.state === 'finished') return true;
    if (step.ok && sequence.abortReason) this.parts.finish(sequence, 'error', sequence.abortReason);
    else if (step.ok && sequence.request.signal?.aborted) this.parts.finish(sequence, 'cancelled');
    else await this.applyChunk(sequence, tokens, step, true);
    return true;
  }

  /**
   * Window drop if the cache is full, then the model call of the next chunk on `runner`: on the
   * sequence's own buffer in place (a lane chunk's buffer doubles when it grows: LANE_GROWTH_SHARE),
   * else on its own tight cache.
   */
  private chunkCall(runner: Runner, sequence: Sequence, chunkTokens: number, lane = false): { tokens: number; call: Promise<StepResult> } {
    const { window } = this.parts;
    if (needsDrop(window, sequence.cacheLength)) this.dropWindow(sequence);
    const count = Math.min(chunkTokens, window.capacity - sequence.cacheLength, sequence.remainingPending);
    const ownBuffers = this.parts.ownBuffers;
    if (!ownBuffers) return { tokens: count, call: runner.prefill(sequence, count) };
    const buffer = lane ? ownBuffers.take(sequence, count, LANE_GROWTH_SHARE) : ownBuffers.take(sequence, count);
    return { tokens: count, call: runner.prefillInPlace(sequence, buffer, count) };
  }

  /** After a chunk's call: its observers, and at the prompt's end the first token (or the end). */
  private async applyChunk(sequence: Sequence, count: number, step: StepResult, lane: boolean): Promise<void> {
    const { runner, observers } = this.parts;
    if (!step.ok) {
      await this.failStep([sequence], step.error);
      return;
    }
    for (const o of observers) o.prefillChunk?.(sequence, { tokens: count, kvTokens: step.kvTokens, startMs: step.startMs, durationMs: step.durationMs, lane });
    if (sequence.remainingPending === 0) {
      // max_tokens 0 only fills the cache (the native API's session prefill).
      await sequence.constraint?.prepare();
      const reason = sequence.request.maxTokens === 0 ? 'length' : runner.sampleNext(sequence, step.logits, step.logitPositions - 1, step.vocabSize);
      if (reason) {
        if (sequence.kv?.device) await this.hostSequence(sequence);
        this.parts.finish(sequence, reason);
      } else sequence.state = 'decode';
    }
  }

  /**
   * The cache is full: drops per the window policy. `shift` on in-place buffers happens inside them;
   * otherwise the sequence leaves the batch or its own buffer (holding its own tight KV again) first.
   */
  private dropWindow(sequence: Sequence): void {
    const { decodeBatch, window, layout, inverseFrequencies, observers } = this.parts;
    const inBatch = decodeBatch instanceof InPlaceBatch && sequence.batchRow >= 0 ? decodeBatch.current!.kv : null;
    const buffer = inBatch ?? sequence.buffer;
    if (window.strategy === 'shift' && inverseFrequencies && buffer) {
      shiftWindowInBuffer(sequence, window, buffer, inBatch ? sequence.batchRow : 0, inverseFrequencies);
      this.parts.counters.inPlaceWindowShifts++;
    } else {
      decodeBatch.leave(sequence);
      settleOwnBuffer(sequence);
      dropWindow(sequence, window, layout, inverseFrequencies);
    }
    for (const o of observers) o.windowDrop?.(sequence, { droppedTokens: window.dropTokens, strategy: window.strategy });
  }

  private async hostSequence(sequence: Sequence): Promise<void> {
    if (sequence.kv?.device) sequence.kv = await kvOnHost(sequence.kv);
  }

  /** A model call failed: its sequences end with an error; their caches still hold the state before the call. */
  private async failStep(sequences: Sequence[], error: unknown): Promise<void> {
    this.parts.logger.error({ err: (error as Error).message, sequences: sequences.map((s) => s.request.requestId) }, 'model step failed');
    const engineError: EngineError = { kind: 'internal', message: 'the model failed while generating' };
    await this.hostAll();
    for (const sequence of sequences) this.parts.finish(sequence, 'error', engineError);
  }
}

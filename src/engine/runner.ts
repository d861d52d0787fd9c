/**
 * The executing side of a step: builds the model inputs for a decode batch, a lone decode row or a
 * prefill chunk, runs the decoder, times the call (counters and the moving averages that size prefill
 * chunks), and samples the next token from the logits. It decides nothing: which sequences run, and
 * what happens to a failed or finished one, is the engine's business.
 */
import { performance } from 'node:perf_hooks';
import { halfArrayToFloat } from '../lib/float16.ts';
import { emptyKv, type Decoder, type DecoderOutput, type KvData, type KvLayout, type KvTensors } from '../model/types.ts';
import type { BatchRows } from './batch.ts';
import type { InPlaceRows } from './inplace-batch.ts';
import type { InPlaceKv } from './inplace-kv.ts';
import { tokenLogprob } from './logprobs.ts';
import { Sampler } from './sampler.ts';
import type { Sequence } from './sequence.ts';
import type { FinishReason } from './types.ts';

/** The step counters the runner keeps (a subset of the engine's counters, the same object). */
export interface RunnerCounters {
  decodeSteps: number;
  decodeRows: number;
  decodeMs: number;
  batchSlots: number;
  paddingSlots: number;
  /** Bytes the decode steps copied out of the model runtime into JavaScript (logits and host present KV). */
  decodeBytesOut: number;
  prefillChunks: number;
  prefillTokens: number;
  prefillMs: number;
  /** Bytes the prefill chunks copied out of the model runtime: logits, and present KV (the whole cache, or in place only the new rows). */
  prefillBytesOut: number;
}

/** A model call that ran: its logits (`// [rows, logitPositions, vocabSize]`) and when it ran. */
export interface StepRan {
  ok: true;
  logits: KvData;
  vocabSize: number;
  /** Positions of each row the logits hold (the call's last ones): 1 for a prefill chunk where the decoder cuts them. */
  logitPositions: number;
  startMs: number;
  durationMs: number;
  /** Cache slots the call's rows hold afterwards (sum over live rows). */
  kvTokens: number;
}

/** A model call that threw: the caches it was given are unchanged. */
export interface StepFailed {
  ok: false;
  error: unknown;
}

export type StepResult = StepRan | StepFailed;

export class Runner {
  private readonly sampler: Sampler;
  /** A row of float16 logits as float32. `// [vocabSize]` */
  private readonly logitsRow: Float32Array;
  /** A row of logits with a grammar's mask applied. `// [vocabSize]` */
  private readonly maskedRow: Float32Array;

  constructor(
    private readonly decoder: Decoder,
    /** Ids below this are sampling candidates (the logits may have more columns). */
    private readonly vocabSize: number,
    private readonly counters: RunnerCounters,
    private readonly now: () => number = Date.now,
  ) {
    this.sampler = new Sampler(vocabSize);
    this.logitsRow = new Float32Array(vocabSize);
    this.maskedRow = new Float32Array(vocabSize);
  }

  private get layout(): KvLayout {
    return this.decoder.io.kv;
  }

  /**
   * One decode step of every row of the batch: free rows run token 0 at position 0 attending only to
   * themselves (nobody reads their output). On success the batch holds the present KV and every live
   * row's sequence has advanced by one token.
   */
  async decodeBatch(batch: BatchRows<Sequence>): Promise<StepResult> {
    const slots = batch.rows;
    const batchSize = slots.length;
    const totalLength = batch.kv.length + 1;
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
        attentionMask[(r + 1) * totalLength - 1] = 1n;
      }
    }
    const call = await this.timed(() => this.decoder.run({ batchSize, seqLength: 1, inputIds, attentionMask, positionIds, past: batch.kv }));
    if (!call.ok) return call;
    const { output, startMs, durationMs } = call;
    batch.kv = output.present;
    const { rows, kvTokens } = advanceRows(slots);
    this.countDecode(rows, batchSize * totalLength, kvTokens, durationMs, output);
    return { ok: true, logits: output.logits, vocabSize: output.vocabSize, logitPositions: positionsOf(output, 1), startMs, durationMs, kvTokens };
  }

  /**
   * One decode step of every row of an in-place batch: the buffers are the past (unused capacity
   * masked out), only logits and the new rows are fetched, and those are written into the buffers.
   * The buffers are the batch's alone, so they are lent to the call (a decoder thread moves them).
   */
  async decodeInPlace(batch: InPlaceRows<Sequence>): Promise<StepResult> {
    const { rows: slots, kv } = batch;
    const batchSize = slots.length;
    kv.ensureCapacity(Math.max(...kv.lengths) + 1);
    const inputIds = new BigInt64Array(batchSize); // [batch, 1]
    const positionIds = new BigInt64Array(batchSize); // [batch, 1]
    for (let r = 0; r < batchSize; r++) {
      const sequence = slots[r];
      if (!sequence) continue;
      inputIds[r] = BigInt(sequence.pending[sequence.pendingIndex]);
      positionIds[r] = BigInt(sequence.cacheLength);
    }
    const attentionMask = kv.attentionMask(); // [batch, capacity + 1]
    const call = await this.timed(() => this.decoder.run({ batchSize, seqLength: 1, inputIds, attentionMask, positionIds, past: kv.past, fetch: 'new-rows', lendPast: true }));
    if (!call.ok) return call;
    const { output, startMs, durationMs } = call;
    kv.append(output.present);
    const { rows, kvTokens } = advanceRows(slots);
    this.countDecode(rows, batchSize * (kv.capacity + 1), kvTokens, durationMs, output);
    return { ok: true, logits: output.logits, vocabSize: output.vocabSize, logitPositions: positionsOf(output, 1), startMs, durationMs, kvTokens };
  }

  /** One decode step of one sequence on its own cache (for exports that cannot batch rows). */
  async decodeAlone(sequence: Sequence): Promise<StepResult> {
    const total = sequence.cacheLength + 1;
    const inputIds = BigInt64Array.of(BigInt(sequence.pending[sequence.pendingIndex])); // [1, 1]
    const positionIds = BigInt64Array.of(BigInt(sequence.cacheLength)); // [1, 1]
    const attentionMask = new BigInt64Array(total).fill(1n); // [1, past + 1]
    const past = sequence.kv!;
    const call = await this.timed(() => this.decoder.run({ batchSize: 1, seqLength: 1, inputIds, attentionMask, positionIds, past }));
    if (!call.ok) return call;
    const { output, startMs, durationMs } = call;
    sequence.kv = output.present;
    sequence.cacheLength = total;
    sequence.pendingIndex++;
    this.countDecode(1, total, total, durationMs, output);
    return { ok: true, logits: output.logits, vocabSize: output.vocabSize, logitPositions: positionsOf(output, 1), startMs, durationMs, kvTokens: total };
  }

  /** The next `count` pending tokens of `sequence` over its cache; on success its cache holds them. */
  async prefill(sequence: Sequence, count: number): Promise<StepResult> {
    const past = sequence.kv ?? emptyKv(this.layout, 1);
    const total = sequence.cacheLength + count;
    const inputIds = new BigInt64Array(count); // [1, count]
    const positionIds = new BigInt64Array(count); // [1, count]
    for (let i = 0; i < count; i++) {
      inputIds[i] = BigInt(sequence.pending[sequence.pendingIndex + i]);
      positionIds[i] = BigInt(sequence.cacheLength + i);
    }
    const attentionMask = new BigInt64Array(total).fill(1n); // [1, past + count]
    const call = await this.timed(() => this.decoder.run({ batchSize: 1, seqLength: count, inputIds, attentionMask, positionIds, past, logitsToKeep: 1 }));
    if (!call.ok) return call;
    const { output, startMs, durationMs } = call;
    this.countPrefill(count, durationMs, output);
    sequence.kv = output.present;
    sequence.cacheLength = total;
    sequence.pendingIndex += count;
    return { ok: true, logits: output.logits, vocabSize: output.vocabSize, logitPositions: positionsOf(output, count), startMs, durationMs, kvTokens: total };
  }

  /**
   * The next `count` pending tokens of `sequence` over its own in-place buffer (own-buffer.ts), which
   * has room for them: only logits and the new rows come back, written after the valid slots.
   */
  async prefillInPlace(sequence: Sequence, buffer: InPlaceKv, count: number): Promise<StepResult> {
    const call = await this.stepOnBuffer(sequence, buffer, count);
    if (!call.ok) return call;
    const { output, startMs, durationMs } = call;
    this.countPrefill(count, durationMs, output);
    return { ok: true, logits: output.logits, vocabSize: output.vocabSize, logitPositions: positionsOf(output, count), startMs, durationMs, kvTokens: sequence.cacheLength };
  }

  /** One decode step of one sequence on its own in-place buffer (for exports that cannot batch rows). */
  async decodeAloneInPlace(sequence: Sequence, buffer: InPlaceKv): Promise<StepResult> {
    const call = await this.stepOnBuffer(sequence, buffer, 1);
    if (!call.ok) return call;
    const { output, startMs, durationMs } = call;
    this.countDecode(1, buffer.capacity + 1, sequence.cacheLength, durationMs, output);
    return { ok: true, logits: output.logits, vocabSize: output.vocabSize, logitPositions: positionsOf(output, 1), startMs, durationMs, kvTokens: sequence.cacheLength };
  }

  /**
   * Runs `count` pending tokens over row 0 of `buffer` (the unused capacity masked out) and writes their
   * new rows into it. An empty buffer is not grown first: its past stays empty, and `append` grows it.
   */
  private async stepOnBuffer(sequence: Sequence, buffer: InPlaceKv, count: number) {
    if (sequence.cacheLength > 0) buffer.ensureCapacity(sequence.cacheLength + count);
    const inputIds = new BigInt64Array(count); // [1, count]
    const positionIds = new BigInt64Array(count); // [1, count]
    for (let i = 0; i < count; i++) {
      inputIds[i] = BigInt(sequence.pending[sequence.pendingIndex + i]);
      positionIds[i] = BigInt(sequence.cacheLength + i);
    }
    const attentionMask = buffer.attentionMask(count); // [1, capacity + count]
    const call = await this.timed(() => this.decoder.run({ batchSize: 1, seqLength: count, inputIds, attentionMask, positionIds, past: buffer.past, fetch: 'new-rows', lendPast: true, logitsToKeep: 1 }));
    if (!call.ok) return call;
    buffer.append(call.output.present);
    sequence.cacheLength += count;
    sequence.pendingIndex += count;
    return call;
  }

  /**
   * Samples the next token of every live row of a decode step (row r of the logits), after preparing
   * their grammars; returns the rows that end, with why.
   */
  async sampleRows(rows: ReadonlyArray<Sequence | null>, step: StepRan): Promise<Array<[Sequence, FinishReason]>> {
    for (const sequence of rows) await sequence?.constraint?.prepare();
    const finished: Array<[Sequence, FinishReason]> = [];
    for (let r = 0; r < rows.length; r++) {
      const sequence = rows[r];
      const reason = sequence ? this.sampleNext(sequence, step.logits, r, step.vocabSize) : null;
      if (reason) finished.push([sequence!, reason]);
    }
    return finished;
  }

  /**
   * Samples the token after row `row` of the logits; returns why the sequence ends, or null after
   * queueing the token as the next input.
   */
  sampleNext(sequence: Sequence, logits: KvData, row: number, vocabSize: number): FinishReason | null {
    const offset = row * vocabSize;
    let rowLogits: Float32Array;
    if (logits instanceof Float32Array) rowLogits = logits.subarray(offset, offset + this.vocabSize);
    else rowLogits = halfArrayToFloat(logits.subarray(offset, offset + this.vocabSize), this.logitsRow);
    const request = sequence.request;
    const greedy = request.sampling.temperature <= 0;
    // The grammar masks a copy, so logprobs stay the raw model's.
    const sampled = sequence.constraint ? sequence.constraint.mask(rowLogits, this.maskedRow) : rowLogits;
    const token = this.sampler.sample(sampled, request.sampling, greedy ? null : sequence.rng, sequence.seen, sequence.row);
    // Raw-model logprobs (before any processing), only for rows that asked.
    const logprob = request.logprobs === undefined ? undefined : tokenLogprob(rowLogits, this.vocabSize, token, request.logprobs);
    if (sequence.firstTokenAt === 0) sequence.firstTokenAt = this.now();
    const reason = sequence.accept(token, logprob);
    if (reason) return reason;
    sequence.pending = [token];
    sequence.pendingIndex = 0;
    return null;
  }

  private async timed(call: () => Promise<DecoderOutput>): Promise<{ ok: true; output: DecoderOutput; startMs: number; durationMs: number } | StepFailed> {
    const startMs = performance.now();
    try {
      const output = await call();
      return { ok: true, output, startMs, durationMs: performance.now() - startMs };
    } catch (error) {
      return { ok: false, error };
    }
  }

  private countPrefill(tokens: number, durationMs: number, output: DecoderOutput): void {
    const c = this.counters;
    c.prefillChunks++;
    c.prefillTokens += tokens;
    c.prefillMs += durationMs;
    c.prefillBytesOut += output.logits.byteLength + hostKvBytes(output.present);
  }

  private countDecode(rows: number, slots: number, kvTokens: number, durationMs: number, output: DecoderOutput): void {
    const c = this.counters;
    c.decodeSteps++;
    c.decodeRows += rows;
    c.decodeMs += durationMs;
    c.batchSlots += slots;
    c.paddingSlots += slots - kvTokens;
    c.decodeBytesOut += output.logits.byteLength + hostKvBytes(output.present);
  }
}

/** Each live row of a decode step moves one token from pending into its cache. */
function advanceRows(slots: ReadonlyArray<Sequence | null>): { rows: number; kvTokens: number } {
  let kvTokens = 0;
  let rows = 0;
  for (const sequence of slots) {
    if (!sequence) continue;
    sequence.cacheLength++;
    sequence.pendingIndex++;
    kvTokens += sequence.cacheLength;
    rows++;
  }
  return { rows, kvTokens };
}

/** Bytes of KV that came back in host memory (device-resident KV is not copied out). */
function hostKvBytes(kv: KvTensors): number {
  let bytes = 0;
  for (const layer of kv.layers) bytes += layer.key.byteLength + layer.value.byteLength;
  return bytes;
}

/** Positions per row the call's logits hold: its last `seqLength` or fewer (`logitsToKeep`). */
function positionsOf(output: DecoderOutput, seqLength: number): number {
  return output.logitPositions ?? seqLength;
}

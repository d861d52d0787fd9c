/**
 * Teacher-forced scoring through the same KV-cached path generation uses: chunked prefill into a
 * cache, the same sliding-window drops (shift or recompute), optionally an int8 round trip of the
 * whole cache between chunks (as an idle session would get). The quality harness reports perplexity
 * and top-1 predictions from it, so cache features can be judged on real text.
 */
import { dequantizeKv, quantizeKv, type KeyScaleMode } from '../cache/int8.ts';
import { dropAndShift, rotaryInverseFrequencies } from '../cache/kv-ops.ts';
import { NO_WINDOW, type WindowState } from '../cache/session.ts';
import { cachedTranscript, needsDrop, planDrop, type WindowPolicy } from '../cache/window.ts';
import { halfToFloat } from '../lib/float16.ts';
import { emptyKv, kvOnHost, type Decoder, type KvTensors, type PositionEncoding } from '../model/types.ts';

export interface ScoreOptions {
  /** null: dense attention over everything (no truncation at all). */
  window: WindowPolicy | null;
  positionEncoding: PositionEncoding;
  /** Tokens per model call; also where int8 round trips happen. */
  chunkTokens: number;
  /** Quantize and dequantize the whole cache after every chunk. */
  int8?: { keyMode: KeyScaleMode } | null;
  /** Called after every chunk with the number of tokens scored so far. */
  onProgress?: (scored: number) => void;
  /** The logits at every position i (predicting token i + 1), as float32; the row is only valid during the call. */
  onLogits?: (position: number, logits: Float32Array) => void;
}

export interface ScoreResult {
  /** Predictions scored: tokens.length - 1. */
  count: number;
  /** Sum of negative log-likelihoods (nats). */
  totalNll: number;
  perplexity: number;
  /** Argmax prediction for every position i (predicting token i + 1). */
  top1: Int32Array;
  dropEvents: number;
  /** Largest number of tokens the model attended to in one call. */
  maxAttended: number;
}

export async function scoreTokens(decoder: Decoder, tokens: readonly number[], options: ScoreOptions): Promise<ScoreResult> {
  const layout = decoder.io.kv;
  const policy = options.window;
  const inverseFrequencies =
    policy?.strategy === 'shift' && options.positionEncoding.kind === 'rotary'
      ? rotaryInverseFrequencies(options.positionEncoding.theta, options.positionEncoding.rotaryDim)
      : null;
  if (policy?.strategy === 'shift' && !inverseFrequencies) throw new Error('shift needs a rotary model');

  let kv: KvTensors = emptyKv(layout, 1);
  /** How the cache maps onto `tokens` (the same bookkeeping a session keeps). */
  let window: WindowState = { ...NO_WINDOW };
  const top1 = new Int32Array(Math.max(0, tokens.length - 1));
  let totalNll = 0;
  let maxAttended = 0;
  let next = 0;
  const target = tokens.length - 1;

  const run = async (input: readonly number[]) => {
    const past = kv.length;
    const count = input.length;
    const output = await decoder.run({
      batchSize: 1,
      seqLength: count,
      inputIds: BigInt64Array.from(input, (t) => BigInt(t)),
      attentionMask: new BigInt64Array(past + count).fill(1n),
      positionIds: BigInt64Array.from(input, (_, i) => BigInt(past + i)),
      past: kv,
    });
    kv = output.present;
    maxAttended = Math.max(maxAttended, kv.length);
    return output;
  };

  while (next < target) {
    // The engine's drop rule (cache/window.ts), so perplexity is measured on what serving computes.
    if (policy && needsDrop(policy, kv.length)) {
      const drop = planDrop(policy, window, kv.length);
      window = drop.window;
      kv = await kvOnHost(kv);
      if (policy.strategy === 'shift') {
        const [start, end] = drop.slots;
        kv = dropAndShift(layout, kv, start, end - start, inverseFrequencies!);
      } else {
        // Every token before `next` was dropped or is cached, so the kept ones are read off `tokens`.
        const kept = cachedTranscript(tokens, policy.sinkTokens, window, drop.keptLength);
        kv = emptyKv(layout, 1);
        for (let i = 0; i < kept.length; i += options.chunkTokens) await run(kept.slice(i, i + options.chunkTokens));
      }
    }
    const room = policy ? policy.capacity - kv.length : Infinity;
    const count = Math.min(options.chunkTokens, room, target - next);
    const output = await run(tokens.slice(next, next + count));
    const vocab = output.vocabSize;
    const logits = output.logits;
    for (let j = 0; j < count; j++) {
      const offset = j * vocab;
      let max = -Infinity;
      let best = 0;
      for (let v = 0; v < vocab; v++) {
        const x = logits instanceof Float32Array ? logits[offset + v] : halfToFloat(logits[offset + v]);
        if (x > max) {
          max = x;
          best = v;
        }
      }
      let sum = 0;
      for (let v = 0; v < vocab; v++) {
        const x = logits instanceof Float32Array ? logits[offset + v] : halfToFloat(logits[offset + v]);
        sum += Math.exp(x - max);
      }
      if (options.onLogits) {
        const row = logits.subarray(offset, offset + vocab);
        options.onLogits(next + j, row instanceof Float32Array ? row : Float32Array.from(row, halfToFloat));
      }
      const actual = tokens[next + j + 1];
      const x = logits instanceof Float32Array ? logits[offset + actual] : halfToFloat(logits[offset + actual]);
      totalNll += Math.log(sum) + max - x;
      top1[next + j] = best;
    }
    next += count;
    if (options.int8) kv = dequantizeKv(layout, quantizeKv(layout, await kvOnHost(kv), options.int8.keyMode));
    options.onProgress?.(next);
  }
  return { count: target, totalNll, perplexity: Math.exp(totalNll / Math.max(1, target)), top1, dropEvents: window.dropEvents, maxAttended };
}

/**
 * The int8 tier is lossy: whether a model may use it is measured at load, not assumed. A short
 * synthetic calibration sequence runs through the real decoder: a seeded prompt is prefilled, its
 * greedy continuation is decoded, and then that continuation is scored teacher-forced twice, once on
 * the native prompt cache and once on the same cache after an int8 round trip. The gate passes when
 * the greedy choices agree (share of positions with the same argmax) and the continuation's
 * perplexity barely moves; otherwise idle sessions skip int8 (native snapshots and recomputation are
 * exact).
 */
import { performance } from 'node:perf_hooks';
import { dequantizeKv, quantizeKv, type KeyScaleMode } from '../cache/int8.ts';
import { halfArrayToFloat } from '../lib/float16.ts';
import { Rng } from '../lib/rng.ts';
import { emptyKv, kvOnHost, type Decoder, type DecoderOutput, type KvTensors } from '../model/types.ts';
import { InPlaceKv } from './inplace-kv.ts';

export interface Int8GateOptions {
  vocabSize: number;
  keyMode: KeyScaleMode;
  promptTokens?: number;
  continuationTokens?: number;
  /** Least share of positions whose argmax must agree. */
  minAgreement?: number;
  /** Largest relative change of the continuation's perplexity. */
  maxPerplexityDrift?: number;
  seed?: number;
  /** false: the export cannot take several tokens over a past (model probe); score one token per call. */
  multiTokenOverPast?: boolean;
  /**
   * The decoder has new-row outputs and honours masked slots (what in-place KV needs): token-by-token
   * calls then run over one fixed-capacity buffer, one input shape for all of them, as serving does.
   * Growing a concat past by one slot a call gave onnxruntime a new shape each call, and the memory
   * patterns it planned for 63 shapes stayed in its arena: 24 MiB of resident memory for the server's
   * life on warmkv-brown (bench/probes/server-memory.ts, docs/benchmarks.md).
   */
  inPlace?: boolean;
}

export interface Int8GateResult {
  enabled: boolean;
  /** Share of continuation positions where int8 picks the native greedy token. */
  agreement: number;
  /** |ppl(int8) / ppl(native) - 1| over the continuation. */
  perplexityDrift: number;
  /** Largest absolute logit difference seen. */
  maxLogitDrift: number;
  positions: number;
  ms: number;
}

export const INT8_GATE_DEFAULTS = { promptTokens: 128, continuationTokens: 64, minAgreement: 0.98, maxPerplexityDrift: 0.02, seed: 1234 };

/** The row of logits at `row`, as float32. */
function rowOf(output: DecoderOutput, row: number, vocabSize: number): Float32Array {
  const start = row * output.vocabSize;
  const slice = output.logits.subarray(start, start + vocabSize);
  return slice instanceof Float32Array ? slice : halfArrayToFloat(slice, new Float32Array(vocabSize));
}

function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** -log softmax(logits)[token]. */
function nll(logits: Float32Array, token: number): number {
  let max = -Infinity;
  for (const x of logits) if (x > max) max = x;
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  return Math.log(sum) + max - logits[token];
}

async function run(decoder: Decoder, tokens: readonly number[], start: number, past: KvTensors): Promise<DecoderOutput> {
  const n = tokens.length;
  return decoder.run({
    batchSize: 1,
    seqLength: n,
    inputIds: BigInt64Array.from(tokens, (t) => BigInt(t)), // [1, n]
    attentionMask: new BigInt64Array(start + n).fill(1n), // [1, start + n]
    positionIds: BigInt64Array.from(tokens, (_, i) => BigInt(start + i)), // [1, n]
    past,
  });
}

/**
 * Token-by-token calls after `past` (which holds `start` tokens), `count` calls in all: call i feeds
 * `tokens[i]`, or where `tokens` has run out the previous call's greedy choice. Returns each call's
 * logits row and the tokens fed. In place (`capacity` set, at least `start + count`), one buffer of
 * `capacity` slots is the past of every call; otherwise each call's present becomes the next call's past.
 */
async function stepByStep(decoder: Decoder, past: KvTensors, start: number, tokens: readonly number[], count: number, vocab: number, capacity: number | null): Promise<{ rows: Float32Array[]; fed: number[] }> {
  const rows: Float32Array[] = [];
  const fed: number[] = [];
  const buffer = capacity === null ? null : new InPlaceKv(decoder.io.kv, 1, capacity, capacity);
  buffer?.join(0, past, count);
  let cache = past;
  for (let i = 0; i < count; i++) {
    const token = tokens[i] ?? argmax(rows[i - 1]);
    fed.push(token);
    const output = buffer
      ? await decoder.run({
          batchSize: 1,
          seqLength: 1,
          inputIds: BigInt64Array.of(BigInt(token)), // [1, 1]
          attentionMask: buffer.attentionMask(1), // [1, capacity + 1]
          positionIds: BigInt64Array.of(BigInt(start + i)), // [1, 1]
          past: buffer.past,
          fetch: 'new-rows',
        })
      : await run(decoder, [token], start + i, cache);
    if (buffer) buffer.append(await kvOnHost(output.present));
    else cache = await kvOnHost(output.present);
    rows.push(rowOf(output, 0, vocab).slice());
  }
  return { rows, fed };
}

/** Logits rows of `tokens` fed after `past` (which holds `start` tokens), in one call or one call per token. */
async function score(decoder: Decoder, tokens: readonly number[], start: number, past: KvTensors, vocab: number, oneCall: boolean, capacity: number | null): Promise<Float32Array[]> {
  if (oneCall) {
    const output = await run(decoder, tokens, start, past);
    return tokens.map((_, i) => rowOf(output, i, vocab).slice());
  }
  return (await stepByStep(decoder, past, start, tokens, tokens.length, vocab, capacity)).rows;
}

export async function measureInt8(decoder: Decoder, options: Int8GateOptions): Promise<Int8GateResult> {
  const started = performance.now();
  const settings = { ...INT8_GATE_DEFAULTS, ...options };
  const layout = decoder.io.kv;
  const vocab = options.vocabSize;
  const rng = new Rng(settings.seed);
  const prompt = Array.from({ length: settings.promptTokens }, () => Math.floor(rng.next() * vocab));

  const prefill = await run(decoder, prompt, 0, emptyKv(layout, 1));
  const promptKv = await kvOnHost(prefill.present);
  // The native greedy continuation, decoded step by step as the engine would.
  // One capacity for the decoding and the scoring alike: one shape for every token-by-token call.
  const capacity = options.inPlace ? prompt.length + settings.continuationTokens : null;
  const first = argmax(rowOf(prefill, prompt.length - 1, vocab));
  const decoded = await stepByStep(decoder, promptKv, prompt.length, [first], settings.continuationTokens - 1, vocab, capacity);
  const continuation = decoded.rows.length > 0 ? [...decoded.fed, argmax(decoded.rows.at(-1)!)] : [first];

  const roundTrip = dequantizeKv(layout, quantizeKv(layout, promptKv, settings.keyMode));
  const oneCall = options.multiTokenOverPast ?? true;
  const native = await score(decoder, continuation, prompt.length, promptKv, vocab, oneCall, capacity);
  const lossy = await score(decoder, continuation, prompt.length, roundTrip, vocab, oneCall, capacity);
  let agree = 0;
  let nativeNll = 0;
  let lossyNll = 0;
  let maxLogitDrift = 0;
  const positions = continuation.length - 1;
  for (let i = 0; i < positions; i++) {
    const a = native[i];
    const b = lossy[i];
    if (argmax(a) === argmax(b)) agree++;
    for (let v = 0; v < vocab; v++) maxLogitDrift = Math.max(maxLogitDrift, Math.abs(a[v] - b[v]));
    nativeNll += nll(a, continuation[i + 1]);
    lossyNll += nll(b, continuation[i + 1]);
  }
  const agreement = positions > 0 ? agree / positions : 1;
  const perplexityDrift = positions > 0 ? Math.abs(Math.exp((lossyNll - nativeNll) / positions) - 1) : 0;
  return {
    enabled: agreement >= settings.minAgreement && perplexityDrift <= settings.maxPerplexityDrift,
    agreement,
    perplexityDrift,
    maxLogitDrift,
    positions,
    ms: performance.now() - started,
  };
}

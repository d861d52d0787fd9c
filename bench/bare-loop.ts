/**
 * The bare onnxruntime loop every benchmark compares against: one decoder call per step through the model
 * room alone. Kept apart from bench/common.ts so a process that only runs the loop (the memory floor,
 * bench/probes/bare-rss.ts) loads the model room and nothing of the server: importing common.ts would
 * load the HTTP app, the engine and their dependencies too, about 20 MiB of a floor that is meant to
 * hold only what a bare loop needs.
 */
import { argmax } from '../src/engine/sampler.ts';
import { emptyKv, type Decoder, type KvTensors } from '../src/model/index.ts';

/** One decoder call on a single row: `tokens` after `past`, positions continuing from it. */
export async function forward(decoder: Decoder, tokens: readonly number[], past: KvTensors) {
  const n = tokens.length;
  return decoder.run({
    batchSize: 1,
    seqLength: n,
    inputIds: BigInt64Array.from(tokens, (t) => BigInt(t)),
    attentionMask: new BigInt64Array(past.length + n).fill(1n),
    positionIds: BigInt64Array.from(tokens, (_, i) => BigInt(past.length + i)),
    past,
  });
}

export function lastArgmax(logits: Float32Array | Uint16Array, rows: number, vocab: number): number {
  if (!(logits instanceof Float32Array)) throw new Error('benchmarks expect float32 logits');
  return argmax(logits.subarray((rows - 1) * vocab, rows * vocab), vocab);
}

export { emptyKv };

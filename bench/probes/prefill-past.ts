/**
 * The cost of one prefill chunk over a past (issue 25, issue 15's fairness): a chunk of 16 / 64 / 256
 * tokens over a past of 0 / 1k / 2k / 4k tokens in a bare onnxruntime loop, for
 *   (a) concat, the Optimum graph as exported: feed the past as its own tensors `[1, kv_heads, past, head_dim]`,
 *       fetch logits and every present.* (the whole cache, copied out of onnxruntime);
 *   (b) in place, the graph rewritten by src/model/kv-rewrite.ts: feed the past as the sequence's buffer
 *       `[1, kv_heads, capacity, head_dim]` (capacity as the engine grows it, the next multiple of --block
 *       that holds the past and the chunk; `--growth double`: --block doubled until they fit), the unused
 *       capacity masked out, fetch only logits and new_rows.*, and write the new rows into the buffer.
 * The two run alternately on the same synthetic past (seeded random KV, so no prefill of the past is
 * needed); their last-row logits must agree. Reports the median of --repeats timed calls per cell.
 *
 *   node --import tsx bench/probes/prefill-past.ts [--threads 2] [--block 256] [--growth double|block] [--repeats 5]
 *
 * The model is a builder llama sized like models/warmkv-brown (6 layers, hidden 256, 8 heads / 2 KV
 * heads, head_dim 32, vocab 4096, float32 KV) with 8,192 positions, like the fairness benchmark's.
 */
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { median, table, writeResult } from '../common.ts';
import { openRewrittenPair, syntheticKv } from './rewritten-pair.ts';

const { values } = parseArgs({
  options: { threads: { type: 'string', default: '2' }, block: { type: 'string', default: '256' }, growth: { type: 'string', default: 'block' }, repeats: { type: 'string', default: '5' } },
});
if (values.growth !== 'double' && values.growth !== 'block') throw new Error('--growth is double or block');
const growth = values.growth;
const threads = Number(values.threads);
const block = Number(values.block);
const repeats = Number(values.repeats);
const PASTS = [0, 1024, 2048, 4096];
const CHUNKS = [16, 64, 256];
const WARMUP = 1;

const { modelOptions, io, vocab, exported: concatSession, rewritten: inPlaceSession, leanFetches, newRows } = await openRewrittenPair(8192, threads);
const { names, kv } = io;

/** The engine's rule (src/engine/inplace-kv.ts): whole blocks; or one block doubled until `slots` fit. */
const capacityFor = (slots: number) => {
  if (growth === 'block') return Math.max(1, Math.ceil(slots / block)) * block;
  let capacity = block;
  while (capacity < slots) capacity *= 2;
  return capacity;
};

interface Cell {
  past: number;
  chunk: number;
  capacity: number;
  concatMs: number;
  inPlaceMs: number;
  concatBytesOut: number;
  inPlaceBytesOut: number;
  maxLogitDiff: number;
}

async function measure(past: number, chunk: number): Promise<Cell> {
  const { numKvHeads: heads, headDim: hd, numLayers } = kv;
  const capacity = capacityFor(past + chunk);
  // (a) the past as its own tensors, // [1, heads, past, hd]; (b) the buffer, // [1, heads, capacity, hd], the same first `past` slots.
  const concatPast: Record<string, ort.Tensor> = {};
  const buffers = new Map<string, Float32Array>();
  for (let layer = 0; layer < numLayers; layer++) {
    for (const [k, name] of [names.pastKeys[layer], names.pastValues[layer]].entries()) {
      const data = syntheticKv(heads * past * hd, 1 + layer * 2 + k);
      concatPast[name] = new ort.Tensor('float32', data, [1, heads, past, hd]);
      const buffer = new Float32Array(heads * capacity * hd);
      for (let h = 0; h < heads; h++) buffer.set(data.subarray(h * past * hd, (h + 1) * past * hd), h * capacity * hd);
      buffers.set(name, buffer);
    }
  }
  const inputIds = new ort.Tensor('int64', BigInt64Array.from({ length: chunk }, (_, i) => BigInt((i * 37 + 11) % vocab)), [1, chunk]);
  const positionIds = new ort.Tensor('int64', BigInt64Array.from({ length: chunk }, (_, i) => BigInt(past + i)), [1, chunk]);
  const concatFeeds: Record<string, ort.Tensor> = {
    ...concatPast,
    [names.inputIds]: inputIds,
    [names.attentionMask]: new ort.Tensor('int64', new BigInt64Array(past + chunk).fill(1n), [1, past + chunk]),
  };
  // [1, capacity + chunk]: the valid past, masked unused capacity, then the chunk.
  const mask = new BigInt64Array(capacity + chunk);
  mask.fill(1n, 0, past);
  mask.fill(1n, capacity);
  const inPlaceFeeds: Record<string, ort.Tensor> = { [names.inputIds]: inputIds, [names.attentionMask]: new ort.Tensor('int64', mask, [1, capacity + chunk]) };
  for (const [name, buffer] of buffers) inPlaceFeeds[name] = new ort.Tensor('float32', buffer, [1, heads, capacity, hd]);
  if (names.positionIds) {
    concatFeeds[names.positionIds] = positionIds;
    inPlaceFeeds[names.positionIds] = positionIds;
  }

  const concatTimes: number[] = [];
  const inPlaceTimes: number[] = [];
  let maxLogitDiff = 0;
  let concatBytesOut = 0;
  let inPlaceBytesOut = 0;
  for (let run = 0; run < WARMUP + repeats; run++) {
    let t0 = performance.now();
    const outA = await concatSession.run(concatFeeds);
    const timeA = performance.now() - t0;

    t0 = performance.now();
    const outB = await inPlaceSession.run(inPlaceFeeds, leanFetches);
    // The engine writes the chunk's rows after the valid slots; the next repeat reuses the same past (the mask does not cover them).
    for (let layer = 0; layer < numLayers; layer++) {
      for (const [pastName, rowsName] of [
        [names.pastKeys[layer], newRows.keys[layer]],
        [names.pastValues[layer], newRows.values[layer]],
      ] as const) {
        const buffer = buffers.get(pastName)!;
        const rows = outB[rowsName].data as Float32Array; // [1, heads, chunk, hd]
        for (let h = 0; h < heads; h++) buffer.set(rows.subarray(h * chunk * hd, (h + 1) * chunk * hd), (h * capacity + past) * hd);
      }
    }
    const timeB = performance.now() - t0;

    const logitsA = outA[names.logits].data as Float32Array;
    const logitsB = outB[names.logits].data as Float32Array;
    for (let i = (chunk - 1) * vocab; i < chunk * vocab; i++) maxLogitDiff = Math.max(maxLogitDiff, Math.abs(logitsA[i] - logitsB[i]));
    concatBytesOut = Object.values(outA).reduce((sum, t) => sum + (t.data as Float32Array).byteLength, 0);
    inPlaceBytesOut = Object.values(outB).reduce((sum, t) => sum + (t.data as Float32Array).byteLength, 0);
    if (run >= WARMUP) {
      concatTimes.push(timeA);
      inPlaceTimes.push(timeB);
    }
  }
  return { past, chunk, capacity, concatMs: median(concatTimes), inPlaceMs: median(inPlaceTimes), concatBytesOut, inPlaceBytesOut, maxLogitDiff };
}

const cells: Cell[] = [];
for (const past of PASTS) {
  for (const chunk of CHUNKS) {
    const cell = await measure(past, chunk);
    cells.push(cell);
    console.error(`past ${past}, chunk ${chunk} (capacity ${cell.capacity}): concat ${cell.concatMs.toFixed(2)} ms, in place ${cell.inPlaceMs.toFixed(2)} ms, max logit diff ${cell.maxLogitDiff.toExponential(1)}`);
  }
}
await concatSession.release();
await inPlaceSession.release();

const mib = (b: number) => (b / 2 ** 20).toFixed(b < 2 ** 20 ? 3 : 1);
const markdown = table(
  ['past', 'chunk', 'capacity (b)', '(a) concat ms', '(b) in place ms', '(a)/(b)', 'MiB out (a)', 'MiB out (b)', 'max logit diff'],
  cells.map((c) => [c.past, c.chunk, c.capacity, c.concatMs.toFixed(2), c.inPlaceMs.toFixed(2), (c.concatMs / c.inPlaceMs).toFixed(2), mib(c.concatBytesOut), mib(c.inPlaceBytesOut), c.maxLogitDiff.toExponential(1)]),
);
console.log(`\n${markdown}`);
const file = writeResult(`prefill-past-probe${growth === 'double' ? '-double' : ''}`, {
  command: `node --import tsx bench/probes/prefill-past.ts --threads ${threads} --block ${block} --growth ${growth} --repeats ${repeats}`,
  growth,
  model: { builder: modelOptions, kvDtype: kv.dtype },
  threads,
  block,
  repeats,
  cells,
  markdown,
});
console.log(`\nwrote ${file}`);
if (cells.some((c) => c.maxLogitDiff > 1e-3)) process.exitCode = 1;

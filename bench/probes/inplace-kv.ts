/**
 * In-place KV, measured first (issue 25): decode-step time in a bare onnxruntime loop at 1, 8 and 32 rows
 * and 128 / 512 / 2048 tokens of context, for
 *   (a) the Optimum graph as exported: feed the whole past, fetch logits + every present.*, feed present
 *       back as the next past (today's design, without warmkv's own gather/repack on top);
 *   (b) the graph rewritten by src/model/kv-rewrite.ts: fetch only logits + new_rows.*, keep the past in
 *       pre-allocated per-batch buffers `[rows, kv_heads, capacity, head_dim]` (capacity rounded up to
 *       --block), write the new rows in place, and mask the unused capacity out.
 * The two run step by step in the same loop (the CPU is shared: both see the same load), from the same
 * synthetic past (seeded random KV, so no prefill is needed), and their greedy tokens must agree.
 *
 *   node --import tsx bench/probes/inplace-kv.ts [--threads 2] [--block 256] [--steps 12]
 *
 * The model is a builder llama sized like models/warmkv-brown (6 layers, hidden 256, 8 heads / 2 KV
 * heads, head_dim 32, vocab 4096, float32 KV) with positions for 2048+ tokens (warmkv-brown has 512).
 */
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { argmax } from '../../src/engine/sampler.ts';
import { median, table, writeResult } from '../common.ts';
import { openRewrittenPair, syntheticKv } from './rewritten-pair.ts';

const { values } = parseArgs({
  options: { threads: { type: 'string', default: '2' }, block: { type: 'string', default: '256' }, steps: { type: 'string', default: '12' } },
});
const threads = Number(values.threads);
const block = Number(values.block);
const baseSteps = Number(values.steps);
const ROWS = [1, 8, 32];
const CONTEXTS = [128, 512, 2048];
const WARMUP = 2;
/** Fewer timed steps where one step moves hundreds of MB (32 rows x 2048): the CPU is shared. */
const stepsFor = (rows: number, context: number) => (rows * context >= 32 * 2048 ? Math.max(3, baseSteps >> 2) : rows * context >= 8 * 2048 ? Math.max(4, baseSteps >> 1) : baseSteps);

const { modelOptions, io, vocab, exported: optimum, rewritten: inplace, leanFetches, newRows } = await openRewrittenPair(4096, threads);
const { names, kv } = io;

function greedy(logits: Float32Array, rows: number): number[] {
  return Array.from({ length: rows }, (_, r) => argmax(logits.subarray(r * vocab, (r + 1) * vocab), vocab));
}

interface Cell {
  rows: number;
  context: number;
  capacity: number;
  timedSteps: number;
  optimumMs: number;
  inplaceMs: number;
  tokensEqual: boolean;
  stepsCompared: number;
  maxLogitDiff: number;
  optimumBytesOutPerStep: number;
  inplaceBytesOutPerStep: number;
}

async function measure(rows: number, context: number): Promise<Cell> {
  const { numKvHeads: heads, headDim: hd, numLayers } = kv;
  const steps = stepsFor(rows, context);
  const total = WARMUP + steps;
  const capacity = Math.ceil((context + total) / block) * block;
  // (a) past tensors, // [rows, heads, context, hd]; (b) buffers, // [rows, heads, capacity, hd], same values.
  let past: Record<string, ort.Tensor> = {};
  const buffers = new Map<string, Float32Array>();
  for (let layer = 0; layer < numLayers; layer++) {
    for (const [k, name] of [names.pastKeys[layer], names.pastValues[layer]].entries()) {
      const data = syntheticKv(rows * heads * context * hd, 1 + layer * 2 + k);
      past[name] = new ort.Tensor('float32', data, [rows, heads, context, hd]);
      const buffer = new Float32Array(rows * heads * capacity * hd);
      for (let bh = 0; bh < rows * heads; bh++) buffer.set(data.subarray(bh * context * hd, (bh + 1) * context * hd), bh * capacity * hd);
      buffers.set(name, buffer);
    }
  }
  // Mask over [capacity slots | the new token]: 1 on valid slots, 0 on unused capacity. // [rows, capacity + 1]
  const mask = new BigInt64Array(rows * (capacity + 1));
  for (let r = 0; r < rows; r++) {
    mask.fill(1n, r * (capacity + 1), r * (capacity + 1) + context);
    mask[r * (capacity + 1) + capacity] = 1n;
  }
  const inplaceStatic: Record<string, ort.Tensor> = { [names.attentionMask]: new ort.Tensor('int64', mask, [rows, capacity + 1]) };
  for (const [name, buffer] of buffers) inplaceStatic[name] = new ort.Tensor('float32', buffer, [rows, heads, capacity, hd]);

  let tokensA = Array.from({ length: rows }, (_, r) => (r * 37 + 11) % vocab);
  let tokensB = [...tokensA];
  const timesA: number[] = [];
  const timesB: number[] = [];
  let tokensEqual = true;
  let maxLogitDiff = 0;
  let bytesOutA = 0;
  let bytesOutB = 0;
  for (let step = 0; step < total; step++) {
    const length = context + step;
    const ids = (tokens: number[]) => new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [rows, 1]);
    const positions = new ort.Tensor('int64', new BigInt64Array(rows).fill(BigInt(length)), [rows, 1]);

    const feedsA: Record<string, ort.Tensor> = {
      ...past,
      [names.inputIds]: ids(tokensA),
      [names.attentionMask]: new ort.Tensor('int64', new BigInt64Array(rows * (length + 1)).fill(1n), [rows, length + 1]),
    };
    if (names.positionIds) feedsA[names.positionIds] = positions;
    let t0 = performance.now();
    const outA = await optimum.run(feedsA);
    const nextPast: Record<string, ort.Tensor> = {};
    for (let layer = 0; layer < numLayers; layer++) {
      nextPast[names.pastKeys[layer]] = outA[names.presentKeys[layer]];
      nextPast[names.pastValues[layer]] = outA[names.presentValues[layer]];
    }
    const logitsA = outA[names.logits].data as Float32Array;
    const nextA = greedy(logitsA, rows);
    const timeA = performance.now() - t0;
    past = nextPast;

    const feedsB: Record<string, ort.Tensor> = { ...inplaceStatic, [names.inputIds]: ids(tokensB) };
    if (names.positionIds) feedsB[names.positionIds] = positions;
    t0 = performance.now();
    const outB = await inplace.run(feedsB, leanFetches);
    for (let layer = 0; layer < numLayers; layer++) {
      for (const [pastName, rowsName] of [
        [names.pastKeys[layer], newRows.keys[layer]],
        [names.pastValues[layer], newRows.values[layer]],
      ] as const) {
        const buffer = buffers.get(pastName)!;
        const newRows = outB[rowsName].data as Float32Array; // [rows, heads, 1, hd]
        for (let bh = 0; bh < rows * heads; bh++) buffer.set(newRows.subarray(bh * hd, (bh + 1) * hd), (bh * capacity + length) * hd);
      }
    }
    for (let r = 0; r < rows; r++) mask[r * (capacity + 1) + length] = 1n;
    const logitsB = outB[names.logits].data as Float32Array;
    const nextB = greedy(logitsB, rows);
    const timeB = performance.now() - t0;

    for (let i = 0; i < logitsA.length; i++) maxLogitDiff = Math.max(maxLogitDiff, Math.abs(logitsA[i] - logitsB[i]));
    if (nextA.some((t, r) => t !== nextB[r])) tokensEqual = false;
    if (step >= WARMUP) {
      timesA.push(timeA);
      timesB.push(timeB);
    }
    bytesOutA = Object.values(outA).reduce((sum, t) => sum + (t.data as Float32Array).byteLength, 0);
    bytesOutB = Object.values(outB).reduce((sum, t) => sum + (t.data as Float32Array).byteLength, 0);
    tokensA = nextA;
    tokensB = nextB;
  }
  return {
    rows,
    context,
    capacity,
    timedSteps: steps,
    optimumMs: median(timesA),
    inplaceMs: median(timesB),
    tokensEqual,
    stepsCompared: total,
    maxLogitDiff,
    optimumBytesOutPerStep: bytesOutA,
    inplaceBytesOutPerStep: bytesOutB,
  };
}

const cells: Cell[] = [];
for (const context of CONTEXTS) {
  for (const rows of ROWS) {
    const cell = await measure(rows, context);
    cells.push(cell);
    console.log(
      `rows ${rows}, context ${context} (capacity ${cell.capacity}): optimum ${cell.optimumMs.toFixed(2)} ms, in-place ${cell.inplaceMs.toFixed(2)} ms, ` +
        `tokens equal ${cell.tokensEqual} over ${cell.stepsCompared} steps, max logit diff ${cell.maxLogitDiff.toExponential(1)}`,
    );
  }
}
await optimum.release();
await inplace.release();

const at = (rows: number, context: number) => cells.find((c) => c.rows === rows && c.context === context)!;
const ratios = CONTEXTS.map((context) => ({
  context,
  optimum8over1: at(8, context).optimumMs / at(1, context).optimumMs,
  inplace8over1: at(8, context).inplaceMs / at(1, context).inplaceMs,
  optimum32over1: at(32, context).optimumMs / at(1, context).optimumMs,
  inplace32over1: at(32, context).inplaceMs / at(1, context).inplaceMs,
}));
const mib = (b: number) => (b / 2 ** 20).toFixed(b < 2 ** 20 ? 3 : 1);
console.log(
  '\n' +
    table(
      ['rows', 'context', 'capacity', '(a) Optimum ms/step', '(b) in-place ms/step', '(a)/(b)', 'MiB out (a)', 'MiB out (b)', 'tokens equal', 'timed steps'],
      cells.map((c) => [
        c.rows,
        c.context,
        c.capacity,
        c.optimumMs.toFixed(2),
        c.inplaceMs.toFixed(2),
        (c.optimumMs / c.inplaceMs).toFixed(2),
        mib(c.optimumBytesOutPerStep),
        mib(c.inplaceBytesOutPerStep),
        c.tokensEqual ? `yes (${c.stepsCompared})` : 'NO',
        c.timedSteps,
      ]),
    ),
);
console.log(
  '\n' +
    table(
      ['context', '(a) 8 rows / 1 row', '(b) 8 rows / 1 row', '(a) 32 / 1', '(b) 32 / 1'],
      ratios.map((r) => [r.context, r.optimum8over1.toFixed(2), r.inplace8over1.toFixed(2), r.optimum32over1.toFixed(2), r.inplace32over1.toFixed(2)]),
    ),
);
const file = writeResult('inplace-kv-probe', {
  command: `node --import tsx bench/probes/inplace-kv.ts --threads ${threads} --block ${block} --steps ${baseSteps}`,
  model: { builder: modelOptions, kvDtype: kv.dtype },
  threads,
  block,
  warmupSteps: WARMUP,
  cells,
  ratios,
});
console.log(`\nwrote ${file}`);
if (cells.some((c) => !c.tokensEqual)) process.exitCode = 1;

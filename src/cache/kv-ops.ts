/** Tensor math on KV caches: copies between batch layouts, prefix slices, rotary shifts. No bookkeeping. */
import { floatToHalf, halfToFloat } from '../lib/float16.ts';
import { allocateKvData, kvElementCount, type KvData, type KvLayout, type KvTensors } from '../model/types.ts';

/** Slot ranges `[start, end)` of one row of a batch tensor, concatenated in order. */
export interface RowSource {
  kv: KvTensors;
  row: number;
  segments: ReadonlyArray<readonly [number, number]>;
}

export function sourceLength(source: RowSource): number {
  let length = 0;
  for (const [start, end] of source.segments) length += end - start;
  return length;
}

/**
 * Builds a new batch tensor whose row r holds `sources[r]` right-aligned (left padding of zeros), the
 * layout batched decoding feeds with an attention mask of zeros over the padding.
 * Returns the padding of every row. `// [sources.length, numKvHeads, targetLength, headDim]`
 */
export function gatherRows(layout: KvLayout, sources: readonly RowSource[], targetLength?: number): { kv: KvTensors; padding: number[] } {
  const lengths = sources.map(sourceLength);
  const length = targetLength ?? Math.max(0, ...lengths);
  const batchSize = sources.length;
  const { numKvHeads: heads, headDim } = layout;
  const padding = lengths.map((l) => {
    if (l > length) throw new Error(`row of ${l} tokens does not fit a batch of length ${length}`);
    return length - l;
  });
  const out: KvTensors = { batchSize, length, layers: [] };
  for (let layer = 0; layer < layout.numLayers; layer++) {
    const key = allocateKvData(layout.dtype, kvElementCount(layout, batchSize, length));
    const value = allocateKvData(layout.dtype, kvElementCount(layout, batchSize, length));
    for (let r = 0; r < batchSize; r++) {
      const source = sources[r];
      const sourceLayer = source.kv.layers[layer];
      const sourceLength = source.kv.length;
      for (let h = 0; h < heads; h++) {
        let target = ((r * heads + h) * length + padding[r]) * headDim;
        const headBase = (source.row * heads + h) * sourceLength;
        for (const [start, end] of source.segments) {
          const from = (headBase + start) * headDim;
          const to = (headBase + end) * headDim;
          copyRange(key, target, sourceLayer.key, from, to);
          copyRange(value, target, sourceLayer.value, from, to);
          target += to - from;
        }
      }
    }
    out.layers.push({ key, value });
  }
  return { kv: out, padding };
}

function copyRange(target: KvData, offset: number, source: KvData, from: number, to: number): void {
  (target as Float32Array).set((source as Float32Array).subarray(from, to), offset);
}

/** The first `length` slots of a single-row cache (a copy). */
export function prefixOf(layout: KvLayout, kv: KvTensors, length: number): KvTensors {
  if (length === kv.length) return kv;
  return gatherRows(layout, [{ kv, row: 0, segments: [[0, length]] }]).kv;
}

/** One row of a left-padded batch, without its padding. `// [1, numKvHeads, length - padding, headDim]` */
export function extractRow(layout: KvLayout, batch: KvTensors, row: number, padding: number): KvTensors {
  if (batch.batchSize === 1 && padding === 0) return batch;
  return gatherRows(layout, [{ kv: batch, row, segments: [[padding, batch.length]] }]).kv;
}

/** float32 inverse frequencies exactly as Hugging Face computes them: 1 / theta^(2i / dim). */
export function rotaryInverseFrequencies(theta: number, rotaryDim: number): Float32Array {
  const half = rotaryDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.fround(theta ** Math.fround((2 * i) / rotaryDim));
  return inv;
}

/**
 * Moves cached keys from position p to p + delta in place. RoPE rotates each pair (x_i, x_{i+d/2}) by
 * angle p * inv_freq_i (rotate-half layout); rotations compose, so a rotation by delta * inv_freq_i
 * yields the key that a fresh computation at the new position would give. Values carry no position.
 * Applies to slots `[start, end)` of every head of one row. `key: [batch, numKvHeads, length, headDim]`
 */
export function shiftRotaryKeys(
  layout: KvLayout,
  key: KvData,
  batchLength: number,
  row: number,
  start: number,
  end: number,
  delta: number,
  inverseFrequencies: Float32Array,
): void {
  const { numKvHeads: heads, headDim } = layout;
  const half = inverseFrequencies.length;
  const cos = new Float64Array(half);
  const sin = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    const angle = delta * inverseFrequencies[i];
    cos[i] = Math.cos(angle);
    sin[i] = Math.sin(angle);
  }
  const isHalf = layout.dtype === 'float16';
  for (let h = 0; h < heads; h++) {
    for (let slot = start; slot < end; slot++) {
      const base = ((row * heads + h) * batchLength + slot) * headDim;
      for (let i = 0; i < half; i++) {
        const a = base + i;
        const b = base + i + half;
        const x1 = isHalf ? halfToFloat(key[a]) : key[a];
        const x2 = isHalf ? halfToFloat(key[b]) : key[b];
        const y1 = x1 * cos[i] - x2 * sin[i];
        const y2 = x2 * cos[i] + x1 * sin[i];
        key[a] = isHalf ? floatToHalf(y1) : y1;
        key[b] = isHalf ? floatToHalf(y2) : y2;
      }
    }
  }
}

/**
 * The sliding window's shift: removes slots `[sinks, sinks + drop)` of a single-row cache and rotates
 * the keys that move back by `drop` positions, so the kept tokens sit at contiguous positions again.
 */
export function dropAndShift(layout: KvLayout, kv: KvTensors, sinks: number, drop: number, inverseFrequencies: Float32Array): KvTensors {
  const kept = gatherRows(layout, [{ kv, row: 0, segments: [[0, sinks], [sinks + drop, kv.length]] }]).kv;
  for (const layer of kept.layers) shiftRotaryKeys(layout, layer.key, kept.length, 0, sinks, kept.length, -drop, inverseFrequencies);
  return kept;
}

/** Plain-array fixtures for the in-place KV buffer tests (tests/engine/inplace-kv, inplace-prefill). */
import type { InPlaceKv } from '../../src/engine/inplace-kv.ts';
import type { KvLayout, KvTensors } from '../../src/model/index.ts';

/** One layer, two heads of size 1: a row's cache is its slots' values per head. */
export const LAYOUT: KvLayout = { numLayers: 1, numKvHeads: 2, headDim: 1, dtype: 'float32', bytesPerToken: 16 };

/** A sequence's own KV: head 0 holds `values`, head 1 their negatives; values are 10x the keys. */
export function ownKv(values: number[]): KvTensors {
  const key = Float32Array.from([...values, ...values.map((v) => -v)]);
  return { batchSize: 1, length: values.length, layers: [{ key, value: key.map((v) => 10 * v) }] };
}

/** Row `row`, head `head` of the buffer's keys over the whole capacity. */
export function slots(kv: InPlaceKv, row: number, head: number): number[] {
  const start = (row * 2 + head) * kv.capacity;
  return Array.from(kv.layers[0].key.subarray(start, start + kv.capacity));
}

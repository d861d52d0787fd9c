import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DecodeBatch, type BatchCounters, type BatchMember } from '../../src/engine/batch.ts';
import type { KvLayout, KvTensors } from '../../src/model/types.ts';

/** One layer, one head, head size 1: a row's cache is its tokens' values, slot by slot. */
const LAYOUT: KvLayout = { numLayers: 1, numKvHeads: 1, headDim: 1, dtype: 'float32', bytesPerToken: 8 };

function ownKv(values: number[]): KvTensors {
  return { batchSize: 1, length: values.length, layers: [{ key: Float32Array.from(values), value: Float32Array.from(values, (v) => -v) }] };
}

class Member implements BatchMember {
  batchRow = -1;
  kv: KvTensors | null;
  constructor(values: number[]) {
    this.kv = ownKv(values);
  }
}

const counters = (): BatchCounters => ({ repacks: 0, inPlaceJoins: 0, repackMs: 0 });
/** Row r of the batch's keys: `[length]` values, left padding included. */
const rowKeys = (batch: DecodeBatch<Member>, row: number) => {
  const kv = batch.current!.kv;
  return Array.from((kv.layers[0].key as Float32Array).subarray(row * kv.length, (row + 1) * kv.length));
};

describe('decode batch on plain arrays', () => {
  test('a lone newcomer is used as it is; a second one forces a re-pack with left padding', () => {
    const count = counters();
    const batch = new DecodeBatch<Member>(LAYOUT, count);
    const a = new Member([1, 2, 3]);
    batch.sync([a]);
    assert.equal(a.batchRow, 0);
    assert.equal(a.kv, null);
    assert.equal(count.repacks, 0, 'no copy for a single row');
    const b = new Member([7]);
    batch.sync([a, b]);
    assert.equal(count.repacks, 1);
    assert.deepEqual(batch.current!.padding, [0, 2]);
    assert.deepEqual(rowKeys(batch, 0), [1, 2, 3]);
    assert.deepEqual(rowKeys(batch, 1).slice(2), [7]);
    assert.equal(batch.live, 2);
  });

  test('leave copies the row out without its padding and frees the row; a short newcomer joins it in place', () => {
    const count = counters();
    const batch = new DecodeBatch<Member>(LAYOUT, count);
    const rows = [new Member([1, 2, 3, 4]), new Member([5, 6, 7, 8]), new Member([9, 10, 11, 12])];
    batch.sync(rows);
    batch.leave(rows[1]);
    assert.equal(rows[1].batchRow, -1);
    assert.deepEqual(Array.from(rows[1].kv!.layers[0].key), [5, 6, 7, 8]);
    assert.deepEqual(Array.from(rows[1].kv!.layers[0].value), [-5, -6, -7, -8]);
    assert.equal(batch.live, 2);
    assert.equal(batch.current!.rows[1], null);
    const joiner = new Member([20, 21, 22]);
    const before = count.repacks;
    batch.sync([rows[0], rows[2], joiner]);
    assert.equal(count.repacks, before, 'no re-pack: the free row is reused');
    assert.equal(count.inPlaceJoins, 1);
    assert.equal(joiner.batchRow, 1);
    assert.equal(batch.current!.padding[1], 1);
    assert.deepEqual(rowKeys(batch, 1).slice(1), [20, 21, 22]);
  });

  test('waste accounting: many free rows make a newcomer trigger a re-pack into a tight batch', () => {
    const count = counters();
    const batch = new DecodeBatch<Member>(LAYOUT, count);
    const rows = [1, 2, 3, 4].map((v) => new Member([v, v, v, v]));
    batch.sync(rows);
    const repacksBefore = count.repacks;
    for (const gone of rows.slice(1)) batch.leave(gone);
    const joiner = new Member([9]);
    // 4 rows of 5 slots now, 2 rows of 5 after a re-pack: 50% waste, above the 20% threshold.
    batch.sync([rows[0], joiner]);
    assert.equal(count.repacks, repacksBefore + 1);
    assert.equal(batch.current!.rows.length, 2);
    assert.equal(count.inPlaceJoins, 0);
  });

  test('the last row leaving drops the batch', () => {
    const batch = new DecodeBatch<Member>(LAYOUT, counters());
    const only = new Member([1, 2]);
    batch.sync([only]);
    batch.leave(only);
    assert.equal(batch.current, null);
    assert.deepEqual(Array.from(only.kv!.layers[0].key), [1, 2]);
  });
});

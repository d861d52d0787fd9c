import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { BatchCounters, BatchMember } from '../../src/engine/batch.ts';
import { InPlaceBatch } from '../../src/engine/inplace-batch.ts';
import type { KvLayout, KvTensors } from '../../src/model/types.ts';

/** One layer, one head of size 1: a member's cache is its slots' values. */
const LAYOUT: KvLayout = { numLayers: 1, numKvHeads: 1, headDim: 1, dtype: 'float32', bytesPerToken: 8 };

class Member implements BatchMember {
  batchRow = -1;
  kv: KvTensors | null;
  constructor(values: number[]) {
    this.kv = { batchSize: 1, length: values.length, layers: [{ key: Float32Array.from(values), value: Float32Array.from(values, (v) => -v) }] };
  }
}

const counters = (): BatchCounters => ({ repacks: 0, inPlaceJoins: 0, repackMs: 0 });
const keys = (m: Member) => Array.from(m.kv!.layers[0].key);

describe('in-place decode batch membership', () => {
  test('newcomers take free rows with one copy; leavers get their cache back; no change, no copy', () => {
    const count = counters();
    const batch = new InPlaceBatch<Member>(LAYOUT, 4, count);
    const members = [[1, 2], [3], [4, 5, 6], [7], [8]].map((v) => new Member(v));
    const first = batch.sync(members);
    assert.deepEqual(members.map((m) => m.batchRow), [0, 1, 2, 3, 4]);
    assert.ok(members.every((m) => m.kv === null));
    assert.equal(count.repacks, 1);
    assert.equal(batch.sync(members), first, 'the same members: the same buffers');
    batch.leave(members[2]);
    assert.deepEqual(keys(members[2]), [4, 5, 6]);
    assert.equal(members[2].batchRow, -1);
    assert.equal(batch.live, 4);
    const newcomer = new Member([9, 9]);
    const stay = [members[0], members[1], members[3], members[4], newcomer];
    assert.equal(batch.sync(stay), first);
    assert.equal(newcomer.batchRow, 2, 'the free row');
    assert.deepEqual([count.repacks, count.inPlaceJoins], [1, 1]);
    assert.deepEqual(first.kv.lengths, [2, 1, 2, 1, 1]);
    assert.throws(() => batch.sync([members[0]]), /not decoding/);
  });

  test('too many free rows, or no free row for a newcomer: the buffers are made anew with every cache intact', () => {
    const count = counters();
    const batch = new InPlaceBatch<Member>(LAYOUT, 4, count);
    const [a, b, c] = [[1, 2], [3], [4, 5, 6]].map((v) => new Member(v));
    batch.sync([a, b]);
    const d = new Member([7]);
    const grown = batch.sync([a, b, d]);
    assert.equal(count.repacks, 2);
    assert.equal(grown.rows.length, 3);
    batch.leave(b);
    assert.deepEqual(keys(b), [3]);
    const shrunk = batch.sync([a, d]);
    assert.equal(shrunk.rows.length, 2, '1 of 3 rows free is over the share: rebuilt without it');
    batch.leave(a);
    batch.leave(d);
    assert.equal(batch.current, null);
    assert.deepEqual([keys(a), keys(d)], [[1, 2], [7]]);
    assert.deepEqual(Array.from(d.kv!.layers[0].value), [-7]);
    batch.sync([c]);
    assert.equal(c.batchRow, 0);
  });
});

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { KvBudget } from '../../src/cache/budget.ts';

describe('KvBudget', () => {
  test('rejects non-positive capacities and block sizes', () => {
    assert.throws(() => new KvBudget(0, 16), /positive/);
    assert.throws(() => new KvBudget(-1, 16), /positive/);
    assert.throws(() => new KvBudget(Number.NaN, 16), /positive/);
    assert.throws(() => new KvBudget(1024, 0), /at least one token/);
    assert.throws(() => new KvBudget(1024, Number.NaN), /at least one token/);
  });

  test('block rounding: tokens are rounded up to whole blocks', () => {
    const budget = new KvBudget(1 << 20, 16);
    assert.equal(budget.blocksFor(0), 0);
    assert.equal(budget.blocksFor(1), 1);
    assert.equal(budget.blocksFor(16), 1);
    assert.equal(budget.blocksFor(17), 2);
    assert.equal(budget.blocksFor(32), 2);
    assert.equal(budget.blocksFor(33), 3);
    assert.equal(budget.bytesFor(0, 512), 0);
    assert.equal(budget.bytesFor(1, 512), 16 * 512);
    assert.equal(budget.bytesFor(16, 512), 16 * 512);
    assert.equal(budget.bytesFor(17, 512), 32 * 512);
    const single = new KvBudget(1000, 1);
    assert.equal(single.bytesFor(7, 3), 21);
  });

  test('resize up and down moves the reservation and the holder together', () => {
    const budget = new KvBudget(1000, 1);
    const a = { reservedBytes: 0 };
    const b = { reservedBytes: 0 };
    assert.equal(budget.resize(a, 300), true);
    assert.equal(a.reservedBytes, 300);
    assert.equal(budget.reservedBytes, 300);
    assert.equal(budget.freeBytes, 700);
    assert.equal(budget.resize(b, 700), true);
    assert.equal(budget.reservedBytes, 1000);
    assert.equal(budget.freeBytes, 0);
    assert.equal(budget.resize(a, 100), true, 'shrinking always succeeds');
    assert.equal(a.reservedBytes, 100);
    assert.equal(budget.reservedBytes, 800);
    assert.equal(budget.resize(a, 300), true, 'growing into exactly the free space');
    assert.equal(budget.reservedBytes, 1000);
    assert.equal(budget.resize(b, 0), true);
    assert.equal(budget.resize(a, 0), true);
    assert.equal(budget.reservedBytes, 0);
    assert.equal(budget.freeBytes, 1000);
  });

  test('resizing to the same size is a no-op, even when full', () => {
    const budget = new KvBudget(100, 1);
    const a = { reservedBytes: 0 };
    assert.equal(budget.resize(a, 100), true);
    assert.equal(budget.resize(a, 100), true);
    assert.equal(budget.reservedBytes, 100);
  });

  test('a refused resize returns false and changes nothing', () => {
    const budget = new KvBudget(1000, 1);
    const a = { reservedBytes: 0 };
    const b = { reservedBytes: 0 };
    budget.resize(a, 600);
    assert.equal(budget.resize(b, 401), false);
    assert.equal(b.reservedBytes, 0);
    assert.equal(budget.reservedBytes, 600);
    budget.resize(b, 200);
    assert.equal(budget.resize(b, 401), false, 'growing an existing holder past capacity');
    assert.equal(b.reservedBytes, 200);
    assert.equal(budget.reservedBytes, 800);
    assert.equal(budget.resize(a, 1001), false);
    assert.equal(a.reservedBytes, 600);
    assert.equal(budget.reservedBytes, 800);
  });

  test('reservedBytes never exceeds the capacity under a random sequence of resizes', () => {
    const capacity = 10_000;
    const budget = new KvBudget(capacity, 16);
    const holders = Array.from({ length: 8 }, () => ({ reservedBytes: 0 }));
    let state = 12345;
    let refused = 0;
    for (let i = 0; i < 5000; i++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      state >>>= 0;
      const holder = holders[state % holders.length];
      const bytes = budget.bytesFor((state >>> 8) % 1000, 4);
      const before = holders.map((h) => h.reservedBytes);
      const ok = budget.resize(holder, bytes);
      if (!ok) {
        refused++;
        assert.deepEqual(holders.map((h) => h.reservedBytes), before);
      } else assert.equal(holder.reservedBytes, bytes);
      const sum = holders.reduce((s, h) => s + h.reservedBytes, 0);
      assert.equal(budget.reservedBytes, sum, 'the budget equals the sum of its holders');
      assert.ok(budget.reservedBytes <= capacity, 'budget.reservedBytes <= capacity');
      assert.equal(budget.freeBytes, capacity - sum);
    }
    assert.ok(refused > 100, 'the sequence exercised refusals');
  });
});

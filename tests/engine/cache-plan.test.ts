import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { NO_WINDOW } from '../../src/cache/session.ts';
import type { WindowPolicy } from '../../src/cache/window.ts';
import { commonPrefixLength, planCache } from '../../src/engine/cache-plan.ts';

const SHIFT: WindowPolicy = { capacity: 16, sinkTokens: 2, dropTokens: 4, strategy: 'shift' };
const RECOMPUTE: WindowPolicy = { ...SHIFT, strategy: 'recompute' };

describe('cache-plan: prefix planning on plain token arrays', () => {
  test('commonPrefixLength stops at the first difference and at the limit', () => {
    assert.equal(commonPrefixLength([1, 2, 3, 4], [1, 2, 9], 10), 2);
    assert.equal(commonPrefixLength([1, 2, 3], [1, 2, 3], 2), 2);
    assert.equal(commonPrefixLength([], [1], 5), 0);
  });

  test('a session with no KV keeps nothing and prefills the whole input', () => {
    const plan = planCache({ tokens: [1, 2, 3], window: NO_WINDOW, cachedLength: 0 }, [1, 2, 3, 4], SHIFT);
    assert.deepEqual(plan, { keep: 0, window: NO_WINDOW, pending: [1, 2, 3, 4], pendingIndex: 0, cachedTokens: 0 });
  });

  test('the matching prefix is kept, but one token is always fed to get logits', () => {
    const extended = planCache({ tokens: [1, 2, 3], window: NO_WINDOW, cachedLength: 3 }, [1, 2, 3, 4, 5], SHIFT);
    assert.equal(extended.keep, 3);
    assert.equal(extended.pendingIndex, 3);
    assert.equal(extended.cachedTokens, 3);
    const same = planCache({ tokens: [1, 2, 3], window: NO_WINDOW, cachedLength: 3 }, [1, 2, 3], SHIFT);
    assert.equal(same.keep, 2, 'the last token is fed again');
    const diverged = planCache({ tokens: [1, 2, 3], window: NO_WINDOW, cachedLength: 3 }, [1, 9, 3, 4], SHIFT);
    assert.equal(diverged.keep, 1);
  });

  test('after a drop, a request that diverges before the latest drop rebuilds from the start', () => {
    const window = { droppedTokens: 4, lastDropAt: 10, dropEvents: 1 };
    const tokens = Array.from({ length: 14 }, (_, i) => i + 1);
    const past = planCache({ tokens, window, cachedLength: 10 }, [...tokens.slice(0, 8), 99], SHIFT);
    assert.equal(past.keep, 0);
    assert.deepEqual(past.window, NO_WINDOW);
    const along = planCache({ tokens, window, cachedLength: 10 }, [...tokens, 15], SHIFT);
    assert.equal(along.keep, 10);
    assert.equal(along.pendingIndex, 14, 'pending indexes the full input: dropped tokens are skipped');
  });

  test('recompute: an evicted session after a drop prefills the sinks and the kept tail, keeping its window', () => {
    const window = { droppedTokens: 4, lastDropAt: 10, dropEvents: 1 };
    const tokens = Array.from({ length: 12 }, (_, i) => i + 1);
    const full = [...tokens, 13];
    const plan = planCache({ tokens, window, cachedLength: 0 }, full, RECOMPUTE);
    assert.equal(plan.keep, 0);
    assert.deepEqual(plan.pending, [1, 2, ...full.slice(6)]);
    assert.deepEqual(plan.window, window);
    const shifted = planCache({ tokens, window, cachedLength: 0 }, full, SHIFT);
    assert.deepEqual(shifted.pending, full, 'shift cannot rebuild a drop: the whole input');
  });
});

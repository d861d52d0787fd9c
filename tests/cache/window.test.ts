import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { droppedSlots, resolveWindowPolicy, reusableSlots, WindowConfigError } from '../../src/cache/window.ts';
import type { PositionEncoding } from '../../src/model/types.ts';

const ROTARY: PositionEncoding = { kind: 'rotary', theta: 10000, rotaryDim: 64, style: 'rotate_half' };
const LEARNED: PositionEncoding = { kind: 'learned', maxPositions: 1024 };
const UNKNOWN: PositionEncoding = { kind: 'rotary-unknown', reason: 'rope_scaling is set; shifting keys would need its frequency schedule' };

function windowError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof WindowConfigError, `expected WindowConfigError, got ${String(error)}`);
    assert.equal(error.name, 'WindowConfigError');
    assert.match(error.message, pattern);
    return true;
  });
}

describe('resolveWindowPolicy', () => {
  test('dropTokens defaults to a quarter of the capacity (at least 1)', () => {
    assert.equal(resolveWindowPolicy(1024, { sinkTokens: 4, strategy: 'auto' }, ROTARY).dropTokens, 256);
    assert.equal(resolveWindowPolicy(1023, { sinkTokens: 4, strategy: 'auto' }, ROTARY).dropTokens, 255);
    assert.equal(resolveWindowPolicy(8, { sinkTokens: 4, strategy: 'auto' }, ROTARY).dropTokens, 2);
    assert.equal(resolveWindowPolicy(3, { sinkTokens: 0, strategy: 'auto' }, ROTARY).dropTokens, 1);
    assert.equal(resolveWindowPolicy(1024, { sinkTokens: 4, dropTokens: 100, strategy: 'auto' }, ROTARY).dropTokens, 100);
  });

  test('the whole policy is returned as given', () => {
    assert.deepEqual(resolveWindowPolicy(2048, { sinkTokens: 8, dropTokens: 64, strategy: 'recompute' }, ROTARY), {
      capacity: 2048,
      sinkTokens: 8,
      dropTokens: 64,
      strategy: 'recompute',
    });
  });

  test('auto picks shift for known rotary layouts and recompute otherwise', () => {
    assert.equal(resolveWindowPolicy(64, { sinkTokens: 4, strategy: 'auto' }, ROTARY).strategy, 'shift');
    assert.equal(resolveWindowPolicy(64, { sinkTokens: 4, strategy: 'auto' }, LEARNED).strategy, 'recompute');
    assert.equal(resolveWindowPolicy(64, { sinkTokens: 4, strategy: 'auto' }, UNKNOWN).strategy, 'recompute');
  });

  test('explicit strategies: recompute works for every model, shift only for known rotary layouts', () => {
    for (const positions of [ROTARY, LEARNED, UNKNOWN]) {
      assert.equal(resolveWindowPolicy(64, { sinkTokens: 4, strategy: 'recompute' }, positions).strategy, 'recompute');
    }
    assert.equal(resolveWindowPolicy(64, { sinkTokens: 4, strategy: 'shift' }, ROTARY).strategy, 'shift');
    windowError(() => resolveWindowPolicy(64, { sinkTokens: 4, strategy: 'shift' }, LEARNED), /WINDOW_STRATEGY=shift needs a model with a known rotary layout, but it has learned absolute positions; use recompute/);
    windowError(() => resolveWindowPolicy(64, { sinkTokens: 4, strategy: 'shift' }, UNKNOWN), /but rope_scaling is set.*use recompute/);
  });

  test('sinks plus drop must stay below the capacity; drop at least 1; sinks not negative', () => {
    windowError(() => resolveWindowPolicy(64, { sinkTokens: 4, dropTokens: 60, strategy: 'auto' }, ROTARY), /window of 64 tokens cannot keep 4 sink tokens and drop 60 at a time/);
    windowError(() => resolveWindowPolicy(64, { sinkTokens: 64, strategy: 'auto' }, ROTARY), /cannot keep 64 sink tokens/);
    windowError(() => resolveWindowPolicy(64, { sinkTokens: 4, dropTokens: 0, strategy: 'auto' }, ROTARY), /drop 0/);
    windowError(() => resolveWindowPolicy(64, { sinkTokens: -1, strategy: 'auto' }, ROTARY), /-1 sink tokens/);
    // Defaults that do not fit: 8 tokens, 6 sinks, drop 2.
    windowError(() => resolveWindowPolicy(8, { sinkTokens: 6, strategy: 'auto' }, ROTARY), /need sinks \+ drop < context/);
    // The largest valid combination.
    assert.equal(resolveWindowPolicy(64, { sinkTokens: 4, dropTokens: 59, strategy: 'auto' }, ROTARY).dropTokens, 59);
  });

  test('droppedSlots: the slots right after the sinks', () => {
    assert.deepEqual(droppedSlots({ capacity: 64, sinkTokens: 4, dropTokens: 16, strategy: 'shift' }), [4, 20]);
    assert.deepEqual(droppedSlots({ capacity: 64, sinkTokens: 0, dropTokens: 1, strategy: 'shift' }), [0, 1]);
  });
});

describe('reusableSlots', () => {
  const none = { droppedTokens: 0, lastDropAt: 0 };

  test('without drops: the common prefix, at most what is cached', () => {
    assert.equal(reusableSlots(none, 10, 0), 0);
    assert.equal(reusableSlots(none, 10, 7), 7);
    assert.equal(reusableSlots(none, 10, 10), 10);
    assert.equal(reusableSlots(none, 10, 25), 10);
    assert.equal(reusableSlots(none, 0, 25), 0);
  });

  test('after drops: a sequence agreeing past the latest drop reuses the shifted cache', () => {
    // 4 sinks, 16 tokens dropped when token 60 was processed; cache holds 0..3 and 20..(20+cached-4).
    const window = { droppedTokens: 16, lastDropAt: 60 };
    assert.equal(reusableSlots(window, 50, 66), 50, 'the whole transcript matches: everything cached');
    assert.equal(reusableSlots(window, 50, 60), 44, 'agreeing up to the drop point keeps the slots before it');
    assert.equal(reusableSlots(window, 50, 62), 46);
    assert.equal(reusableSlots(window, 50, 100), 50);
  });

  test('after drops: diverging before the latest drop invalidates the whole cache', () => {
    const window = { droppedTokens: 16, lastDropAt: 60 };
    assert.equal(reusableSlots(window, 50, 59), 0);
    assert.equal(reusableSlots(window, 50, 10), 0, 'even inside the sinks');
    assert.equal(reusableSlots(window, 50, 0), 0);
  });

  test('several drops: only the latest drop point matters', () => {
    const window = { droppedTokens: 48, lastDropAt: 140 };
    assert.equal(reusableSlots(window, 96, 139), 0);
    assert.equal(reusableSlots(window, 96, 140), 92);
    assert.equal(reusableSlots(window, 96, 200), 96);
  });
});

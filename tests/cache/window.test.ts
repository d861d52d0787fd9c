import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { cachedTranscript, droppedSlots, needsDrop, planDrop, resolveWindowPolicy, reusableSlots, WindowConfigError, type WindowPolicy } from '../../src/cache/window.ts';
import { NO_WINDOW } from '../../src/cache/session.ts';
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

describe('the drop rule (engine and scorer share it)', () => {
  const policy: WindowPolicy = { capacity: 32, sinkTokens: 4, dropTokens: 8, strategy: 'recompute' };
  /** Transcript token i is the number 100 + i, so slices read as positions. */
  const transcript = Array.from({ length: 100 }, (_, i) => 100 + i);

  test('a cache drops only once it holds the whole capacity', () => {
    assert.equal(needsDrop(policy, 0), false);
    assert.equal(needsDrop(policy, 31), false);
    assert.equal(needsDrop(policy, 32), true);
    assert.equal(needsDrop(policy, 33), true, 'never grows past it');
  });

  test('one drop removes dropTokens slots after the sinks and records where it happened', () => {
    const drop = planDrop(policy, NO_WINDOW, 32);
    assert.deepEqual(drop.slots, [4, 12]);
    assert.equal(drop.keptLength, 24);
    assert.deepEqual(drop.window, { droppedTokens: 8, lastDropAt: 32, dropEvents: 1 });
  });

  test('successive drops accumulate: the next drop point is dropped + cached tokens', () => {
    let window = { ...NO_WINDOW };
    let length = 0;
    const points: number[] = [];
    // Feed 100 tokens one at a time, as decoding does.
    for (let token = 0; token < 100; token++) {
      if (needsDrop(policy, length)) {
        const drop = planDrop(policy, window, length);
        window = drop.window;
        length = drop.keptLength;
        points.push(window.lastDropAt);
      }
      length++;
      assert.equal(window.droppedTokens + length, token + 1, 'every processed token is either dropped or cached');
    }
    assert.deepEqual(points, [32, 40, 48, 56, 64, 72, 80, 88, 96]);
    assert.deepEqual(window, { droppedTokens: 72, lastDropAt: 96, dropEvents: 9 });
    assert.equal(length, 28);
  });

  test('cachedTranscript: the sinks, then the tokens after everything dropped', () => {
    assert.deepEqual(cachedTranscript(transcript, 4, NO_WINDOW, 5), [100, 101, 102, 103, 104]);
    const drop = planDrop(policy, NO_WINDOW, 32);
    const kept = cachedTranscript(transcript, 4, drop.window, drop.keptLength);
    assert.equal(kept.length, drop.keptLength);
    assert.deepEqual(kept.slice(0, 4), [100, 101, 102, 103]);
    assert.deepEqual(kept.slice(4), Array.from({ length: 20 }, (_, i) => 112 + i), 'slots 4..11 (tokens 104..111) are gone');
    const second = planDrop(policy, drop.window, 32);
    assert.deepEqual(cachedTranscript(transcript, 4, second.window, second.keptLength).slice(4, 6), [120, 121]);
  });
});

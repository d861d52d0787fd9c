import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { rotaryInverseFrequencies } from '../../src/cache/kv-ops.ts';
import { NO_WINDOW } from '../../src/cache/session.ts';
import type { WindowPolicy } from '../../src/cache/window.ts';
import { dropWindow, type DropMember } from '../../src/engine/window-drop.ts';
import type { KvLayout, KvTensors } from '../../src/model/types.ts';

/** One layer, one head, head size 2 (one rotary pair): a slot's value is [token, -token]. */
const LAYOUT: KvLayout = { numLayers: 1, numKvHeads: 1, headDim: 2, dtype: 'float32', bytesPerToken: 16 };

function ownKv(tokens: readonly number[]): KvTensors {
  const value = new Float32Array(tokens.length * 2);
  tokens.forEach((t, i) => value.set([t, -t], i * 2));
  return { batchSize: 1, length: tokens.length, layers: [{ key: value.slice(), value }] };
}

function member(transcript: number[], cacheLength: number, pending: number[] = []): DropMember {
  return {
    kv: ownKv(transcript.slice(0, cacheLength)),
    cacheLength,
    window: { ...NO_WINDOW },
    droppedDuringRequest: 0,
    pending,
    pendingIndex: 0,
    state: 'decode',
    session: { tokens: transcript },
  };
}

const transcript = Array.from({ length: 20 }, (_, i) => 100 + i);

describe('a running sequence drops its window', () => {
  test('recompute: the kept tokens go back to prefill ahead of what was pending, the KV is discarded', () => {
    const policy: WindowPolicy = { capacity: 12, sinkTokens: 2, dropTokens: 4, strategy: 'recompute' };
    const sequence = member(transcript.slice(0, 13), 12, [0, 112]);
    sequence.pendingIndex = 1; // token 0 was fed already; 112 (the last sampled) is next
    dropWindow(sequence, policy, LAYOUT, null);
    assert.equal(sequence.state, 'prefill');
    assert.equal(sequence.kv, null);
    assert.equal(sequence.cacheLength, 0);
    assert.deepEqual(sequence.pending, [100, 101, 106, 107, 108, 109, 110, 111, 112]);
    assert.equal(sequence.pendingIndex, 0);
    assert.deepEqual(sequence.window, { droppedTokens: 4, lastDropAt: 12, dropEvents: 1 });
    assert.equal(sequence.droppedDuringRequest, 4);
  });

  test('shift: the dropped slots leave the KV in place, the sequence keeps decoding', () => {
    const policy: WindowPolicy = { capacity: 12, sinkTokens: 2, dropTokens: 4, strategy: 'shift' };
    // After one earlier drop: the cache holds the sinks, then tokens 106..115.
    const sequence = member(transcript, 12, [116]);
    sequence.kv = ownKv([100, 101, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115]);
    sequence.window = { droppedTokens: 4, lastDropAt: 12, dropEvents: 1 };
    sequence.droppedDuringRequest = 4;
    dropWindow(sequence, policy, LAYOUT, rotaryInverseFrequencies(10000, 2));
    assert.equal(sequence.state, 'decode');
    assert.equal(sequence.cacheLength, 8);
    assert.equal(sequence.kv!.length, 8);
    const values = Array.from(sequence.kv!.layers[0].value as Float32Array).filter((_, i) => i % 2 === 0);
    assert.deepEqual(values, [100, 101, 110, 111, 112, 113, 114, 115], 'the slots after the sinks are gone; values only move');
    assert.deepEqual(sequence.pending, [116], 'nothing to prefill again');
    assert.deepEqual(sequence.window, { droppedTokens: 8, lastDropAt: 16, dropEvents: 2 });
    assert.equal(sequence.droppedDuringRequest, 8);
  });
});

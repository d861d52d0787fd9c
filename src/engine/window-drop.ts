/**
 * A running sequence's window drop. When a cache drops and by how many slots is cache/window.ts's rule
 * (shared with the scorer); this applies it to a sequence: `shift` removes the slots from its own KV and
 * rotates the kept keys back, `recompute` discards the KV and queues the kept tokens to be prefilled
 * again ahead of whatever was still pending. The caller takes the sequence out of the decode batch and
 * brings its KV to the host first.
 */
import { dropAndShift } from '../cache/kv-ops.ts';
import type { WindowState } from '../cache/session.ts';
import { cachedTranscript, planDrop, type WindowPolicy } from '../cache/window.ts';
import type { KvLayout, KvTensors } from '../model/types.ts';
import type { InPlaceKv } from './inplace-kv.ts';
import type { SequenceState } from './sequence.ts';

/** What a drop changes on a running sequence (a Sequence has all of it; the unit tests use plain objects). */
export interface DropMember {
  /** Own KV on the host, `// [1, numKvHeads, cacheLength, headDim]`; needed by `shift` only. */
  kv: KvTensors | null;
  cacheLength: number;
  window: WindowState;
  droppedDuringRequest: number;
  pending: number[];
  pendingIndex: number;
  state: SequenceState;
  /** The transcript, which already holds every token the cache holds. */
  readonly session: { readonly tokens: readonly number[] };
}

/**
 * `shift` on a sequence whose KV is row `row` of in-place buffers (the decode batch's, or its own):
 * the same drop, done inside the buffers, so the row is neither copied out nor back in.
 */
export function shiftWindowInBuffer(member: Omit<DropMember, 'kv'>, policy: WindowPolicy, buffer: InPlaceKv, row: number, inverseFrequencies: Float32Array): void {
  const drop = planDrop(policy, member.window, member.cacheLength);
  const [start, end] = drop.slots;
  buffer.shiftRow(row, start, end - start, inverseFrequencies);
  member.window = drop.window;
  member.droppedDuringRequest += policy.dropTokens;
  member.cacheLength = drop.keptLength;
}

/** Drops `policy.dropTokens` tokens after the sinks. `inverseFrequencies`: the rotary frequencies, needed by `shift`. */
export function dropWindow(member: DropMember, policy: WindowPolicy, layout: KvLayout, inverseFrequencies: Float32Array | null): void {
  const drop = planDrop(policy, member.window, member.cacheLength);
  member.window = drop.window;
  member.droppedDuringRequest += policy.dropTokens;
  if (policy.strategy === 'shift') {
    const [start, end] = drop.slots;
    member.kv = dropAndShift(layout, member.kv!, start, end - start, inverseFrequencies!);
    member.cacheLength = drop.keptLength;
    return;
  }
  const kept = cachedTranscript(member.session.tokens, policy.sinkTokens, drop.window, drop.keptLength);
  member.pending = kept.concat(member.pending.slice(member.pendingIndex));
  member.pendingIndex = 0;
  member.kv = null;
  member.cacheLength = 0;
  member.state = 'prefill';
}

/**
 * Branching: seeds a new, empty session with a copy of the KV prefix it shares with another session of
 * the same owner, so a second child of a conversation (a regenerate, an edit, a parallel branch) does
 * not recompute what its parent already has. The copy is reserved in the KV budget like any cache.
 */
import { gatherRows } from './kv-ops.ts';
import type { SessionStore } from './session-store.ts';
import type { Session } from './session.ts';
import type { KvLayout } from '../model/types.ts';

/**
 * Copies the longest prefix of `source`'s cache that `input` starts with (at most `input.length - 1`
 * tokens: the last one is always fed) into `target`. Returns false, changing nothing, when nothing can
 * be shared: another owner, a busy or non-hot source, a windowed source (its cache is not a plain
 * prefix), a non-empty target, or no room in the budget. The caller then simply prefills in full.
 */
export function forkPrefix(store: SessionStore, layout: KvLayout, source: Session, target: Session, input: readonly number[]): boolean {
  if (source === target || source.owner !== target.owner) return false;
  if (source.busy || target.busy || source.tier !== 'hot' || !source.hasKv || source.window.droppedTokens > 0) return false;
  if (target.tokens.length > 0 || target.cachedLength > 0) return false;
  const limit = Math.min(source.cachedLength, source.tokens.length, input.length - 1);
  let keep = 0;
  while (keep < limit && source.tokens[keep] === input[keep]) keep++;
  if (keep === 0) return false;
  // Reserving may demote idle sessions to make room: never the one being copied.
  source.pinned = true;
  let reserved: boolean;
  try {
    reserved = store.reserve(target, store.budget.bytesFor(keep, layout.bytesPerToken));
  } finally {
    source.pinned = false;
  }
  if (!reserved) return false;
  // A copy, never a shared tensor: the engine may rotate or overwrite either cache in place later.
  const copy = source.held ? source.held.prefixCopy(keep) : gatherRows(layout, [{ kv: source.kv!, row: 0, segments: [[0, keep]] }]).kv;
  target.toHot(copy, keep); // [1, numKvHeads, keep, headDim] per layer
  target.tokens = source.tokens.slice(0, keep);
  store.touch(target);
  return true;
}

/**
 * Prefix planning: what a new request reuses of its session's cache and what it must prefill. Pure:
 * it reads token arrays and window state and copies no KV, so it is unit-tested on plain values.
 */
import { NO_WINDOW, type WindowState } from '../cache/session.ts';
import { cachedTranscript, reusableSlots, type WindowPolicy } from '../cache/window.ts';

/** What a request reuses of its session's cache. */
export interface CachePlan {
  /** Cache slots kept (a prefix of the session's cache). */
  keep: number;
  window: WindowState;
  /** Tokens to prefill are pending[pendingIndex..]. */
  pending: number[];
  pendingIndex: number;
  cachedTokens: number;
}

/** What the planner needs of a session: its transcript, window state and hot cache length (0: no KV held). */
export interface CachedPrefix {
  tokens: readonly number[];
  window: WindowState;
  /** Slots of KV the session holds in memory now; 0 when it holds none. */
  cachedLength: number;
}

export function commonPrefixLength(a: readonly number[], b: readonly number[], limit: number): number {
  const n = Math.min(a.length, b.length, limit);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/**
 * The longest cached prefix a request on `full` may keep (at least one token is always fed, to get
 * logits). After a recompute-style drop an evicted session's cache is just a prefill of the kept
 * tokens, so it is rebuilt exactly from the transcript without replaying the drops.
 */
export function planCache(cached: CachedPrefix, full: readonly number[], policy: WindowPolicy): CachePlan {
  const { window } = cached;
  if (cached.cachedLength > 0) {
    const cacheEnd = window.droppedTokens + cached.cachedLength;
    const match = Math.min(commonPrefixLength(full, cached.tokens, cacheEnd), full.length - 1);
    const keep = reusableSlots(window, cached.cachedLength, match);
    if (keep > 0) {
      const start = window.droppedTokens + keep;
      return { keep, window: { ...window }, pending: full as number[], pendingIndex: start, cachedTokens: start };
    }
  } else if (window.droppedTokens > 0 && policy.strategy === 'recompute') {
    const match = commonPrefixLength(full, cached.tokens, cached.tokens.length);
    if (match >= window.lastDropAt && full.length > window.lastDropAt) {
      // Everything after the drops, as a cache that had processed all of `full` would hold it.
      const pending = cachedTranscript(full, policy.sinkTokens, window, full.length - window.droppedTokens);
      return { keep: 0, window: { ...window }, pending, pendingIndex: 0, cachedTokens: 0 };
    }
  }
  return { keep: 0, window: { ...NO_WINDOW }, pending: full as number[], pendingIndex: 0, cachedTokens: 0 };
}

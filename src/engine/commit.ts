/**
 * What a finished request leaves in its session: the whole cache (keep), the processed prefix of a
 * cancelled prefill (keepProcessed), or the state before the request (rollBack). The engine calls
 * these once a sequence has left the decode batch and holds its own KV.
 */
import { prefixOf } from '../cache/kv-ops.ts';
import { NO_WINDOW, type WindowState } from '../cache/session.ts';
import { reusableSlots } from '../cache/window.ts';
import type { KvLayout } from '../model/types.ts';
import { commonPrefixLength } from './cache-plan.ts';
import type { Sequence } from './sequence.ts';

export function keepCache(sequence: Sequence): void {
  const session = sequence.session;
  if (sequence.cacheLength > 0 && sequence.kv) session.toHot(sequence.kv, sequence.cacheLength);
  else session.toEvicted();
  session.window = sequence.window;
  session.version++;
  sequence.kv = null;
}

/**
 * Cancelled during its prompt's prefill (not a recompute after a window drop, where every token was
 * processed before): the transcript keeps what was committed before this request or
 * processed by it, never prompt tokens that were not prefilled (an abandoned huge append must not
 * grow the transcript), and the cache keeps the processed prefix. When the cache slots cannot be
 * mapped back onto the transcript (a recompute drop still rebuilding its sinks), as a failure.
 */
export function keepProcessed(sequence: Sequence, layout: KvLayout, sinkTokens: number): void {
  const window = sequence.window;
  if (window.droppedTokens > 0 && sequence.cacheLength < sinkTokens) {
    rollBack(sequence, layout);
    return;
  }
  const processed = window.droppedTokens + sequence.cacheLength;
  const committedBefore = commonPrefixLength(sequence.fullInput, sequence.originalTokens, sequence.originalTokens.length);
  sequence.session.tokens = sequence.fullInput.slice(0, Math.max(processed, committedBefore));
  keepCache(sequence);
}

/**
 * A failed request leaves the session as it was before the request: the old transcript, and of the
 * cache only the part that still matches it.
 */
export function rollBack(sequence: Sequence, layout: KvLayout): void {
  const session = sequence.session;
  session.tokens = sequence.originalTokens;
  const window: WindowState = sequence.window;
  const match = commonPrefixLength(sequence.fullInput, session.tokens, session.tokens.length);
  const keep = sequence.kv ? reusableSlots(window, sequence.cacheLength, match) : 0;
  if (keep > 0) {
    session.toHot(prefixOf(layout, sequence.kv!, keep), keep);
    session.window = { ...window };
  } else {
    session.toEvicted();
    session.window = { ...NO_WINDOW };
  }
  sequence.kv = null;
}

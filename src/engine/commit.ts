/**
 * Finishing a request: `finishSequence` takes it out of the queues and the decode batch, decides what
 * it leaves in its session, settles the KV budget and closes its stream. What it leaves is the whole
 * cache (keepCache), the processed prefix of a cancelled prefill (keepProcessed), or the state before
 * the request (rollBack); these run once the sequence has left the decode batch (or its own in-place
 * buffer) and holds its own tight KV.
 */
import { prefixOf } from '../cache/kv-ops.ts';
import { NO_WINDOW, type WindowState } from '../cache/session.ts';
import { reusableSlots } from '../cache/window.ts';
import type { KvLayout } from '../model/types.ts';
import { commonPrefixLength } from './cache-plan.ts';
import { settleOwnBuffer } from './own-buffer.ts';
import type { EngineParts } from './parts.ts';
import type { Sequence } from './sequence.ts';
import type { EngineError, FinishReason } from './types.ts';

/**
 * Ends a sequence: stores its cache in the session, settles the budget, and closes its stream. False
 * when it had already finished (nothing changed). The caller wakes the loop: room may have been freed.
 */
export function finishSequence(parts: EngineParts, sequence: Sequence, reason: FinishReason, error?: EngineError): boolean {
  if (sequence.state === 'finished') return false;
  const { scheduler, decodeBatch, layout, store } = parts;
  const session = sequence.session;
  const wasAdmitted = sequence.state !== 'queued';
  if (!wasAdmitted) {
    scheduler.remove(sequence);
  } else {
    decodeBatch.leave(sequence);
    scheduler.remove(sequence);
    if (reason === 'error') {
      settleOwnBuffer(sequence);
      rollBack(sequence, layout);
    } else if (reason === 'cancelled' && sequence.state === 'prefill' && sequence.generated.length === 0) {
      settleOwnBuffer(sequence);
      keepProcessed(sequence, layout, parts.window.sinkTokens);
    } else keepCache(sequence);
  }
  sequence.state = 'finished';
  sequence.finishReason = reason;
  sequence.constraint?.dispose();
  sequence.constraint = null;
  sequence.error = error;
  if (session.ephemeral) store.budget.resize(session, 0);
  else if (wasAdmitted) settleBudget(parts, sequence);
  session.pinned = false;
  store.release(session);
  const text = wasAdmitted ? sequence.finalText() : '';
  sequence.events.push({
    type: 'end',
    finishReason: reason,
    text,
    error,
    usage: {
      promptTokens: sequence.fullInput.length,
      completionTokens: sequence.generated.length,
      cachedTokens: sequence.cachedTokens,
      droppedTokens: sequence.droppedDuringRequest,
    },
  });
  sequence.events.close();
  for (const o of parts.observers) o.requestFinished?.(sequence);
  return true;
}

/**
 * A session keeps its cache as the buffer it ran on only while the spare capacity is at most this share
 * of the valid slots: the budget counts the spare slots too, and a short cache is cheap to copy tight.
 */
const HELD_SLACK_SHARE = 1 / 8;

/**
 * A hot session keeps reserved what its cache now takes: at most what the request reserved, except a
 * held buffer's spare capacity, reserved when it is small and the budget has room; otherwise the buffer
 * is made tight (one copy). Other tiers keep their reservation.
 */
function settleBudget(parts: EngineParts, sequence: Sequence): void {
  const { store, layout } = parts;
  const session = sequence.session;
  const budget = store.budget;
  const reserved = session.reservedBytes;
  if (session.tier !== 'hot') return void budget.resize(session, reserved);
  const held = session.held;
  if (held) {
    const heldBytes = budget.bytesFor(held.capacity, layout.bytesPerToken);
    if (held.capacity - held.heldLength <= held.heldLength * HELD_SLACK_SHARE && budget.resize(session, heldBytes)) {
      parts.counters.heldCommits++;
      return;
    }
    session.makeTight();
  }
  budget.resize(session, Math.min(budget.bytesFor(session.cachedLength, layout.bytesPerToken), reserved));
}

/** The session takes the sequence's whole cache: tight tensors, or its own buffer as it is (no copy). */
export function keepCache(sequence: Sequence): void {
  const session = sequence.session;
  if (sequence.cacheLength > 0 && sequence.buffer) session.toHotHeld(sequence.buffer);
  else if (sequence.cacheLength > 0 && sequence.kv) session.toHot(sequence.kv, sequence.cacheLength);
  else session.toEvicted();
  session.window = sequence.window;
  session.version++;
  sequence.kv = null;
  sequence.buffer = null;
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

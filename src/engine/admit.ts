/**
 * Admission's executing side (the scheduler decides who is next and acts on the budget's answer): for
 * the head of the queue, bring its session's KV back to hot, supersede a stale snapshot, plan which
 * prefix of the cache it keeps (cache-plan.ts), reserve the KV bytes its whole run can need, and move
 * the session's cache into the sequence, which owns it while it runs (commit.ts moves it back).
 */
import { performance } from 'node:perf_hooks';
import { prefixOf } from '../cache/kv-ops.ts';
import type { Session, Tier } from '../cache/session.ts';
import { planCache } from './cache-plan.ts';
import { InPlaceKv } from './inplace-kv.ts';
import type { SessionSuperseder, TierRestorer } from './engine.ts';
import type { EngineParts } from './parts.ts';
import type { KvRoom } from './scheduler.ts';
import type { Sequence } from './sequence.ts';

export class Admitter {
  restorer: TierRestorer | null = null;
  superseder: SessionSuperseder | null = null;
  /** Where a waiting request's cache was restored from in an earlier pass that then found no room to run. */
  private readonly restoredEarlier = new WeakMap<Sequence, Tier>();

  constructor(private readonly parts: EngineParts) {}

  /** Moves queued requests into the running set, first come first served, while the batch and budget allow. */
  async admit(): Promise<void> {
    const { scheduler, store, window: policy, layout, model, observers } = this.parts;
    scheduler.beginAdmission();
    for (let next = scheduler.nextAdmission(); next?.kind === 'admit'; next = scheduler.nextAdmission()) {
      const sequence = next.sequence;
      const session = sequence.session;
      const restoreStart = performance.now();
      // Await only when there is something to wait for: a request that finds its session hot and room
      // free is admitted in the very tick it was submitted (engine.stats() sees it running at once).
      const restoredFrom = this.restorable(session) ? await this.restore(sequence) : (this.restoredEarlier.get(sequence) ?? session.tier);
      // The restorer awaited: the sequence may have been cancelled meanwhile.
      if (scheduler.waiting[0] !== sequence) continue;
      // No room yet to bring the cache back, but snapshot writes under way will free some: wait for them
      // (the store wakes the engine) rather than give up the cache and recompute the session.
      if (restoredFrom === 'evicted' && this.restorable(session) && store.writingSnapshots()) {
        scheduler.decideRoom(sequence, 'no_room');
        return;
      }
      const superseding = this.superseder?.(session);
      if (superseding && !(await this.supersede(sequence, superseding))) continue;

      const request = sequence.request;
      const fullInput = request.mode === 'append' ? session.tokens.concat(request.input) : request.input;
      const plan = planCache({ tokens: session.tokens, window: session.window, cachedLength: session.hasKv ? session.cachedLength : 0 }, fullInput, policy);
      // Reserve for the longest the cache can get during this request: the window caps it.
      const finalLength = Math.min(plan.keep + plan.pending.length - plan.pendingIndex + request.maxTokens, policy.capacity);
      const bytes = store.budget.bytesFor(finalLength, layout.bytesPerToken);
      const room: KvRoom = !store.couldEverFit(bytes) ? 'too_large' : this.reserve(session, bytes);
      if (room === 'too_large') {
        this.parts.finish(sequence, 'error', {
          kind: 'request_too_large',
          message: `the request needs ${bytes} bytes of KV cache but the whole cache budget is ${store.budget.capacityBytes} bytes`,
        });
        continue;
      }
      // No room now: the request stays at the head of the queue, and this admission pass ends.
      if (!scheduler.decideRoom(sequence, room)) return;
      sequence.fullInput = fullInput.slice();
      this.takeCache(sequence, plan.keep);
      sequence.cacheLength = plan.keep;
      sequence.window = plan.window;
      sequence.pending = plan.pending;
      sequence.pendingIndex = plan.pendingIndex;
      sequence.cachedTokens = plan.cachedTokens;
      sequence.originalTokens = session.tokens;
      session.tokens = sequence.fullInput.slice();
      session.kv = null;
      session.requests++;
      sequence.restoredFrom = sequence.cachedTokens > 0 ? restoredFrom : 'evicted';
      sequence.admittedAt = this.parts.now();
      sequence.state = 'prefill';
      sequence.startOutput(model.tokenizer, model.vocabSize);
      sequence.events.push({
        type: 'start',
        sessionId: session.id,
        promptTokens: sequence.fullInput.length,
        cachedTokens: sequence.cachedTokens,
        restoredFrom: sequence.restoredFrom,
        queueMs: sequence.admittedAt - sequence.enqueuedAt,
      });
      const restoreMs = performance.now() - restoreStart;
      for (const o of observers) o.requestStarted?.(sequence, { restoredFrom: sequence.restoredFrom, restoreMs });
    }
  }

  /**
   * Moves the first `keep` slots of the session's cache into the sequence: a held buffer as it is (its
   * tail cut off by length alone), tight tensors as a prefix (a copy only when not all of them are kept).
   */
  private takeCache(sequence: Sequence, keep: number): void {
    const session = sequence.session;
    if (keep > 0 && session.held instanceof InPlaceKv && this.parts.ownBuffers) {
      const held = session.takeHeld() as InPlaceKv;
      held.truncate(0, keep);
      sequence.buffer = held;
      sequence.kv = null;
      this.parts.counters.heldResumes++;
      return;
    }
    sequence.kv = keep > 0 ? prefixOf(this.parts.layout, session.kv!, keep) : null;
  }

  private restorable(session: Session): boolean {
    return (session.tier === 'int8' || session.tier === 'disk' || (session.tier === 'evicted' && session.prefixLookup)) && this.restorer !== null;
  }

  /** Brings an int8 or disk session back to hot (pinned meanwhile); the tier its cache came from. */
  private async restore(sequence: Sequence): Promise<Tier> {
    const session = sequence.session;
    const from = session.tier;
    session.pinned = true;
    try {
      await this.restorer!(session);
    } finally {
      session.pinned = false;
    }
    if ((session.tier as Tier) !== 'hot') return 'evicted';
    this.restoredEarlier.set(sequence, from);
    return from;
  }

  /**
   * Waits for the superseder's promise: no snapshot of the session is older than what this request will
   * answer (pinned meanwhile). False when the sequence may not go on: cancelled while this awaited, or failed here.
   */
  private async supersede(sequence: Sequence, superseding: Promise<void>): Promise<boolean> {
    const session = sequence.session;
    session.pinned = true;
    let failure: Error | null = null;
    try {
      await superseding;
    } catch (error) {
      failure = error as Error;
    } finally {
      session.pinned = false;
    }
    if (this.parts.scheduler.waiting[0] !== sequence) return false;
    if (failure) {
      this.parts.logger.error({ sessionId: session.id, err: failure.message }, 'the session snapshot could not be superseded');
      this.parts.finish(sequence, 'error', { kind: 'internal', message: "the session's snapshot could not be updated; the session is unchanged" });
      return false;
    }
    return true;
  }

  /** Pins the session and reserves its KV bytes; no room unpins it again. */
  private reserve(session: Session, bytes: number): 'reserved' | 'no_room' {
    session.pinned = true;
    if (this.parts.store.reserve(session, Math.max(bytes, session.reservedBytes))) return 'reserved';
    session.pinned = false;
    return 'no_room';
  }
}

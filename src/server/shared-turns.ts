/**
 * A turn on a session kept in a shared store (SESSION_STORE_URL): admission takes the session's lease,
 * brings the local copy up to the committed state (adopting the transcript another replica wrote),
 * and the turn's end event waits for its compare-and-set commit, so a response completes only once
 * the turn is durable. A commit that fails turns the end into 409 session_busy (the lease was lost)
 * or 503 session_store_unavailable, and the local copy is forgotten: the next turn reloads the last
 * committed one.
 */
import type { Session } from '../cache/session.ts';
import type { SessionStore } from '../cache/session-store.ts';
import { SessionStoreUnavailableError, type SessionLease, type SessionRecord, type SharedSessions } from '../cache/shared-sessions.ts';
import type { GenerationEvent } from '../engine/types.ts';
import { ApiError } from './errors.ts';

export function unavailable(error: unknown): ApiError {
  if (!(error instanceof SessionStoreUnavailableError)) return error as ApiError;
  return new ApiError('session_store_unavailable', `${error.message}; the turn was not run (retry shortly)`, null, 2);
}

/** Runs a store call; a store failure becomes the 503 API error. */
export async function storeCall<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw unavailable(error);
  }
}

export function recordOf(session: Session): SessionRecord {
  return {
    owner: session.owner,
    id: session.id,
    tokens: session.tokens,
    window: session.window,
    version: session.version,
    createdAt: session.createdAt,
    lastUsedAt: session.lastUsedAt,
    requests: session.requests,
  };
}

/**
 * Makes the local copy of a session match the committed record: absent, adopted, or (same version)
 * left alone. A cache whose tokens are a prefix of the committed transcript is kept: history is linear,
 * so what this replica computed before is still valid for the turns another replica added.
 */
export function syncLocal(store: SessionStore, owner: string, id: string, record: SessionRecord | null): void {
  const local = store.get(owner, id);
  if (local?.busy) return;
  if (!record) {
    if (local) store.delete(local);
    return;
  }
  if (local && local.version === record.version) return;
  const session = local ?? store.create(owner, id);
  const cacheEnd = session.cachedLength;
  const windowsUnslid = session.window.droppedTokens === 0 && record.window.droppedTokens === 0;
  const prefix = cacheEnd <= record.tokens.length && session.tokens.slice(0, cacheEnd).every((token, i) => token === record.tokens[i]);
  if (!(windowsUnslid && prefix && cacheEnd > 0)) {
    session.toEvicted();
    store.budget.resize(session, 0);
    // Another replica may have left a snapshot of this transcript's prefix on shared storage.
    session.prefixLookup = record.window.droppedTokens === 0;
  }
  session.tokens = record.tokens.slice();
  session.window = { ...record.window };
  session.version = record.version;
  session.requests = record.requests;
  session.lastUsedAt = Math.max(session.lastUsedAt, record.lastUsedAt);
}

/** Takes the lease and syncs the local copy; throws 409 when another turn holds the session, 503 when the store is down. */
export async function beginTurn(shared: SharedSessions, store: SessionStore, owner: string, id: string): Promise<SessionLease> {
  const lease = await storeCall(() => shared.acquire(owner, id));
  if (!lease) throw new ApiError('session_busy', `Session ${id} is busy with another request (on this or another replica).`, 'session_id');
  try {
    syncLocal(store, owner, id, await storeCall(() => shared.load(owner, id)));
  } catch (error) {
    await shared.release(lease).catch(() => {});
    throw error;
  }
  return lease;
}

/** The engine's events, with the end held back until the turn is committed (or replaced by why it was not). */
export async function* committing(
  shared: SharedSessions,
  store: SessionStore,
  lease: SessionLease,
  session: Session,
  events: AsyncIterable<GenerationEvent>,
): AsyncGenerator<GenerationEvent> {
  const before = session.version;
  let settled = false;
  try {
    for await (const event of events) {
      if (event.type !== 'end') {
        yield event;
        continue;
      }
      settled = true;
      if (session.version === before) {
        await shared.release(lease).catch(() => {});
        yield event;
        continue;
      }
      let outcome: 'committed' | 'conflict' | Error;
      try {
        outcome = await shared.commit(lease, before, recordOf(session));
      } catch (error) {
        outcome = error as Error;
      }
      if (outcome === 'committed') {
        store.turnCommitted(session);
        yield event;
        continue;
      }
      store.delete(session);
      const error =
        outcome === 'conflict'
          ? { kind: 'session_busy' as const, param: 'session_id', message: `Session ${session.id} was changed by another request while this turn ran; this turn was not kept.` }
          : { kind: 'session_store_unavailable' as const, message: `${outcome.message}; this turn was not kept`, retryAfterSeconds: 2 };
      yield { ...event, finishReason: 'error', error };
    }
  } finally {
    if (!settled) await shared.release(lease).catch(() => {});
  }
}

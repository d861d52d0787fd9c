/**
 * Admission: the one place a request's session is created and its per-key limits are applied, for
 * every entry point (completions, chat, POST /v1/sessions, the session append API).
 *
 * - A session a request names that does not exist yet is created here, in the same tick as the
 *   MAX_SESSIONS_PER_KEY count, so concurrent requests cannot overshoot the limit.
 * - Submission goes through `Admitted.submit`, which refuses a key at MAX_STREAMS_PER_KEY and counts
 *   the request while the engine takes it (limits.ts).
 * - When the request never starts (refused by the limit or the engine, or ended before its first
 *   event), `Admitted.refused` removes the session that this request created; a session that existed
 *   before is untouched. So a refused request leaves the store as it found it, on every path.
 * - A session's transcript is capped at MAX_SESSION_TOKENS (default SESSION_CONTEXT_MULTIPLE times the
 *   context): a prompt that would take it past the cap is a 400 before anything is queued or prefilled,
 *   so no sequence of appends (abandoned or not) can grow a transcript, or the work pending on it,
 *   without bound. A turn's generated tokens may pass the cap by at most its max_tokens; the next turn
 *   is then refused.
 */
import type { Session } from '../cache/session.ts';
import type { SessionStore } from '../cache/session-store.ts';
import type { Engine } from '../engine/engine.ts';
import type { GenerationRequest, SubmitResult } from '../engine/types.ts';
import type { Serving } from '../serving.ts';
import { ApiError } from './errors.ts';
import { KeyLimits } from './limits.ts';
import { beginTurn, committing, recordOf, storeCall, syncLocal } from './shared-turns.ts';
import type { SessionLease } from '../cache/shared-sessions.ts';

/** Default MAX_SESSION_TOKENS, as a multiple of the model's context. */
export const SESSION_CONTEXT_MULTIPLE = 64;

/** One admitted request: how it submits, and how it undoes its admission when it never starts. */
export interface Admitted {
  /** This request created the session it names (it did not exist before). */
  readonly created: boolean;
  /** Submits to the engine under the per-key generation limit; throws 429 too_many_streams at the limit. */
  submit(request: GenerationRequest): Promise<SubmitResult>;
  /** The request never started: removes the session it created, if any (idempotent). */
  refused(): void;
}

export class Admission {
  readonly limits: KeyLimits;
  /** Engines whose queue/finish events the limits already observe. */
  private readonly observed = new WeakSet<Engine>();

  constructor(
    maxStreamsPerKey: number,
    maxSessionsPerKey: number,
    /** MAX_SESSION_TOKENS; undefined: SESSION_CONTEXT_MULTIPLE times the model's context. */
    private readonly maxSessionTokens?: number,
  ) {
    this.limits = new KeyLimits(maxStreamsPerKey, maxSessionsPerKey);
  }

  /**
   * Refuses a request whose prompt would make its session's transcript longer than MAX_SESSION_TOKENS:
   * an append adds to the transcript, a replace becomes it. A request without a session keeps nothing.
   */
  async checkTranscript(parts: Serving, request: GenerationRequest): Promise<void> {
    if (request.sessionId === undefined) return;
    const limit = this.sessionTokenLimit(parts);
    let length = request.input.length;
    if (request.mode === 'append') {
      const session = parts.store.get(request.owner, request.sessionId) ?? (await parts.store.find(request.owner, request.sessionId));
      length += session?.tokens.length ?? 0;
    }
    if (length <= limit) return;
    throw new ApiError(
      'context_length_exceeded',
      `Session ${request.sessionId} would hold ${length} tokens after this prompt; this server keeps at most ${limit} per session (MAX_SESSION_TOKENS). Start a new session or delete this one.`,
      request.mode === 'append' ? 'prompt' : 'session_id',
    );
  }

  /** MAX_SESSION_TOKENS: the longest transcript a session may hold. */
  sessionTokenLimit(parts: Serving): number {
    return this.maxSessionTokens ?? SESSION_CONTEXT_MULTIPLE * parts.model.contextLength;
  }

  /**
   * Admits a generation (or a prefill) for `owner`: checks the generation limit, and when `sessionId`
   * names a session that does not exist, checks the session limit and creates it. `sessionId`
   * undefined: a one-off request, or the append API (where the engine refuses unknown sessions).
   */
  async admit(parts: Serving, owner: string, sessionId: string | undefined, options: { create?: boolean } = {}): Promise<Admitted> {
    this.observe(parts.engine);
    this.limits.checkStreams(owner);
    const create = options.create ?? true;
    // With a shared store the turn first takes the session's lease and the committed transcript.
    const lease = sessionId !== undefined && parts.shared?.shared ? await beginTurn(parts.shared, parts.store, owner, sessionId) : null;
    let created: Session | null = null;
    try {
      if (create && sessionId !== undefined && !(parts.store.get(owner, sessionId) ?? (await parts.store.find(owner, sessionId)))) {
        // The lookup may have awaited the snapshot directory: another request may have created it meanwhile.
        if (!parts.store.get(owner, sessionId)) created = this.createSession(parts.store, owner, sessionId);
      }
    } catch (error) {
      if (lease) await parts.shared!.release(lease).catch(() => {});
      throw error;
    }
    return this.admitted(parts, created, lease);
  }

  /** Creates an empty session (POST /v1/sessions without a prompt), also in the shared store; 409 when it exists there. */
  async createEmpty(parts: Serving, owner: string, id: string): Promise<Session> {
    const session = this.createSession(parts.store, owner, id);
    const shared = parts.shared;
    if (!shared?.shared) return session;
    let fresh = false;
    try {
      fresh = await storeCall(() => shared.createIfAbsent(recordOf(session)));
    } finally {
      if (!fresh) parts.store.delete(session);
    }
    if (!fresh) throw new ApiError('session_exists', `Session ${id} already exists.`, 'session_id');
    return session;
  }

  /** Before showing a session: the local copy takes the committed state of the shared store, if any. */
  async refresh(parts: Serving, owner: string, id: string): Promise<void> {
    const shared = parts.shared;
    if (!shared?.shared) return;
    syncLocal(parts.store, owner, id, await storeCall(() => shared.load(owner, id)));
  }

  /** A deleted session leaves the shared store too. */
  async forget(parts: Serving, owner: string, id: string): Promise<void> {
    const shared = parts.shared;
    if (shared?.shared) await storeCall(() => shared.delete(owner, id));
  }

  /** Creates an empty session under the per-key session limit (POST /v1/sessions without a prompt). */
  createSession(store: SessionStore, owner: string, id: string): Session {
    this.limits.checkSessions(store.countOwned(owner));
    return store.create(owner, id);
  }

  private admitted(parts: Serving, created: Session | null, lease: SessionLease | null): Admitted {
    const limits = this.limits;
    const admission = this;
    let undone = false;
    let leaseHandedOn = false;
    const dropLease = () => {
      if (!lease || leaseHandedOn) return;
      leaseHandedOn = true;
      void parts.shared!.release(lease).catch(() => {});
    };
    return {
      created: created !== null,
      async submit(request) {
        let result: SubmitResult;
        try {
          await admission.checkTranscript(parts, request);
          // The check and the count in one tick, so a burst cannot overshoot the limit.
          limits.checkStreams(request.owner);
          result = await limits.whileSubmitting(request, () => parts.engine.submit(request));
        } catch (error) {
          dropLease();
          throw error;
        }
        const session = result.ok && lease ? parts.store.get(lease.owner, lease.id) : undefined;
        if (!result.ok || !lease || !session || leaseHandedOn) {
          dropLease();
          return result;
        }
        leaseHandedOn = true;
        return { ...result, events: committing(parts.shared!, parts.store, lease, session, result.events) };
      },
      refused() {
        dropLease();
        if (undone || !created) return;
        undone = true;
        // Only the very session this request made, and only if nothing else holds it now.
        if (parts.store.get(created.owner, created.id) === created) parts.store.delete(created);
      },
    };
  }

  private observe(engine: Engine): void {
    if (this.observed.has(engine)) return;
    this.observed.add(engine);
    engine.addObserver(this.limits);
  }
}

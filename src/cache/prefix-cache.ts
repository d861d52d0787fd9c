/**
 * Automatic prefix caching for stateless requests (completions and chat without a session id): each
 * runs on an anonymous prefix entry of its API key and leaves its finished cache there, so a later
 * stateless request of the same key whose prompt starts with that transcript (a client resending the
 * whole conversation every turn, a regenerate, an edit) prefills only the rest.
 *
 * Which entry a request runs on (`claim`): candidates come from the prefix index (whole blocks of
 * PREFIX_BLOCK tokens, so a prompt must share at least one block), longest first, and are checked
 * token by token:
 * - takeover: the prompt continues at least the whole prompt of the idle entry's last request (the
 *   linear resend: only the reply may differ, where the client's text re-tokenizes otherwise than it
 *   was generated, a tail nobody else would resend): the request runs on that entry itself, no copy,
 *   and the entry then holds the longer transcript;
 * - copy: the prompt shares less (a branch: an edit or a regenerate, whose source keeps its own tail),
 *   or another request has just claimed the entry: a new entry gets a copy of the shared prefix;
 * - new: nothing to reuse (or no room for the copy): a new, empty entry.
 * An entry a request runs on (busy) is passed over: its KV is the engine's until that request ends.
 *
 * Entries live in the session store apart from named sessions (session-store.ts): the same KV budget,
 * the first to lose their KV under pressure, never int8 or disk, never listed or counted as a key's
 * sessions. At most `maxEntries` are kept; beyond, those without KV go first, then the least recently
 * used idle one. Idle entries expire like sessions (SESSION_IDLE_SECONDS, `startSweeps`).
 */
import { randomBytes } from 'node:crypto';
import type { KvLayout } from '../model/types.ts';
import { forkPrefix } from './fork.ts';
import { PREFIX_BLOCK, PrefixIndex, hashBlocks } from './prefix-index.ts';
import type { SessionStore } from './session-store.ts';
import type { Session } from './session.ts';

/** Whether `holder` serves every prompt `other` could: its transcript starts with all of other's, and it caches at least as much. */
function holdsAllOf(holder: Session, other: Session): boolean {
  if (holder.cachedLength < other.cachedLength || holder.tokens.length < other.tokens.length) return false;
  for (let i = 0; i < other.tokens.length; i++) if (holder.tokens[i] !== other.tokens[i]) return false;
  return true;
}

/** Prefix blocks the index keeps (about 40 bytes each). */
const INDEX_BLOCKS = 65_536;

/**
 * Entry ids start with '#', which no client session id may hold (schemas.ts), so no request can name
 * one, and another key's entry is never looked up (the index and the store are per owner).
 */
const ENTRY_ID_PREFIX = '#prefix-';

export type PrefixClaimKind = 'takeover' | 'copy' | 'new';

/** The entry a stateless request runs on, held for it until the engine has taken it (or it never starts). */
export interface PrefixClaim {
  readonly session: Session;
  readonly kind: PrefixClaimKind;
  /** The engine holds the entry now (busy), or the request was refused: others may use it again. */
  release(): void;
}

/** What the prefix cache reads of a finished or started engine request (the engine's RequestRecord). */
export interface PrefixRequestRecord {
  readonly request: { readonly owner: string; readonly sessionId?: string };
  readonly cachedTokens: number;
  readonly fullInput: readonly number[];
}

export interface PrefixCacheCounters {
  /** Requests on entries whose prompt had (hit) or had no (miss) cached tokens. */
  hits: number;
  misses: number;
  /** Prompt tokens of those requests, and how many of them came from an entry. */
  promptTokens: number;
  reusedTokens: number;
  /** How claims were served. */
  takeovers: number;
  copies: number;
  /** Entries whose KV was dropped to make room for something else. */
  evictions: number;
  /** Entries now, and the KV bytes they reserve. */
  entries: number;
  bytes: number;
}

export class PrefixCache {
  /** A few holders per prefix: the branches copied from an entry must not hide it from its own continuation. */
  private readonly index = new PrefixIndex(INDEX_BLOCKS, 4);
  /** Entries a request has claimed that the engine has not taken yet. */
  private readonly claimed = new Set<Session>();
  /** The prompt length of each entry's last request: what a takeover must continue. */
  private readonly lastPrompt = new WeakMap<Session, number>();
  private readonly counts = { hits: 0, misses: 0, promptTokens: 0, reusedTokens: 0, takeovers: 0, copies: 0, evictions: 0 };

  constructor(
    private readonly store: SessionStore,
    private readonly layout: KvLayout,
    readonly maxEntries: number,
  ) {
    store.onTierMove(({ session, to }) => {
      if (to === 'evicted' && store.isPrefixEntry(session)) this.counts.evictions++;
    });
  }

  /** The entry a stateless request of `owner` on `input` runs on; the caller sets it as the request's session. */
  claim(owner: string, input: readonly number[]): PrefixClaim {
    const [session, kind] = this.choose(owner, input);
    if (kind === 'takeover') this.counts.takeovers++;
    if (kind === 'copy') this.counts.copies++;
    this.claimed.add(session);
    this.bound(session);
    let released = false;
    return {
      session,
      kind,
      release: () => {
        if (released) return;
        released = true;
        this.claimed.delete(session);
        // Refused before the engine took it: an entry made for this request has nothing of its own.
        if (!session.busy && session.version === 0) this.drop(session);
      },
    };
  }

  /** The candidate sharing the most tokens with `input` (a takeover wins a tie: no copy), taken over or copied. */
  private choose(owner: string, input: readonly number[]): [Session, PrefixClaimKind] {
    let best: { entry: Session; shared: number; takeover: boolean } | null = null;
    for (const id of this.index.candidates(owner, input)) {
      const entry = this.store.get(owner, id);
      if (!entry || !this.store.isPrefixEntry(entry) || entry.busy) continue;
      if (entry.tier !== 'hot' || !entry.hasKv || entry.window.droppedTokens > 0) {
        if (!this.claimed.has(entry)) this.drop(entry);
        continue;
      }
      const limit = Math.min(entry.cachedLength, input.length - 1);
      let shared = 0;
      while (shared < limit && entry.tokens[shared] === input[shared]) shared++;
      const continues = Math.min(entry.cachedLength, this.lastPrompt.get(entry) ?? entry.cachedLength);
      const takeover = shared >= continues && !this.claimed.has(entry);
      if (shared > 0 && (!best || shared > best.shared || (shared === best.shared && takeover && !best.takeover))) best = { entry, shared, takeover };
    }
    if (!best) return [this.newEntry(owner), 'new'];
    if (best.takeover) return [best.entry, 'takeover'];
    const copy = this.newEntry(owner);
    return [copy, forkPrefix(this.store, this.layout, best.entry, copy, input) ? 'copy' : 'new'];
  }

  private newEntry(owner: string): Session {
    return this.store.createPrefixEntry(owner, `${ENTRY_ID_PREFIX}${randomBytes(16).toString('hex')}`);
  }

  /** Keeps at most maxEntries (more only while all are in use): entries without KV go first, then the least recently used. */
  private bound(keep: Session): void {
    if (this.store.prefixEntryCount <= this.maxEntries) return;
    const idle = [...this.store.prefixEntriesInLruOrder()].filter((e) => e !== keep && !e.busy && !e.pinned && !this.claimed.has(e));
    for (const entry of [...idle.filter((e) => !e.hasKv), ...idle.filter((e) => e.hasKv)]) {
      if (this.store.prefixEntryCount <= this.maxEntries) return;
      this.drop(entry);
    }
  }

  private drop(entry: Session): void {
    if (this.store.delete(entry)) this.index.forget(entry.owner, entry.id);
  }

  private entryOf(record: PrefixRequestRecord): Session | undefined {
    const { owner, sessionId } = record.request;
    if (sessionId === undefined) return undefined;
    const session = this.store.get(owner, sessionId);
    return session && this.store.isPrefixEntry(session) ? session : undefined;
  }

  /** Engine observer: counts what a request on an entry reused. */
  requestStarted(record: PrefixRequestRecord): void {
    const entry = this.entryOf(record);
    if (!entry) return;
    this.lastPrompt.set(entry, record.fullInput.length);
    if (record.cachedTokens > 0) this.counts.hits++;
    else this.counts.misses++;
    this.counts.promptTokens += record.fullInput.length;
    this.counts.reusedTokens += record.cachedTokens;
  }

  /**
   * Engine observer: a request on an entry ended. Its transcript is indexed for the next request. An
   * entry is dropped instead when it is of no use to any later prompt: its request committed nothing
   * (made for a request that failed: the engine rolled it back to empty or to the copied prefix, which
   * its source still holds), it holds no plain prefix cache (no KV, a slid window), its transcript is
   * shorter than one index block (no prompt can find it), or another idle entry already holds its whole
   * transcript (identical requests, such as the same prompt sent by many clients, leave one entry, not
   * one each). An idle entry whose whole transcript this one holds is dropped for the same reason.
   */
  requestFinished(record: PrefixRequestRecord): void {
    const entry = this.entryOf(record);
    if (!entry || entry.busy || this.claimed.has(entry)) return;
    if (entry.version === 0 || !this.usable(entry) || entry.tokens.length < PREFIX_BLOCK) return this.drop(entry);
    // One pass over the transcript serves both the duplicate check and the index.
    const hashes = hashBlocks(entry.tokens);
    for (const id of this.index.candidatesOf(entry.owner, hashes)) {
      const other = this.store.get(entry.owner, id);
      if (!other || other === entry || !this.store.isPrefixEntry(other) || other.busy || other.pinned || this.claimed.has(other) || !this.usable(other)) continue;
      if (holdsAllOf(other, entry)) return this.drop(entry);
      if (holdsAllOf(entry, other)) this.drop(other);
    }
    this.index.add(entry.owner, entry.id, entry.tokens, hashes);
  }

  /** A hot, unwindowed cache: a plain prefix a later prompt can start from. */
  private usable(entry: Session): boolean {
    return entry.tier === 'hot' && entry.hasKv && entry.window.droppedTokens === 0;
  }

  /** Drops the idle entries last used `idleTtlMs` or more before `now` (as SESSION_IDLE_SECONDS does sessions). */
  expire(idleTtlMs: number, now: number): void {
    // Least recently used first: the first one still fresh ends the sweep.
    for (const entry of [...this.store.prefixEntriesInLruOrder()]) {
      if (now - entry.lastUsedAt < idleTtlMs) return;
      if (!entry.busy && !entry.pinned && !this.claimed.has(entry)) this.drop(entry);
    }
  }

  /** Runs `expire` every `intervalMs` (0 TTL: never); returns the function that stops it. */
  startSweeps(idleTtlMs: number, intervalMs = Math.max(1000, Math.min(60_000, idleTtlMs / 4))): () => void {
    if (idleTtlMs <= 0) return () => {};
    const timer = setInterval(() => this.expire(idleTtlMs, Date.now()), intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  counters(): PrefixCacheCounters {
    let bytes = 0;
    for (const entry of this.store.prefixEntriesInLruOrder()) bytes += entry.reservedBytes;
    return { ...this.counts, entries: this.store.prefixEntryCount, bytes };
  }
}

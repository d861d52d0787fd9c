import { randomBytes } from 'node:crypto';
import type { KvBudget } from './budget.ts';
import { Session, type Tier } from './session.ts';

/** A session moving between cache tiers (hot -> int8 -> disk -> evicted, or back up), as telemetry counts it. */
export interface TierMove {
  readonly from: Tier;
  readonly to: Tier;
}

/** What the store tells its listeners on every tier move, demotions to int8 as well as evictions. */
export interface SessionTierMove extends TierMove {
  readonly session: Session;
}

/** Moves an idle session one tier down; returns the tier it landed in and the bytes it now holds. */
export type Demoter = (session: Session) => { tier: Tier; bytes: number };

/** Looks a session up outside memory; resolves undefined when there is none. */
export type SessionFinder = (owner: string, id: string) => Promise<Session | undefined>;

/** 128 random bits, URL-safe. */
export function newSessionId(): string {
  return `sess_${randomBytes(16).toString('base64url')}`;
}

/**
 * Every session by owner and id, in least-recently-used order (a Map keeps insertion order; touching
 * re-inserts). Sessions of different owners never meet: each owner has its own id space.
 *
 * Prefix entries (the caches stateless requests leave behind, prefix-cache.ts) are kept apart from the
 * sessions clients name: found by id like any session, so the engine runs on them, but never listed,
 * counted against MAX_SESSIONS_PER_KEY, swept or snapshotted by the tiers (which see `inLruOrder`), and
 * the first to lose their KV under memory pressure, which they only ever drop.
 */
export class SessionStore {
  private readonly sessions = new Map<string, Session>();
  private readonly prefixEntries = new Map<string, Session>();
  private readonly listeners: Array<(event: SessionTierMove) => void> = [];
  private readonly roomListeners: Array<() => void> = [];
  private readonly commitListeners: Array<(session: Session) => void> = [];
  private demoter: Demoter = dropCache;
  private losslessDemoter: Demoter = dropCache;
  private finder: SessionFinder | null = null;
  private diskIds: (owner: string) => ReadonlySet<string> = () => new Set();
  private readonly probes = new Map<string, Promise<Session | undefined>>();

  constructor(
    readonly budget: KvBudget,
    private readonly now: () => number = Date.now,
  ) {}

  /** `lossless`: the move for sessions waiting for a request, which must come back exact (never int8). */
  setDemoter(demoter: Demoter, lossless: Demoter = dropCache): void {
    this.demoter = demoter;
    this.losslessDemoter = lossless;
  }

  onTierMove(listener: (event: SessionTierMove) => void): void {
    this.listeners.push(listener);
  }

  /** Called when KV bytes came free outside a request's own path (a snapshot write landed): waiting admissions retry. */
  onRoomFreed(listener: () => void): void {
    this.roomListeners.push(listener);
  }

  roomFreed(): void {
    for (const listener of this.roomListeners) listener();
  }

  /** Called when a turn of a session is durable in the shared store (a fleet's commit). */
  onTurnCommitted(listener: (session: Session) => void): void {
    this.commitListeners.push(listener);
  }

  turnCommitted(session: Session): void {
    for (const listener of this.commitListeners) listener(session);
  }

  /** Sessions clients named (prefix entries are not counted). */
  get size(): number {
    return this.sessions.size;
  }

  get(owner: string, id: string): Session | undefined {
    const key = storeKey(owner, id);
    return this.sessions.get(key) ?? this.prefixEntries.get(key);
  }

  /** A session in memory or, when a lower tier keeps snapshots, one found on disk (loaded lazily). */
  async find(owner: string, id: string): Promise<Session | undefined> {
    const inMemory = this.get(owner, id);
    if (inMemory || !this.finder) return inMemory;
    const key = storeKey(owner, id);
    let probe = this.probes.get(key);
    if (!probe) {
      probe = this.finder(owner, id).finally(() => this.probes.delete(key));
      this.probes.set(key, probe);
    }
    const found = await probe;
    // Another request may have created it while the probe ran.
    const raced = this.get(owner, id);
    if (raced || !found) return raced;
    this.sessions.set(key, found);
    return found;
  }

  /** Where `find` looks for sessions not in memory (the snapshot directory). */
  setFinder(finder: SessionFinder): void {
    this.finder = finder;
  }

  /** Where the ids of an owner's sessions on disk come from (the snapshot index). */
  setDiskIds(diskIds: (owner: string) => ReadonlySet<string>): void {
    this.diskIds = diskIds;
  }

  /** Sessions `owner` holds, in memory or only on disk (each counted once): what MAX_SESSIONS_PER_KEY limits. */
  countOwned(owner: string): number {
    let count = 0;
    for (const session of this.sessions.values()) if (session.owner === owner) count++;
    for (const id of this.diskIds(owner)) if (!this.sessions.has(storeKey(owner, id))) count++;
    return count;
  }

  create(owner: string, id = newSessionId(), ephemeral = false): Session {
    const session = new Session(id, owner, this.now(), ephemeral);
    if (!ephemeral) {
      const key = storeKey(owner, id);
      if (this.sessions.has(key)) throw new Error(`session ${id} exists`);
      this.sessions.set(key, session);
    }
    return session;
  }

  /** An anonymous session holding a stateless request's cache (prefix-cache.ts); ids never collide with a client's. */
  createPrefixEntry(owner: string, id: string): Session {
    const key = storeKey(owner, id);
    if (this.sessions.has(key) || this.prefixEntries.has(key)) throw new Error(`session ${id} exists`);
    const session = new Session(id, owner, this.now());
    this.prefixEntries.set(key, session);
    return session;
  }

  isPrefixEntry(session: Session): boolean {
    return this.prefixEntries.get(storeKey(session.owner, session.id)) === session;
  }

  /** Prefix entries, least recently used first. */
  *prefixEntriesInLruOrder(): IterableIterator<Session> {
    yield* this.prefixEntries.values();
  }

  get prefixEntryCount(): number {
    return this.prefixEntries.size;
  }

  /** Marks the session busy; a session already running a request is refused. */
  acquire(session: Session): boolean {
    if (session.busy) return false;
    session.busy = true;
    this.touch(session);
    return true;
  }

  release(session: Session): void {
    session.busy = false;
    this.touch(session);
  }

  touch(session: Session): void {
    session.lastUsedAt = this.now();
    if (session.ephemeral) return;
    const key = storeKey(session.owner, session.id);
    if (this.sessions.delete(key)) this.sessions.set(key, session);
    else if (this.prefixEntries.delete(key)) this.prefixEntries.set(key, session);
  }

  /** Deletes a session and frees its memory. A busy session is refused. */
  delete(session: Session): boolean {
    if (session.busy) return false;
    this.budget.resize(session, 0);
    session.toEvicted();
    const key = storeKey(session.owner, session.id);
    if (this.sessions.get(key) === session) this.sessions.delete(key);
    if (this.prefixEntries.get(key) === session) this.prefixEntries.delete(key);
    return true;
  }

  /** Least recently used first; named sessions only. */
  *inLruOrder(): IterableIterator<Session> {
    yield* this.sessions.values();
  }

  list(owner: string): Session[] {
    return [...this.sessions.values()].filter((s) => s.owner === owner);
  }

  /**
   * Every session `owner` holds, in memory or only on disk: those on disk are loaded as `find` loads
   * them (an expired file is removed, not listed), so a listing shows exactly what a GET by id finds
   * and what MAX_SESSIONS_PER_KEY counts.
   */
  async listAll(owner: string): Promise<Session[]> {
    for (const id of [...this.diskIds(owner)]) if (!this.sessions.has(storeKey(owner, id))) await this.find(owner, id);
    return this.list(owner);
  }

  /**
   * Grows (or shrinks) a session's reservation to `bytes`, demoting idle sessions least recently used
   * first until it fits. Returns false, having demoted nothing more than needed, when it cannot fit.
   */
  reserve(session: Session, bytes: number): boolean {
    // Demoting every idle session frees at most what they hold; if even that is not enough, keep them warm.
    let freeable = 0;
    for (const candidate of this.all()) {
      if (!candidate.pinned && candidate !== session) freeable += candidate.reservedBytes;
    }
    if (this.budget.reservedBytes - freeable - session.reservedBytes + bytes > this.budget.capacityBytes) return false;
    while (!this.budget.resize(session, bytes)) {
      // Snapshot writes under way will free enough: wait for them (roomFreed) rather than demote more.
      if (this.budget.freeBytes + this.bytesBeingWritten(session) >= bytes - session.reservedBytes) return false;
      if (!this.demoteOne(session)) return false;
    }
    return true;
  }

  /** Whether a snapshot write is under way whose landing will free memory. */
  writingSnapshots(): boolean {
    for (const candidate of this.sessions.values()) if (candidate.snapshotPending && !candidate.pinned) return true;
    return false;
  }

  /** Bytes of sessions whose snapshot is being written: counted in the budget until their file lands. */
  private bytesBeingWritten(except: Session): number {
    let bytes = 0;
    for (const candidate of this.sessions.values()) {
      if (candidate.snapshotPending && !candidate.pinned && candidate !== except) bytes += candidate.reservedBytes;
    }
    return bytes;
  }

  /** Whether `bytes` could ever be reserved for one session if every idle session were evicted. */
  couldEverFit(bytes: number): boolean {
    return bytes <= this.budget.capacityBytes;
  }

  /**
   * Demotes the least recently used idle session holding memory; false if there is none. Sessions with
   * a request waiting (busy, not yet pinned) are passed over; only when nothing else holds memory is one
   * of them moved, and then without loss (a native snapshot or its transcript, never int8), so the
   * queue head is never stuck behind the requests waiting after it and no waiting turn comes back inexact.
   * Prefix entries go before sessions in either pass, and only drop their KV (their transcript stays,
   * which is lossless for a request waiting on one): a stateless request's leftover is worth less than
   * any session a client keeps, and is never written to int8 or disk.
   */
  demoteOne(except?: Session): boolean {
    const movable = (candidate: Session, evenWaiting: boolean) =>
      !candidate.pinned && !candidate.snapshotPending && (evenWaiting || !candidate.busy) && candidate !== except && candidate.reservedBytes > 0;
    for (const evenWaiting of [false, true]) {
      for (const candidate of this.prefixEntries.values()) {
        if (!movable(candidate, evenWaiting)) continue;
        this.demote(candidate, dropCache);
        return true;
      }
      for (const candidate of this.sessions.values()) {
        if (!movable(candidate, evenWaiting)) continue;
        this.demote(candidate, evenWaiting ? this.losslessDemoter : this.demoter);
        return true;
      }
    }
    return false;
  }

  /** Moves one session down (with the installed demoter, or `move`), re-accounts it and tells listeners. */
  demote(session: Session, move: Demoter = this.demoter): void {
    const from = session.tier;
    const { bytes } = move(session);
    this.settle(session, from, bytes);
  }

  /**
   * Re-accounts a session that left tier `from` (at once, or when its snapshot write landed) to hold
   * `bytes`, and tells listeners of the move; a demotion still under way (same tier) tells nobody.
   */
  settle(session: Session, from: Tier, bytes: number): void {
    this.budget.resize(session, bytes);
    if (session.tier === from) return;
    for (const listener of this.listeners) listener({ session, from, to: session.tier });
  }

  private *all(): IterableIterator<Session> {
    yield* this.sessions.values();
    yield* this.prefixEntries.values();
  }
}

function storeKey(owner: string, id: string): string {
  return `${owner}\u0000${id}`;
}

/**
 * The base policy with no lower tiers: forget the KV, keep the transcript (recomputed on demand). The
 * window state stays: it says which tokens the recomputed cache must hold.
 */
export function dropCache(session: Session): { tier: Tier; bytes: number } {
  session.toEvicted();
  return { tier: 'evicted', bytes: 0 };
}

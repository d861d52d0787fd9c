/**
 * Where sessions live beyond one process. Two implementations of one interface:
 *
 * - `EmbeddedSessions` (the default): this process is the only holder of its sessions (plus
 *   SNAPSHOT_DIR, handled by the tiers), so there is nothing to load, every lease is granted and every
 *   commit succeeds. One machine needs nothing else.
 * - `RedisSessions` (SESSION_STORE_URL=redis://...): each session's transcript, owner, window state,
 *   version and TTL live in Redis, so any replica of a fleet can serve any turn. A turn takes a lease
 *   (SET NX PX, renewed while it runs) and commits with a compare-and-set on the version (a Lua
 *   script): of two replicas racing on one session exactly one commits, and a replica that dies
 *   mid-turn leaves the session at its last committed turn (its lease simply expires).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { WindowState } from './session.ts';

/** What a replica needs to take over a session it does not hold. */
export interface SessionRecord {
  owner: string;
  id: string;
  tokens: number[];
  window: WindowState;
  /** Committed turns; a commit moves it from `expected` to `expected + 1`. */
  version: number;
  createdAt: number;
  lastUsedAt: number;
  requests: number;
}

/** The right to commit one turn of one session. */
export interface SessionLease {
  readonly owner: string;
  readonly id: string;
  readonly token: string;
}

/** The shared store cannot be reached: the turn is refused rather than committed only locally. */
export class SessionStoreUnavailableError extends Error {
  override name = 'SessionStoreUnavailableError';
}

export type CommitResult = 'committed' | 'conflict';

export interface SharedSessions {
  /** false for the embedded store: this process is the source of truth. */
  readonly shared: boolean;
  /** Resolves once the store answers; rejects with a clear message when it cannot be reached. */
  connect(): Promise<void>;
  load(owner: string, id: string): Promise<SessionRecord | null>;
  /** null: another turn holds the session (409 session_busy). */
  acquire(owner: string, id: string): Promise<SessionLease | null>;
  /** Writes the turn's result if the stored version is still `expectedVersion` and the lease still ours. */
  commit(lease: SessionLease, expectedVersion: number, record: SessionRecord): Promise<CommitResult>;
  /** Writes a new empty session unless one exists; false when it exists. */
  createIfAbsent(record: SessionRecord): Promise<boolean>;
  release(lease: SessionLease): Promise<void>;
  delete(owner: string, id: string): Promise<void>;
  close(): Promise<void>;
}

/** The single-process default: nothing is shared, so nothing can conflict. */
export class EmbeddedSessions implements SharedSessions {
  readonly shared = false;
  async connect(): Promise<void> {}
  async load(): Promise<SessionRecord | null> {
    return null;
  }
  async acquire(owner: string, id: string): Promise<SessionLease> {
    return { owner, id, token: '' };
  }
  async commit(): Promise<CommitResult> {
    return 'committed';
  }
  async createIfAbsent(): Promise<boolean> {
    return true;
  }
  async release(): Promise<void> {}
  async delete(): Promise<void> {}
  async close(): Promise<void> {}
}

/** The Redis key prefix of a session: its owner (an API key) only ever appears hashed. */
export function sessionKey(owner: string, id: string): string {
  const ownerHash = createHash('sha256').update(owner).digest('hex').slice(0, 32);
  return `warmkv:session:${ownerHash}:${id}`;
}

export function encodeTokens(tokens: readonly number[]): string {
  return Buffer.from(Int32Array.from(tokens).buffer).toString('base64');
}

export function decodeTokens(text: string): number[] {
  const bytes = Buffer.from(text, 'base64');
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return Array.from(new Int32Array(copy.buffer, 0, copy.byteLength >> 2));
}

export function newLeaseToken(): string {
  return randomBytes(12).toString('base64url');
}

/** The record as Redis hash fields (all strings). */
export function recordFields(record: SessionRecord): string[] {
  return [
    'owner', createHash('sha256').update(record.owner).digest('hex'),
    'tokens', encodeTokens(record.tokens),
    'window', JSON.stringify(record.window),
    'version', String(record.version),
    'createdAt', String(record.createdAt),
    'lastUsedAt', String(record.lastUsedAt),
    'requests', String(record.requests),
  ];
}

export function recordFromFields(owner: string, id: string, fields: Record<string, string>): SessionRecord | null {
  if (fields.version === undefined || fields.tokens === undefined) return null;
  // A hash of another owner under this owner's key can only be a hash collision or tampering: not ours.
  if (fields.owner !== createHash('sha256').update(owner).digest('hex')) return null;
  return {
    owner,
    id,
    tokens: decodeTokens(fields.tokens),
    window: JSON.parse(fields.window ?? '{"droppedTokens":0,"lastDropAt":0,"dropEvents":0}') as WindowState,
    version: Number(fields.version),
    createdAt: Number(fields.createdAt),
    lastUsedAt: Number(fields.lastUsedAt),
    requests: Number(fields.requests),
  };
}

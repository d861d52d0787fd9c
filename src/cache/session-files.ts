/**
 * The disk tier: one snapshot file per session in SNAPSHOT_DIR, found by a hash of owner and id. The
 * folder is listed once at start (snapshot-index.ts); after that files are found by name and counted,
 * expired and capped from the in-memory index. Files are written by the background writer
 * (snapshot-writer.ts), never on the admission path:
 *
 * - A demotion to disk queues the session's snapshot and leaves the session where it is: its KV stays
 *   in memory, and counted in the KV budget, until the file has landed; only then does the session move
 *   to `disk` and its bytes come free (the store is told, so waiting admissions retry).
 * - While the write is pending the session is served from memory: any use of it (a restore, an
 *   admission's supersede, a delete) cancels the write, and a write whose session changed is discarded
 *   before its rename, so no half-written or stale file is ever loaded.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../lib/logger.ts';
import { Session, type Tier } from './session.ts';
import type { SessionStore } from './session-store.ts';
import { decodeSnapshotHead, decodeSnapshotPayload, sessionSnapshotParts, SnapshotFormatError, type DecodedHead, type SnapshotHeader, type SnapshotIdentity } from './snapshot.ts';
import { readHead, scanSnapshotDir, snapshotFileName, SnapshotIndex, type SnapshotEntry } from './snapshot-index.ts';
import { SnapshotWriter, type SnapshotWriterOptions, type WriteOutcome } from './snapshot-writer.ts';

export interface SessionFilesOptions extends SnapshotIdentity {
  /** null: no disk tier. */
  snapshotDir: string | null;
  logger: Logger;
  /** Files whose session was last used this long ago are removed; 0 = never. */
  idleTtlMs?: number;
  /** Most bytes the folder may hold; least recently used files go first; 0 = no cap. */
  maxSnapshotBytes?: number;
  /** The background writer's queue bound (SNAPSHOT_WRITE_QUEUE, default 8) and test hooks. */
  writer?: Partial<SnapshotWriterOptions>;
  now?: () => number;
}

/** No KV anywhere: the session is recomputed from its transcript; its bytes come free. */
export function toTranscriptOnly(store: SessionStore, session: Session): void {
  session.toEvicted();
  store.budget.resize(session, 0);
}

export class SessionFiles {
  private dir: string | null;
  private index = new SnapshotIndex();
  readonly writer: SnapshotWriter;
  private readonly now: () => number;

  constructor(
    private readonly store: SessionStore,
    private readonly options: SessionFilesOptions,
  ) {
    this.dir = options.snapshotDir;
    this.now = options.now ?? Date.now;
    this.writer = new SnapshotWriter({ maxQueue: 8, ...options.writer });
  }

  get enabled(): boolean {
    return this.dir !== null;
  }

  get files(): { count: number; bytes: number } {
    return { count: this.index.size, bytes: this.index.totalBytes };
  }

  ids(owner: string): ReadonlySet<string> {
    return this.index.ids(owner);
  }

  pathOf(owner: string, id: string): string {
    return join(this.dir!, snapshotFileName(owner, id));
  }

  /** Checks that the folder is usable (if not, warns and runs memory-only), lists it, expires and caps it. */
  async init(): Promise<void> {
    const dir = this.dir;
    if (!dir) return;
    try {
      await mkdir(dir, { recursive: true });
      const probe = join(dir, `.warmkv-write-test-${process.pid}-${randomBytes(4).toString('hex')}`);
      await writeFile(probe, 'ok');
      await unlink(probe);
    } catch (error) {
      this.options.logger.warn({ snapshotDir: dir, err: (error as Error).message }, 'SNAPSHOT_DIR is not writable: running memory-only');
      this.dir = null;
      return;
    }
    const started = performance.now();
    const { index, removed } = await scanSnapshotDir(dir, this.options.logger);
    this.index = index;
    const expired = await this.expire();
    const trimmed = await this.trim();
    const scanMs = Math.round(performance.now() - started);
    this.options.logger.info({ snapshotDir: dir, files: index.size, bytes: index.totalBytes, removed, expired, trimmed, scanMs }, 'session snapshots enabled');
  }

  /**
   * Queues the snapshot of an idle hot or int8 session; false (nothing changed) when the writer's queue
   * is full. When it lands the session moves to `disk` and its bytes are freed; until then it stays in
   * its tier, counted in the budget and served from memory.
   */
  beginDemotion(session: Session): boolean {
    if (!this.dir) return false;
    const from = session.tier;
    const path = this.pathOf(session.owner, session.id);
    const queued = this.writer.enqueue(keyOf(session), {
      path,
      ...sessionSnapshotParts(session, this.options),
      wanted: () => this.store.get(session.owner, session.id) === session,
      settled: (outcome, cancelled) => this.demotionLanded(session, from, path, outcome, cancelled),
    });
    if (queued) session.snapshotPending = true;
    return queued;
  }

  private demotionLanded(session: Session, from: Tier, path: string, outcome: WriteOutcome, cancelled: boolean): void {
    session.snapshotPending = false;
    const kept = this.store.get(session.owner, session.id) === session;
    const untouched = !cancelled && kept && session.tier === from;
    if (outcome.kind === 'written' && !kept) {
      // Deleted while the file was being renamed: nothing may bring it back.
      void unlink(path).catch(() => {});
    } else if (outcome.kind === 'written') {
      // Recorded even when the session was used meanwhile: its admission's supersede removes the file.
      this.recordFile(session, path, outcome.bytes);
      if (untouched) {
        session.toDisk();
        this.store.settle(session, from, 0);
      }
      void this.trim();
    } else if (outcome.kind === 'failed') {
      this.options.logger.warn({ sessionId: session.id, err: outcome.error.message }, 'snapshot write failed: evicting to the transcript');
      if (untouched) {
        session.toEvicted();
        this.store.settle(session, from, 0);
      }
    }
    this.store.roomFreed();
  }

  /** Stops a pending write of `session` (it is being used); resolves once nothing of it can land any more. */
  cancelWrite(session: Session): Promise<void> {
    return this.writer.cancel(keyOf(session));
  }

  /** Reads a disk session's KV, checked against the session; throws SnapshotFormatError (or an I/O error) when unusable. */
  async readPayload(session: Session) {
    const data = await readFile(this.pathOf(session.owner, session.id));
    const head = decodeSnapshotHead(data);
    this.checkIdentity(head.header, session.owner, session.id);
    if ((head.header.sessionVersion ?? 0) !== session.snapshotVersion) {
      throw new SnapshotFormatError(`snapshot holds version ${head.header.sessionVersion ?? 0}, the session is at ${session.snapshotVersion}`);
    }
    return decodeSnapshotPayload(data, head, this.options.layout);
  }

  /** A session on disk but not in memory (e.g. after a restart), with its transcript; its payload stays on disk. */
  async find(owner: string, id: string): Promise<Session | undefined> {
    if (!this.dir) return undefined;
    const path = this.pathOf(owner, id);
    const known = this.index.get(path);
    const ttl = this.options.idleTtlMs ?? 0;
    const expired = (entry: SnapshotEntry) => ttl > 0 && this.now() - entry.lastUsedAt >= ttl;
    if (known && expired(known)) {
      await this.removeEntry(known);
      return undefined;
    }
    // Not in the index: another server sharing the folder may have written it since the start, so look.
    let head: DecodedHead;
    try {
      head = await readHead(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') this.index.delete(path);
      else this.options.logger.warn({ sessionId: id, err: (error as Error).message }, 'snapshot skipped');
      return undefined;
    }
    const { header, tokens } = head;
    try {
      this.checkIdentity(header, owner, id);
      if (header.tokenizerFingerprint !== this.options.tokenizerFingerprint) throw new SnapshotFormatError('snapshot from a model with another tokenizer');
    } catch (error) {
      this.options.logger.warn({ sessionId: id, err: (error as Error).message }, 'snapshot skipped');
      return undefined;
    }
    if (!known) {
      const bytes = (await stat(path).catch(() => ({ size: 0 }))).size;
      const entry = { owner, id, path, version: header.sessionVersion ?? 0, lastUsedAt: header.lastUsedAt, bytes };
      this.index.set(entry);
      if (expired(entry)) {
        await this.removeEntry(entry);
        return undefined;
      }
    }
    const session = new Session(id, owner, header.createdAt);
    session.lastUsedAt = header.lastUsedAt;
    session.requests = header.requests;
    session.version = header.sessionVersion ?? 0;
    session.snapshotVersion = session.version;
    session.tokens = tokens;
    session.window = { ...header.window };
    if (header.modelFingerprint !== this.options.modelFingerprint) {
      this.options.logger.warn({ sessionId: id }, 'snapshot from another model: the session will be recomputed from its transcript');
      toTranscriptOnly(this.store, session);
    } else if (header.payloadKind === 'none') {
      toTranscriptOnly(this.store, session);
    } else {
      session.toDisk(header.cachedLength);
    }
    return session;
  }

  /**
   * For shutdown: lets pending demotions land, then writes every session that holds KV in memory (hot or
   * int8) or only a transcript, through the same writer, one at a time. The sessions stay where they are.
   */
  async flushAll(): Promise<{ written: number; failed: number }> {
    let written = 0;
    let failed = 0;
    if (!this.dir) return { written, failed };
    await this.writer.flush();
    for (const session of [...this.store.inLruOrder()]) {
      if (session.tier === 'disk') continue;
      const path = this.pathOf(session.owner, session.id);
      const outcome = await new Promise<WriteOutcome>((resolve) => {
        const queued = this.writer.enqueue(keyOf(session), {
          path,
          ...sessionSnapshotParts(session, this.options),
          settled: (result) => {
            if (result.kind === 'written') this.recordFile(session, path, result.bytes);
            resolve(result);
          },
        });
        if (!queued) resolve({ kind: 'failed', error: new Error('the snapshot writer refused the write') });
      });
      if (outcome.kind === 'written') written++;
      else {
        failed++;
        if (outcome.kind === 'failed') this.options.logger.warn({ sessionId: session.id, err: outcome.error.message }, 'snapshot write failed');
      }
    }
    await this.trim();
    return { written, failed };
  }

  /** Removes a deleted session's snapshot, after any pending write of it has stopped. */
  async forget(owner: string, id: string): Promise<void> {
    if (!this.dir) return;
    await this.writer.cancel(storeKeyOf(owner, id));
    const path = this.pathOf(owner, id);
    this.index.delete(path);
    await unlink(path).catch(() => {});
  }

  /**
   * Before a request changes a session (the engine awaits it at admission): stops a pending write of it
   * and removes its snapshot file, whatever its version, so no crash can bring back a transcript older
   * than this request's reply. Null when there is nothing to do. Rejects when the unlink fails.
   */
  supersede(session: Session): Promise<void> | null {
    if (!this.dir || session.ephemeral) return null;
    const path = this.pathOf(session.owner, session.id);
    const pending = this.writer.has(keyOf(session));
    if (!pending && session.snapshotVersion === null && !this.index.get(path)) return null;
    return (async () => {
      if (pending) await this.cancelWrite(session);
      try {
        await unlink(path);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
      this.index.delete(path);
      this.fileGone(session);
    })();
  }

  /** Removes files of sessions not in memory that were last used `ttlMs` ago (in-memory ones expire with their session). */
  async expire(ttlMs = this.options.idleTtlMs ?? 0, time = this.now()): Promise<number> {
    if (ttlMs <= 0) return 0;
    let expired = 0;
    for (const entry of this.index.oldestFirst()) {
      if (time - entry.lastUsedAt < ttlMs) break;
      if (this.store.get(entry.owner, entry.id)) continue;
      await this.removeEntry(entry);
      expired++;
    }
    return expired;
  }

  /** Removes least recently used files until the folder is under its byte cap; a busy session's file stays. */
  private async trim(): Promise<number> {
    const victims = this.index.overCap(this.options.maxSnapshotBytes ?? 0, (entry) => Boolean(this.store.get(entry.owner, entry.id)?.busy));
    // Out of the index together, before any unlink is awaited, so the cap holds for every reader meanwhile.
    for (const entry of victims) this.index.delete(entry.path);
    await Promise.all(victims.map((entry) => this.removeEntry(entry)));
    return victims.length;
  }

  private async removeEntry(entry: SnapshotEntry): Promise<void> {
    this.index.delete(entry.path);
    await unlink(entry.path).catch(() => {});
    // A loaded session that relied on the file keeps its transcript.
    const session = this.store.get(entry.owner, entry.id);
    if (session) this.fileGone(session);
    this.options.logger.debug({ sessionId: entry.id, bytes: entry.bytes }, 'snapshot file removed');
  }

  private fileGone(session: Session): void {
    session.snapshotVersion = null;
    if (session.tier === 'disk') toTranscriptOnly(this.store, session);
  }

  private recordFile(session: Session, path: string, bytes: number): void {
    this.index.set({ owner: session.owner, id: session.id, path, version: session.version, lastUsedAt: session.lastUsedAt, bytes });
    session.snapshotVersion = session.version;
  }

  private checkIdentity(header: SnapshotHeader, owner: string, id: string): void {
    if (header.owner !== owner || header.sessionId !== id) throw new SnapshotFormatError('snapshot belongs to another session');
  }
}

function storeKeyOf(owner: string, id: string): string {
  return `${owner}\u0000${id}`;
}

function keyOf(session: Session): string {
  return storeKeyOf(session.owner, session.id);
}

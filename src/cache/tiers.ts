/**
 * Tier moves for idle sessions: hot (model dtype) -> int8 (quantized in memory) -> disk (a snapshot
 * file) -> evicted (transcript only). The session store calls `demote` when it needs room; the
 * engine calls `restore` before running a session that is not hot; `find` brings back sessions that
 * only exist on disk (after a restart). Snapshot files are written to a temporary name and renamed.
 * The folder is listed once at start (snapshot-index.ts); after that files are found by name and
 * counted, expired and capped from the in-memory index.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../lib/logger.ts';
import type { KvLayout } from '../model/types.ts';
import type { KvBudget } from './budget.ts';
import { dequantizeKv, int8Bytes as int8BytesExact, int8FixedBytes, int8BytesPerToken, quantizeKv, type KeyScaleMode } from './int8.ts';
import { Session, type Tier } from './session.ts';
import type { SessionStore } from './session-store.ts';
import { decodeSnapshotHead, decodeSnapshotPayload, encodeSession, SnapshotFormatError, type SnapshotHeader } from './snapshot.ts';
import { readHead, scanSnapshotDir, snapshotFileName, SnapshotIndex, type SnapshotEntry } from './snapshot-index.ts';

export interface TierOptions {
  layout: KvLayout;
  /** false: idle sessions skip the (lossy) int8 tier and go straight to disk or eviction. */
  int8: boolean;
  keyMode: KeyScaleMode;
  /** null: no disk tier (int8 sessions under pressure are evicted to their transcript). */
  snapshotDir: string | null;
  modelFingerprint: string;
  tokenizerFingerprint: string;
  logger: Logger;
  /** Snapshot files whose session was last used this long ago are removed (SESSION_IDLE_SECONDS); 0 = never. */
  idleTtlMs?: number;
  /** Most bytes the snapshot folder may hold (SNAPSHOT_MAX_BYTES); least recently used files go first; 0 = no cap. */
  maxSnapshotBytes?: number;
  now?: () => number;
}

export interface TierCounts {
  sessions: Record<Tier, number>;
  /** Reserved bytes (whole blocks) per tier. */
  bytes: Record<Tier, number>;
  /** Bytes the cached tokens of idle and running sessions actually occupy (reserved minus block slack). */
  usedBytes: number;
}

export class TierManager {
  private snapshotDir: string | null;
  private index = new SnapshotIndex();
  private readonly now: () => number;

  constructor(
    private readonly store: SessionStore,
    private readonly options: TierOptions,
  ) {
    this.snapshotDir = options.snapshotDir;
    this.now = options.now ?? Date.now;
    store.setDemoter((session) => this.demote(session), (session) => this.demote(session, false));
    store.setFinder((owner, id) => this.find(owner, id));
    store.setDiskIds((owner) => this.index.ids(owner));
  }

  /** Snapshot files and their bytes. */
  get files(): { count: number; bytes: number } {
    return { count: this.index.size, bytes: this.index.totalBytes };
  }

  get budget(): KvBudget {
    return this.store.budget;
  }

  get snapshotsEnabled(): boolean {
    return this.snapshotDir !== null;
  }

  /** Checks that the snapshot directory is usable; if not, warns and runs memory-only. */
  async init(): Promise<void> {
    const dir = this.snapshotDir;
    if (!dir) return;
    try {
      await mkdir(dir, { recursive: true });
      const probe = join(dir, `.warmkv-write-test-${process.pid}-${randomBytes(4).toString('hex')}`);
      await writeFile(probe, 'ok');
      await unlink(probe);
    } catch (error) {
      this.options.logger.warn({ snapshotDir: dir, err: (error as Error).message }, 'SNAPSHOT_DIR is not writable: running memory-only');
      this.snapshotDir = null;
      return;
    }
    const started = performance.now();
    const { index, removed } = await scanSnapshotDir(dir, this.options.logger);
    this.index = index;
    const expired = await this.expireFiles();
    const trimmed = await this.trim();
    const scanMs = Math.round(performance.now() - started);
    this.options.logger.info({ snapshotDir: dir, files: index.size, bytes: index.totalBytes, removed, expired, trimmed, scanMs }, 'session snapshots enabled');
  }

  hotBytes(length: number): number {
    return this.budget.bytesFor(length, this.options.layout.bytesPerToken);
  }

  int8Bytes(length: number): number {
    const { layout, keyMode } = this.options;
    return this.budget.blocksFor(length) * this.budget.blockTokens * int8BytesPerToken(layout, keyMode) + int8FixedBytes(layout, keyMode);
  }

  /** One tier down for an idle session (`int8` false: skip the lossy tier); where it landed and the bytes it now holds. */
  demote(session: Session, int8 = this.options.int8): { tier: Tier; bytes: number } {
    if (session.tier === 'hot' && session.kv && int8) return this.quantize(session);
    if ((session.tier === 'int8' || session.tier === 'hot') && this.snapshotDir) {
      try {
        this.writeSync(session);
        session.toDisk();
        // The cap may take this very file (the folder holds only newer ones): then it is the transcript.
        this.trimSync();
        return { tier: session.tier, bytes: 0 };
      } catch (error) {
        this.options.logger.warn({ sessionId: session.id, err: (error as Error).message }, 'snapshot write failed: evicting to the transcript');
      }
    }
    session.toEvicted();
    return { tier: 'evicted', bytes: 0 };
  }

  private quantize(session: Session): { tier: Tier; bytes: number } {
    session.toInt8(quantizeKv(this.options.layout, session.kv!, this.options.keyMode));
    return { tier: 'int8', bytes: this.int8Bytes(session.cachedLength) };
  }

  /**
   * Housekeeping for idle sessions, run every `intervalMs`: hot sessions idle for `int8AfterMs` are
   * quantized (memory for others, before pressure forces it), and sessions idle for `idleTtlMs` are
   * deleted with their snapshot. 0 turns either off. Returns a function that stops it.
   */
  startSweeps(options: { int8AfterMs: number; idleTtlMs: number; intervalMs?: number; now?: () => number }): () => void {
    const now = options.now ?? Date.now;
    const sweep = () => {
      const time = now();
      for (const session of [...this.store.inLruOrder()]) {
        if (session.busy || session.pinned) continue;
        const idle = time - session.lastUsedAt;
        if (options.idleTtlMs > 0 && idle >= options.idleTtlMs) {
          this.store.delete(session);
          void this.forget(session.owner, session.id);
          this.options.logger.debug({ sessionId: session.id, idleMs: idle }, 'idle session expired');
        } else if (options.int8AfterMs > 0 && this.options.int8 && idle >= options.int8AfterMs && session.tier === 'hot' && session.kv) {
          this.store.demote(session, () => this.quantize(session));
        }
      }
      if (options.idleTtlMs > 0) void this.expireFiles(options.idleTtlMs, time);
    };
    const intervals = [options.int8AfterMs, options.idleTtlMs].filter((ms) => ms > 0);
    if (intervals.length === 0) return () => {};
    const interval = options.intervalMs ?? Math.max(1000, Math.min(60_000, Math.min(...intervals) / 4));
    const timer = setInterval(sweep, interval);
    timer.unref();
    return () => clearInterval(timer);
  }

  /**
   * Brings a session's KV back to the hot tier if the budget allows (demoting others as needed).
   * A snapshot that cannot be read leaves the session evicted: it is recomputed from its transcript.
   */
  async restore(session: Session): Promise<void> {
    if (session.tier === 'int8' && session.int8) {
      if (!this.store.reserve(session, Math.max(session.reservedBytes, this.hotBytes(session.cachedLength)))) return;
      session.toHot(dequantizeKv(this.options.layout, session.int8), session.cachedLength);
      return;
    }
    if (session.tier !== 'disk') return;
    const path = this.pathOf(session.owner, session.id);
    try {
      const data = await readFile(path);
      const head = decodeSnapshotHead(data);
      this.checkIdentity(head.header, session.owner, session.id);
      if ((head.header.sessionVersion ?? 0) !== session.snapshotVersion) {
        throw new SnapshotFormatError(`snapshot holds version ${head.header.sessionVersion ?? 0}, the session is at ${session.snapshotVersion}`);
      }
      const { kv, int8 } = decodeSnapshotPayload(data, head, this.options.layout);
      const restored = kv ?? (int8 ? dequantizeKv(this.options.layout, int8) : null);
      if (session.tier !== 'disk') return;
      if (!restored) {
        this.toTranscriptOnly(session);
        return;
      }
      if (!this.store.reserve(session, Math.max(session.reservedBytes, this.hotBytes(restored.length)))) return;
      // The file stays until the request is admitted: `supersede` removes it before the transcript changes.
      session.toHot(restored, restored.length);
    } catch (error) {
      this.options.logger.warn({ sessionId: session.id, err: (error as Error).message }, 'snapshot unreadable: recomputing the session from its transcript');
      this.toTranscriptOnly(session);
    }
  }

  /** A session on disk but not in memory (e.g. after a restart), with its transcript; payload stays on disk. */
  async find(owner: string, id: string): Promise<Session | undefined> {
    if (!this.snapshotDir) return undefined;
    const path = this.pathOf(owner, id);
    const known = this.index.get(path);
    const ttl = this.options.idleTtlMs ?? 0;
    const expired = (entry: SnapshotEntry) => ttl > 0 && this.now() - entry.lastUsedAt >= ttl;
    if (known && expired(known)) {
      await this.removeEntry(known);
      return undefined;
    }
    // Not in the index: another server sharing the folder may have written it since the start, so look.
    let head;
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
      this.toTranscriptOnly(session);
    } else if (header.payloadKind === 'none') {
      this.toTranscriptOnly(session);
    } else {
      session.toDisk(header.cachedLength);
    }
    return session;
  }

  /** Writes every session that holds KV in memory (hot or int8) or only a transcript; for shutdown. */
  async flushAll(): Promise<{ written: number; failed: number }> {
    let written = 0;
    let failed = 0;
    if (!this.snapshotDir) return { written, failed };
    for (const session of [...this.store.inLruOrder()]) {
      if (session.tier === 'disk') continue;
      try {
        const path = this.pathOf(session.owner, session.id);
        const temp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
        const data = encodeSession(session, this.options);
        await writeFile(temp, data);
        await rename(temp, path);
        this.recordFile(session, path, data.length);
        written++;
      } catch (error) {
        failed++;
        this.options.logger.warn({ sessionId: session.id, err: (error as Error).message }, 'snapshot write failed');
      }
    }
    await this.trim();
    return { written, failed };
  }

  /** Removes a deleted session's snapshot. */
  async forget(owner: string, id: string): Promise<void> {
    if (!this.snapshotDir) return;
    const path = this.pathOf(owner, id);
    this.index.delete(path);
    await unlink(path).catch(() => {});
  }

  /**
   * Before a request changes a session (the engine awaits it at admission): removes its snapshot file,
   * whatever its version, so no crash can bring back a transcript older than this request's reply.
   * Null when there is no file. The unlink runs off the event loop; rejects when it fails.
   */
  supersede(session: Session): Promise<void> | null {
    if (!this.snapshotDir || session.ephemeral) return null;
    const path = this.pathOf(session.owner, session.id);
    if (session.snapshotVersion === null && !this.index.get(path)) return null;
    return (async () => {
      try {
        await unlink(path);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
      this.index.delete(path);
      this.fileGone(session);
    })();
  }

  /** Bytes a session's KV actually occupies in memory (reserved bytes include the unused rest of blocks). */
  usedBytes(session: Session): number {
    if (session.tier === 'hot') return session.cachedLength * this.options.layout.bytesPerToken;
    if (session.tier === 'int8') return int8BytesExact(this.options.layout, session.cachedLength, this.options.keyMode);
    return 0;
  }

  /** Budget blocks a session's cache holds in its in-memory tier. */
  blocks(session: Session): number {
    return session.tier === 'hot' || session.tier === 'int8' ? this.budget.blocksFor(session.cachedLength) : 0;
  }

  counts(): TierCounts {
    const sessions: Record<Tier, number> = { hot: 0, int8: 0, disk: 0, evicted: 0 };
    const bytes: Record<Tier, number> = { hot: 0, int8: 0, disk: 0, evicted: 0 };
    let usedBytes = 0;
    for (const session of this.store.inLruOrder()) {
      sessions[session.tier]++;
      bytes[session.tier] += session.reservedBytes;
      usedBytes += this.usedBytes(session);
    }
    return { sessions, bytes, usedBytes };
  }

  pathOf(owner: string, id: string): string {
    return join(this.snapshotDir!, snapshotFileName(owner, id));
  }

  /** Removes files of sessions not in memory that were last used `ttlMs` ago (in-memory ones expire with their session). */
  private async expireFiles(ttlMs = this.options.idleTtlMs ?? 0, time = this.now()): Promise<number> {
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

  /** Removes least recently used files until the folder is under its byte cap (async, for start and flush). */
  private async trim(): Promise<number> {
    const victims = this.overCap();
    for (const entry of victims) await this.removeEntry(entry);
    return victims.length;
  }

  /** The same inside a demotion, which is synchronous. */
  private trimSync(): void {
    for (const entry of this.overCap()) {
      this.index.delete(entry.path);
      rmSync(entry.path, { force: true });
      this.dropped(entry);
    }
  }

  /** The least recently used files whose removal brings the folder under the cap; a busy session's file stays. */
  private overCap(): SnapshotEntry[] {
    return this.index.overCap(this.options.maxSnapshotBytes ?? 0, (entry) => Boolean(this.store.get(entry.owner, entry.id)?.busy));
  }

  private async removeEntry(entry: SnapshotEntry): Promise<void> {
    this.index.delete(entry.path);
    await unlink(entry.path).catch(() => {});
    this.dropped(entry);
  }

  /** A file was removed by expiry or the cap: a loaded session that relied on it keeps its transcript. */
  private dropped(entry: SnapshotEntry): void {
    const session = this.store.get(entry.owner, entry.id);
    if (session) this.fileGone(session);
    this.options.logger.debug({ sessionId: entry.id, bytes: entry.bytes }, 'snapshot file removed');
  }

  private fileGone(session: Session): void {
    session.snapshotVersion = null;
    if (session.tier === 'disk') this.toTranscriptOnly(session);
  }

  private recordFile(session: Session, path: string, bytes: number): void {
    this.index.set({ owner: session.owner, id: session.id, path, version: session.version, lastUsedAt: session.lastUsedAt, bytes });
    session.snapshotVersion = session.version;
  }

  private checkIdentity(header: SnapshotHeader, owner: string, id: string): void {
    if (header.owner !== owner || header.sessionId !== id) throw new SnapshotFormatError('snapshot belongs to another session');
  }

  private toTranscriptOnly(session: Session): void {
    session.toEvicted();
    this.budget.resize(session, 0);
  }

  /** Demotion runs inside a reservation, which is synchronous: write with sync calls, then rename. */
  private writeSync(session: Session): void {
    const path = this.pathOf(session.owner, session.id);
    const temp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
    try {
      mkdirSync(this.snapshotDir!, { recursive: true });
      const data = encodeSession(session, this.options);
      writeFileSync(temp, data);
      renameSync(temp, path);
      this.recordFile(session, path, data.length);
    } catch (error) {
      try {
        unlinkSync(temp);
      } catch {
        // nothing was written
      }
      throw error;
    }
  }
}

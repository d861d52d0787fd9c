/**
 * Tier moves for idle sessions: hot (model dtype) -> int8 (quantized in memory) -> disk (a snapshot
 * file) -> evicted (transcript only). The session store calls `demote` when it needs room; the
 * engine calls `restore` before running a session that is not hot; `find` brings back sessions that
 * only exist on disk (after a restart). Snapshot files are written to a temporary name and renamed,
 * and looked up by name, never by scanning the directory, so a mounted bucket works.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { mkdir, open, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../lib/logger.ts';
import type { KvLayout } from '../model/types.ts';
import type { KvBudget } from './budget.ts';
import { dequantizeKv, int8Bytes as int8BytesExact, int8FixedBytes, int8BytesPerToken, quantizeKv, type KeyScaleMode } from './int8.ts';
import { Session, type Tier } from './session.ts';
import type { SessionStore } from './session-store.ts';
import { decodeSnapshotHead, decodeSnapshotPayload, encodeSnapshot, headLengthHint, SnapshotFormatError, type SnapshotHeader } from './snapshot.ts';

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

  constructor(
    private readonly store: SessionStore,
    private readonly options: TierOptions,
  ) {
    this.snapshotDir = options.snapshotDir;
    store.setDemoter((session) => this.demote(session));
    store.setFinder((owner, id) => this.find(owner, id));
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
      this.options.logger.info({ snapshotDir: dir }, 'session snapshots enabled');
    } catch (error) {
      this.options.logger.warn({ snapshotDir: dir, err: (error as Error).message }, 'SNAPSHOT_DIR is not writable: running memory-only');
      this.snapshotDir = null;
    }
  }

  hotBytes(length: number): number {
    return this.budget.bytesFor(length, this.options.layout.bytesPerToken);
  }

  int8Bytes(length: number): number {
    const { layout, keyMode } = this.options;
    return this.budget.blocksFor(length) * this.budget.blockTokens * int8BytesPerToken(layout, keyMode) + int8FixedBytes(layout, keyMode);
  }

  /** One tier down for an idle session; returns where it landed and the bytes it now holds. */
  demote(session: Session): { tier: Tier; bytes: number } {
    if (session.tier === 'hot' && session.kv && this.options.int8) return this.quantize(session);
    if ((session.tier === 'int8' || session.tier === 'hot') && this.snapshotDir) {
      try {
        this.writeSync(session);
        session.toDisk();
        return { tier: 'disk', bytes: 0 };
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
      const { kv, int8 } = decodeSnapshotPayload(data, head, this.options.layout);
      const restored = kv ?? (int8 ? dequantizeKv(this.options.layout, int8) : null);
      if (session.tier !== 'disk') return;
      if (!restored) {
        this.toTranscriptOnly(session);
        return;
      }
      if (!this.store.reserve(session, Math.max(session.reservedBytes, this.hotBytes(restored.length)))) return;
      session.toHot(restored, restored.length);
      // The file now lags the session: remove it so a crash cannot resurrect an older transcript.
      unlink(path).catch(() => {});
    } catch (error) {
      this.options.logger.warn({ sessionId: session.id, err: (error as Error).message }, 'snapshot unreadable: recomputing the session from its transcript');
      this.toTranscriptOnly(session);
    }
  }

  /** A session on disk but not in memory (e.g. after a restart), with its transcript; payload stays on disk. */
  async find(owner: string, id: string): Promise<Session | undefined> {
    if (!this.snapshotDir) return undefined;
    const path = this.pathOf(owner, id);
    let head;
    try {
      head = await readHead(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.options.logger.warn({ sessionId: id, err: (error as Error).message }, 'snapshot skipped');
      }
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
    const session = new Session(id, owner, header.createdAt);
    session.lastUsedAt = header.lastUsedAt;
    session.requests = header.requests;
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
        await writeFile(temp, this.encode(session));
        await rename(temp, path);
        written++;
      } catch (error) {
        failed++;
        this.options.logger.warn({ sessionId: session.id, err: (error as Error).message }, 'snapshot write failed');
      }
    }
    return { written, failed };
  }

  /** Removes a deleted session's snapshot. */
  async forget(owner: string, id: string): Promise<void> {
    if (!this.snapshotDir) return;
    await unlink(this.pathOf(owner, id)).catch(() => {});
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
    const name = createHash('sha256').update(owner).update('\u0000').update(id).digest('hex');
    return join(this.snapshotDir!, `${name}.wkv`);
  }

  private checkIdentity(header: SnapshotHeader, owner: string, id: string): void {
    if (header.owner !== owner || header.sessionId !== id) throw new SnapshotFormatError('snapshot belongs to another session');
  }

  private toTranscriptOnly(session: Session): void {
    session.toEvicted();
    this.budget.resize(session, 0);
  }

  private encode(session: Session): Buffer {
    const { layout } = this.options;
    const kind = session.tier === 'hot' && session.kv ? 'native' : session.tier === 'int8' && session.int8 ? 'int8' : 'none';
    return Buffer.concat(
      encodeSnapshot(
        {
          modelFingerprint: this.options.modelFingerprint,
          tokenizerFingerprint: this.options.tokenizerFingerprint,
          layout: { numLayers: layout.numLayers, numKvHeads: layout.numKvHeads, headDim: layout.headDim, dtype: layout.dtype },
          payloadKind: kind,
          keyMode: session.int8?.keyMode,
          owner: session.owner,
          sessionId: session.id,
          createdAt: session.createdAt,
          lastUsedAt: session.lastUsedAt,
          requests: session.requests,
          cachedLength: kind === 'none' ? 0 : session.cachedLength,
          window: session.window,
        },
        session.tokens,
        kind === 'native' ? session.kv : null,
        kind === 'int8' ? session.int8 : null,
      ),
    );
  }

  /** Demotion runs inside a reservation, which is synchronous: write with sync calls, then rename. */
  private writeSync(session: Session): void {
    const path = this.pathOf(session.owner, session.id);
    const temp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
    try {
      mkdirSync(this.snapshotDir!, { recursive: true });
      writeFileSync(temp, this.encode(session));
      renameSync(temp, path);
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

/** Reads only the header and transcript of a snapshot file. */
async function readHead(path: string) {
  const handle = await open(path, 'r');
  try {
    const preamble = Buffer.alloc(16);
    await handle.read(preamble, 0, 16, 0);
    const headerEnd = headLengthHint(preamble);
    if (headerEnd === null) throw new SnapshotFormatError('not a warmkv snapshot');
    const headerBytes = Buffer.alloc(headerEnd);
    await handle.read(headerBytes, 0, headerEnd, 0);
    const tokenCount = Number((JSON.parse(headerBytes.subarray(16).toString('utf8')) as SnapshotHeader).tokenCount);
    if (!Number.isInteger(tokenCount) || tokenCount < 0) throw new SnapshotFormatError('bad header fields');
    const total = headerEnd + 4 * tokenCount + 32;
    const head = Buffer.alloc(total);
    const { bytesRead } = await handle.read(head, 0, total, 0);
    return decodeSnapshotHead(head.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
}

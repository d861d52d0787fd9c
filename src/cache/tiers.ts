/**
 * Tier moves for idle sessions: hot (model dtype) -> int8 (quantized in memory) -> disk (a snapshot
 * file) -> evicted (transcript only). The session store calls `demote` when it needs room; the
 * engine calls `restore` before running a session that is not hot; `find` brings back sessions that
 * only exist on disk (after a restart). The disk tier itself (the folder, its index, the background
 * writer) is session-files.ts: a demotion to disk is queued there and completes when its file lands.
 */
import type { Logger } from '../lib/logger.ts';
import type { KvLayout } from '../model/types.ts';
import type { KvBudget } from './budget.ts';
import { dequantizeKv, int8Bytes as int8BytesExact, int8FixedBytes, int8BytesPerToken, quantizeKv, type KeyScaleMode } from './int8.ts';
import type { PrefixSnapshots } from './prefix-snapshots.ts';
import { SessionFiles, toTranscriptOnly } from './session-files.ts';
import type { Session, Tier } from './session.ts';
import type { SessionStore } from './session-store.ts';
import type { SnapshotWriter, SnapshotWriterOptions } from './snapshot-writer.ts';

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
  /** The background snapshot writer: its queue bound (SNAPSHOT_WRITE_QUEUE) and test hooks. */
  writer?: Partial<SnapshotWriterOptions>;
  /** A fleet's shared, content-addressed prefix snapshots (SESSION_STORE_URL with SNAPSHOT_DIR); null: none. */
  prefixes?: PrefixSnapshots | null;
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
  /** The disk tier: snapshot files, their index and the background writer. */
  readonly disk: SessionFiles;

  constructor(
    private readonly store: SessionStore,
    private readonly options: TierOptions,
  ) {
    this.disk = new SessionFiles(store, options);
    store.setDemoter((session) => this.demote(session), (session) => this.demote(session, false));
    store.setFinder((owner, id) => this.disk.find(owner, id));
    store.setDiskIds((owner) => this.disk.ids(owner));
    const prefixes = options.prefixes;
    if (prefixes) {
      // Every committed turn leaves its cache's prefix on shared storage, for whichever replica serves the next one.
      store.onTurnCommitted((session) => {
        if (session.tier !== 'hot' || !session.hasKv || session.window.droppedTokens > 0) return;
        void prefixes.save(session).catch((error: Error) => this.options.logger.warn({ sessionId: session.id, err: error.message }, 'prefix snapshot not saved'));
      });
    }
  }

  /** Snapshot files and their bytes. */
  get files(): { count: number; bytes: number } {
    return this.disk.files;
  }

  get budget(): KvBudget {
    return this.store.budget;
  }

  get snapshotsEnabled(): boolean {
    return this.disk.enabled;
  }

  /** Checks that the snapshot directory is usable; if not, warns and runs memory-only. */
  async init(): Promise<void> {
    await this.disk.init();
    await this.options.prefixes?.init();
  }

  hotBytes(length: number): number {
    return this.budget.bytesFor(length, this.options.layout.bytesPerToken);
  }

  int8Bytes(length: number): number {
    const { layout, keyMode } = this.options;
    return this.budget.blocksFor(length) * this.budget.blockTokens * int8BytesPerToken(layout, keyMode) + int8FixedBytes(layout, keyMode);
  }

  /**
   * One tier down for an idle session (`int8` false: skip the lossy tier); where it is now and the bytes
   * it now holds. A move to disk is only queued: the session keeps its tier and bytes until the file has
   * landed (see session-files.ts); with the writer's queue full it falls to its transcript instead.
   */
  demote(session: Session, int8 = this.options.int8): { tier: Tier; bytes: number } {
    if (session.tier === 'hot' && session.hasKv && int8) return this.quantize(session);
    if ((session.tier === 'int8' || session.tier === 'hot') && this.disk.enabled) {
      if (this.disk.beginDemotion(session)) return { tier: session.tier, bytes: session.reservedBytes };
      this.options.logger.debug({ sessionId: session.id, queued: this.disk.writer.size }, 'snapshot queue full: evicting to the transcript');
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
        if (session.busy || session.pinned || session.snapshotPending) continue;
        const idle = time - session.lastUsedAt;
        if (options.idleTtlMs > 0 && idle >= options.idleTtlMs) {
          this.store.delete(session);
          void this.disk.forget(session.owner, session.id);
          this.options.logger.debug({ sessionId: session.id, idleMs: idle }, 'idle session expired');
        } else if (options.int8AfterMs > 0 && this.options.int8 && idle >= options.int8AfterMs && session.tier === 'hot' && session.hasKv) {
          this.store.demote(session, () => this.quantize(session));
        }
      }
      if (options.idleTtlMs > 0) void this.disk.expire(options.idleTtlMs, time);
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
    if (session.tier === 'evicted' && session.prefixLookup) return this.restoreSharedPrefix(session);
    if (session.tier === 'int8' && session.int8) {
      if (!this.store.reserve(session, Math.max(session.reservedBytes, this.hotBytes(session.cachedLength)))) return;
      // Its snapshot may still be on its way to disk: the session is in use again, so it stays here.
      if (session.snapshotPending) void this.disk.cancelWrite(session);
      session.toHot(dequantizeKv(this.options.layout, session.int8), session.cachedLength);
      return;
    }
    if (session.tier !== 'disk') return;
    try {
      const { kv, int8 } = await this.disk.readPayload(session);
      const restored = kv ?? (int8 ? dequantizeKv(this.options.layout, int8) : null);
      if (session.tier !== 'disk') return;
      if (!restored) {
        toTranscriptOnly(this.store, session);
        return;
      }
      if (!this.store.reserve(session, Math.max(session.reservedBytes, this.hotBytes(restored.length)))) return;
      // The file stays until the request is admitted: `supersede` removes it before the transcript changes.
      session.toHot(restored, restored.length);
    } catch (error) {
      this.options.logger.warn({ sessionId: session.id, err: (error as Error).message }, 'snapshot unreadable: recomputing the session from its transcript');
      toTranscriptOnly(this.store, session);
    }
  }

  /** A session adopted from the shared store: its cache starts from the longest shared prefix snapshot, if any. */
  private async restoreSharedPrefix(session: Session): Promise<void> {
    session.prefixLookup = false;
    const kv = await this.options.prefixes?.loadLongest(session.tokens);
    if (!kv || session.tier !== 'evicted') return;
    if (!this.store.reserve(session, Math.max(session.reservedBytes, this.hotBytes(kv.length)))) return;
    session.toHot(kv, kv.length);
  }

  /** A session on disk but not in memory (e.g. after a restart), with its transcript; payload stays on disk. */
  find(owner: string, id: string): Promise<Session | undefined> {
    return this.disk.find(owner, id);
  }

  /** Writes every session that holds KV in memory (hot or int8) or only a transcript; for shutdown. */
  flushAll(): Promise<{ written: number; failed: number }> {
    return this.disk.flushAll();
  }

  /** The background writers' backlog and totals: session snapshots (demotions, shutdown) and shared prefix snapshots. */
  writeCounts(): Array<{ kind: 'session' | 'prefix'; pending: number; written: number; refused: number }> {
    const writers: Array<{ kind: 'session' | 'prefix'; writer: SnapshotWriter }> = [{ kind: 'session', writer: this.disk.writer }];
    if (this.options.prefixes) writers.push({ kind: 'prefix', writer: this.options.prefixes.writer });
    return writers.map(({ kind, writer }) => ({ kind, pending: writer.size, ...writer.counters }));
  }

  /** Lets every queued snapshot write land (Runtime.close awaits it). */
  async flush(): Promise<void> {
    await this.disk.writer.flush();
    await this.options.prefixes?.writer.flush();
  }

  /** Removes a deleted session's snapshot. */
  forget(owner: string, id: string): Promise<void> {
    return this.disk.forget(owner, id);
  }

  /** Before a request changes a session: see SessionFiles.supersede. */
  supersede(session: Session): Promise<void> | null {
    return this.disk.supersede(session);
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
    return this.disk.pathOf(owner, id);
  }
}

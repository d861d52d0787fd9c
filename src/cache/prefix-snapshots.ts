/**
 * KV snapshots for a fleet (SESSION_STORE_URL with SNAPSHOT_DIR on a shared filesystem): immutable and
 * content-addressed. A file holds the KV of a token prefix a whole number of blocks long (64 tokens) and
 * is named by the model fingerprint and a chained hash of those blocks, so any replica can look for the
 * longest prefix of the transcript it serves by name alone (one lookup per block boundary, longest
 * first), without listing the folder or asking another replica. A file is never rewritten: the same
 * name always means the same tokens under the same model. The tokens stored in the file are compared
 * with the transcript before its KV is used, so a hash collision (or a damaged file) costs only speed.
 *
 * Files are written by the background writer (snapshot-writer.ts) after every committed turn. Garbage
 * collection removes files unused (written or loaded) for `ttlMs`, then the least recently used ones
 * over `maxBytes`; a reader that finds a file gone (ENOENT, another replica collected it) just tries a
 * shorter prefix or recomputes, and a file already open stays readable after its unlink (POSIX).
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { access, mkdir, readdir, readFile, stat, unlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../lib/logger.ts';
import type { KvTensors } from '../model/types.ts';
import { prefixOf } from './kv-ops.ts';
import { NO_WINDOW, type HeldKv } from './session.ts';
import { decodeSnapshotHead, decodeSnapshotPayload, snapshotParts, type SnapshotIdentity } from './snapshot.ts';
import { SnapshotWriter, type SnapshotWriterOptions } from './snapshot-writer.ts';

/** Snapshots hold whole blocks of this many tokens: the granularity of what a replica can reuse. */
export const PREFIX_BLOCK_TOKENS = 64;
const SUFFIX = '.wkvp';
/** A temporary file this old is a write that a crash interrupted. */
const STALE_TEMP_MS = 10 * 60_000;

export interface PrefixSnapshotOptions extends SnapshotIdentity {
  dir: string;
  logger: Logger;
  /** Files unused this long are removed (SESSION_IDLE_SECONDS); 0 = never. */
  ttlMs: number;
  /** Most bytes of prefix snapshots in the folder (SNAPSHOT_MAX_BYTES); least recently used go first; 0 = no cap. */
  maxBytes: number;
  writer?: Partial<SnapshotWriterOptions>;
  now?: () => number;
}

export class PrefixSnapshots {
  readonly writer: SnapshotWriter;
  private collecting: Promise<number> | null = null;
  /** false once the folder turned out unwritable: the fleet then prefills what it does not hold. */
  private enabled = true;
  private readonly now: () => number;

  constructor(private readonly options: PrefixSnapshotOptions) {
    this.writer = new SnapshotWriter({ maxQueue: 8, ...options.writer });
    this.now = options.now ?? Date.now;
  }

  async init(): Promise<void> {
    try {
      await mkdir(this.options.dir, { recursive: true });
      await access(this.options.dir, constants.W_OK);
    } catch (error) {
      this.enabled = false;
      this.options.logger.warn({ snapshotDir: this.options.dir, err: (error as Error).message }, 'SNAPSHOT_DIR is not writable: no shared prefix snapshots');
      return;
    }
    const removed = await this.collect();
    this.options.logger.info({ snapshotDir: this.options.dir, removed }, 'shared prefix snapshots enabled');
  }

  /** The file of the prefix whose chained block hash is `hash`. */
  pathOf(hash: string): string {
    return join(this.options.dir, `${this.options.modelFingerprint.slice(0, 16)}-${hash}${SUFFIX}`);
  }

  /** hashes[k]: the chained hash of tokens[0, (k + 1) * PREFIX_BLOCK_TOKENS). */
  blockHashes(tokens: readonly number[], blocks: number): string[] {
    const hashes: string[] = [];
    let previous = '';
    for (let k = 0; k < blocks; k++) {
      const block = Int32Array.from(tokens.slice(k * PREFIX_BLOCK_TOKENS, (k + 1) * PREFIX_BLOCK_TOKENS));
      previous = createHash('sha256').update(previous).update(new Uint8Array(block.buffer)).digest('hex');
      hashes.push(previous);
    }
    return hashes;
  }

  /**
   * Queues the snapshot of the longest whole-block prefix of a cache (`source.kv`, or the buffer
   * `source.held`, holds `source.tokens[0, length)`, unwindowed); nothing when that file already
   * exists, the queue is full, or the cache moved on while the existence check ran. The KV is copied
   * only for a new file (the session goes on changing while the file is written); a held buffer is
   * copied from as it is, never made tight.
   */
  async save(source: { readonly tokens: readonly number[]; readonly kv: KvTensors | null; readonly held?: HeldKv | null; readonly version?: number }): Promise<void> {
    const held = source.held ?? null;
    const kv = held ? null : source.kv;
    const version = source.version;
    const cached = held ? held.heldLength : (kv?.length ?? 0);
    if (cached === 0 || !this.enabled) return;
    const blocks = Math.floor(Math.min(cached, source.tokens.length) / PREFIX_BLOCK_TOKENS);
    if (blocks === 0) return;
    const length = blocks * PREFIX_BLOCK_TOKENS;
    const prefix = source.tokens.slice(0, length);
    const hash = this.blockHashes(prefix, blocks)[blocks - 1];
    const path = this.pathOf(hash);
    if (await exists(path)) {
      await touch(path, this.now());
      return;
    }
    // The next turn may have taken the cache meanwhile (a held buffer comes back as the same object,
    // written on: the version tells): then that turn's commit snapshots it.
    const movedOn = held ? source.held !== held || source.version !== version : source.kv !== kv;
    if (movedOn || this.writer.has(hash)) return;
    const copy = held
      ? held.prefixCopy(length)
      : length === kv!.length
        ? { ...kv!, layers: kv!.layers.map((l) => ({ key: l.key.slice(), value: l.value.slice() })) }
        : prefixOf(this.options.layout, kv!, length);
    const { layout } = this.options;
    const time = this.now();
    const parts = snapshotParts(
      {
        modelFingerprint: this.options.modelFingerprint,
        tokenizerFingerprint: this.options.tokenizerFingerprint,
        layout: { numLayers: layout.numLayers, numKvHeads: layout.numKvHeads, headDim: layout.headDim, dtype: layout.dtype },
        payloadKind: 'native',
        owner: '',
        sessionId: hash,
        createdAt: time,
        lastUsedAt: time,
        requests: 0,
        cachedLength: length,
        window: { ...NO_WINDOW },
      },
      prefix,
      copy,
      null,
    );
    this.writer.enqueue(hash, {
      path,
      ...parts,
      settled: (outcome) => {
        if (outcome.kind === 'failed') this.options.logger.warn({ tokens: length, err: outcome.error.message }, 'prefix snapshot write failed');
        if (outcome.kind === 'written' && this.options.maxBytes > 0) void this.collect();
      },
    });
  }

  /**
   * The KV of the longest snapshot whose tokens are a prefix of `tokens[0, limit)`, verified token by
   * token; null when there is none. A missing, damaged or colliding file only sends it to a shorter one.
   */
  async loadLongest(tokens: readonly number[], limit = tokens.length): Promise<KvTensors | null> {
    const blocks = this.enabled ? Math.floor(Math.min(limit, tokens.length) / PREFIX_BLOCK_TOKENS) : 0;
    const hashes = this.blockHashes(tokens, blocks);
    for (let k = blocks - 1; k >= 0; k--) {
      const path = this.pathOf(hashes[k]);
      let data: Buffer;
      try {
        data = await readFile(path);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.options.logger.warn({ err: (error as Error).message }, 'prefix snapshot unreadable');
        continue;
      }
      try {
        const head = decodeSnapshotHead(data);
        const length = (k + 1) * PREFIX_BLOCK_TOKENS;
        const { header } = head;
        if (header.modelFingerprint !== this.options.modelFingerprint || header.tokenizerFingerprint !== this.options.tokenizerFingerprint) throw new Error('another model');
        if (head.tokens.length !== length || head.tokens.some((token, i) => token !== tokens[i])) throw new Error('its tokens differ from the transcript (hash collision)');
        const { kv } = decodeSnapshotPayload(data, head, this.options.layout);
        if (!kv || kv.length !== length) throw new Error('no KV of that length');
        await touch(path, this.now());
        return kv;
      } catch (error) {
        this.options.logger.warn({ tokens: (k + 1) * PREFIX_BLOCK_TOKENS, err: (error as Error).message }, 'prefix snapshot skipped');
      }
    }
    return null;
  }

  /** Garbage collection (one pass at a time): expired files, then least recently used ones over the cap. Resolves with the files removed. */
  collect(): Promise<number> {
    this.collecting ??= this.collectOnce().finally(() => (this.collecting = null));
    return this.collecting;
  }

  private async collectOnce(): Promise<number> {
    const { dir, ttlMs, maxBytes } = this.options;
    const time = this.now();
    const files: Array<{ path: string; bytes: number; usedAt: number }> = [];
    let removed = 0;
    const remove = async (path: string) => {
      await unlink(path).catch(() => {});
      removed++;
    };
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const path = join(dir, name);
      const isTemp = name.includes(`${SUFFIX}.tmp-`);
      if (!name.endsWith(SUFFIX) && !isTemp) continue;
      const info = await stat(path).catch(() => null);
      if (!info) continue;
      if (isTemp) {
        if (time - info.mtimeMs > STALE_TEMP_MS) await remove(path);
      } else if (ttlMs > 0 && time - info.mtimeMs >= ttlMs) {
        await remove(path);
      } else {
        files.push({ path, bytes: info.size, usedAt: info.mtimeMs });
      }
    }
    let total = files.reduce((sum, f) => sum + f.bytes, 0);
    if (maxBytes > 0 && total > maxBytes) {
      for (const file of files.sort((a, b) => a.usedAt - b.usedAt)) {
        if (total <= maxBytes) break;
        await remove(file.path);
        total -= file.bytes;
      }
    }
    if (removed > 0) this.options.logger.debug({ removed, bytes: total }, 'prefix snapshots collected');
    return removed;
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

/** Marks a file used now (its mtime is its last use, for the TTL and the cap); gone meanwhile is fine. */
async function touch(path: string, time: number): Promise<void> {
  await utimes(path, time / 1000, time / 1000).catch(() => {});
}

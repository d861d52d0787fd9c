/**
 * What the snapshot folder holds, kept in memory: one entry per snapshot file (owner, session id,
 * session version, last use, bytes). It is built once at start from one listing of the folder (and
 * the header of each file), then kept up to date by every write and removal, so the per-key session
 * limit, the idle expiry of files and the folder's byte cap never scan the folder again. A lookup
 * of an id not in the index still looks on disk once (servers sharing a folder write files the others
 * did not list). With a shared folder each server counts and caps the files it knows of.
 */
import { createHash } from 'node:crypto';
import { open, readdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../lib/logger.ts';
import { decodeSnapshotHead, headLengthHint, SnapshotFormatError, type SnapshotHeader } from './snapshot.ts';

/** A temporary file this old is a write that a crash interrupted. */
const STALE_TEMP_MS = 10 * 60_000;

export interface SnapshotEntry {
  owner: string;
  id: string;
  path: string;
  /** The session version the file holds. */
  version: number;
  /** The session's last use when the file was written (ms since the epoch). */
  lastUsedAt: number;
  bytes: number;
}

/** The file name of a session's snapshot: a hash of owner and id (neither is a safe file name). */
export function snapshotFileName(owner: string, id: string): string {
  return `${createHash('sha256').update(owner).update('\u0000').update(id).digest('hex')}.wkv`;
}

export class SnapshotIndex {
  /** By file path. */
  private readonly entries = new Map<string, SnapshotEntry>();
  /** Owner -> ids with a file. */
  private readonly byOwner = new Map<string, Set<string>>();
  private total = 0;

  get size(): number {
    return this.entries.size;
  }

  get totalBytes(): number {
    return this.total;
  }

  get(path: string): SnapshotEntry | undefined {
    return this.entries.get(path);
  }

  set(entry: SnapshotEntry): void {
    this.delete(entry.path);
    this.entries.set(entry.path, entry);
    let ids = this.byOwner.get(entry.owner);
    if (!ids) this.byOwner.set(entry.owner, (ids = new Set()));
    ids.add(entry.id);
    this.total += entry.bytes;
  }

  delete(path: string): SnapshotEntry | undefined {
    const entry = this.entries.get(path);
    if (!entry) return undefined;
    this.entries.delete(path);
    this.total -= entry.bytes;
    const ids = this.byOwner.get(entry.owner);
    ids?.delete(entry.id);
    if (ids?.size === 0) this.byOwner.delete(entry.owner);
    return entry;
  }

  /** Ids of `owner` that have a snapshot file. */
  ids(owner: string): ReadonlySet<string> {
    return this.byOwner.get(owner) ?? new Set();
  }

  /** The least recently used entries (passing over those `keep` holds) whose removal brings the total under `cap`; 0 = no cap. */
  overCap(cap: number, keep: (entry: SnapshotEntry) => boolean): SnapshotEntry[] {
    if (cap <= 0 || this.total <= cap) return [];
    const victims: SnapshotEntry[] = [];
    let total = this.total;
    for (const entry of this.oldestFirst()) {
      if (total <= cap) break;
      if (keep(entry)) continue;
      victims.push(entry);
      total -= entry.bytes;
    }
    return victims;
  }

  /** Every entry, least recently used first. */
  oldestFirst(): SnapshotEntry[] {
    return [...this.entries.values()].sort((a, b) => a.lastUsedAt - b.lastUsedAt);
  }
}

/** The 16-byte preamble and the JSON header of an open snapshot file, both bytes of the file. */
async function readHeaderBytes(handle: FileHandle): Promise<Buffer> {
  const preamble = Buffer.alloc(16);
  await handle.read(preamble, 0, 16, 0);
  const headerEnd = headLengthHint(preamble);
  if (headerEnd === null) throw new SnapshotFormatError('not a warmkv snapshot');
  const bytes = Buffer.alloc(headerEnd);
  const { bytesRead } = await handle.read(bytes, 0, headerEnd, 0);
  if (bytesRead < headerEnd) throw new SnapshotFormatError('truncated header');
  return bytes;
}

/** Reads the header (not the transcript) of a snapshot file. */
export async function readSnapshotHeader(path: string): Promise<SnapshotHeader> {
  const handle = await open(path, 'r');
  try {
    const bytes = await readHeaderBytes(handle);
    try {
      return JSON.parse(bytes.subarray(16).toString('utf8')) as SnapshotHeader;
    } catch {
      throw new SnapshotFormatError('unreadable header');
    }
  } finally {
    await handle.close();
  }
}

/**
 * Lists `dir` once and indexes every snapshot file by its header. Files that can never be loaded (not
 * a snapshot, an unreadable header, a name that is not the hash of the owner and id inside) and
 * temporary files left by a crash mid-write are removed. Reads up to 16 headers at a time.
 */
export async function scanSnapshotDir(dir: string, logger: Logger): Promise<{ index: SnapshotIndex; removed: number }> {
  const index = new SnapshotIndex();
  let removed = 0;
  const names = await readdir(dir);
  const remove = async (path: string, why: string) => {
    logger.warn({ file: path, reason: why }, 'snapshot file removed at start');
    await unlink(path).catch(() => {});
    removed++;
  };
  const visit = async (name: string) => {
    const path = join(dir, name);
    // Another server sharing the folder may be writing right now: only old temporary files are leftovers.
    if (/\.wkv\.tmp-/.test(name)) {
      const info = await stat(path).catch(() => null);
      if (info && Date.now() - info.mtimeMs > STALE_TEMP_MS) await remove(path, 'unfinished write');
      return;
    }
    if (!name.endsWith('.wkv')) return;
    try {
      const [header, info] = await Promise.all([readSnapshotHeader(path), stat(path)]);
      if (typeof header.owner !== 'string' || typeof header.sessionId !== 'string') throw new SnapshotFormatError('bad header fields');
      if (snapshotFileName(header.owner, header.sessionId) !== name) throw new SnapshotFormatError('file name does not match the session inside');
      index.set({
        owner: header.owner,
        id: header.sessionId,
        path,
        version: header.sessionVersion ?? 0,
        lastUsedAt: Number(header.lastUsedAt) || info.mtimeMs,
        bytes: info.size,
      });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      await remove(path, (error as Error).message);
    }
  };
  for (let i = 0; i < names.length; i += 16) await Promise.all(names.slice(i, i + 16).map(visit));
  return { index, removed };
}

/** Reads only the header and transcript of a snapshot file. */
export async function readHead(path: string) {
  const handle = await open(path, 'r');
  try {
    const headerBytes = await readHeaderBytes(handle);
    const headerEnd = headerBytes.length;
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

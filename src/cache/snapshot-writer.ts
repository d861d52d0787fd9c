/**
 * The background snapshot writer: snapshot files are written off the admission path, one at a time,
 * from a bounded queue, so a large disk write never stalls the event loop that every stream shares.
 * Each write goes to a temporary name beside its file, in chunks (each chunk hashed into the payload
 * digest as it is written, so no whole-session copy or hash runs at once), and is renamed into place
 * only when complete: a crash mid-write leaves a temporary file the start-up scan removes, never a
 * file that loads wrongly.
 *
 * The writer knows only bytes and paths. What a write means for a session (its KV stays counted in the
 * budget until the write lands; any use of the session cancels it) is the caller's: see session-files.ts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';

export interface SnapshotWriteJob {
  /** The final path; written under a temporary name beside it, then renamed. */
  path: string;
  /** Bytes before the payload (they carry their own digest). */
  head: Uint8Array[];
  /** The payload's arrays, hashed as they are written; their sha256 follows them. */
  payload: Uint8Array[];
  /** Asked just before the rename: false discards the finished write (its subject changed or went away). */
  wanted?: () => boolean;
  /**
   * Called once when the write has ended. `cancelled`: `cancel` was called for it, possibly while the
   * file was being renamed into place (then the outcome is `written`).
   */
  settled: (outcome: WriteOutcome, cancelled: boolean) => void;
}

export type WriteOutcome = { kind: 'written'; bytes: number } | { kind: 'discarded' } | { kind: 'failed'; error: Error };

export interface SnapshotWriterOptions {
  /** Most writes queued or under way (SNAPSHOT_WRITE_QUEUE); `enqueue` refuses more. */
  maxQueue: number;
  /** Bytes handed to one write call (and hashed at once). */
  chunkBytes?: number;
  /** Awaited before every chunk: tests make writes slow with it. */
  beforeChunk?: () => Promise<void>;
}

interface Pending {
  key: string;
  job: SnapshotWriteJob;
  cancelled: boolean;
  /** Set while the finished file is being renamed into place: the one step a cancel must wait for. */
  renaming: Promise<void> | null;
}

const DEFAULT_CHUNK_BYTES = 1 << 20;

export class SnapshotWriter {
  private readonly queue: Pending[] = [];
  private readonly byKey = new Map<string, Pending>();
  private active: Pending | null = null;
  private idle: Promise<void> = Promise.resolve();
  private markIdle: (() => void) | null = null;
  private written = 0;
  private refused = 0;

  constructor(private readonly options: SnapshotWriterOptions) {}

  /** Writes queued or under way. */
  get size(): number {
    return this.byKey.size;
  }

  /** Writes completed and writes refused for a full queue, since the start. */
  get counters(): { written: number; refused: number } {
    return { written: this.written, refused: this.refused };
  }

  has(key: string): boolean {
    return this.byKey.has(key);
  }

  /** Queues a write under `key`; false (nothing queued) when the queue is full or `key` already has one. */
  enqueue(key: string, job: SnapshotWriteJob): boolean {
    if (this.byKey.has(key)) return false;
    if (this.byKey.size >= this.options.maxQueue) {
      this.refused++;
      return false;
    }
    const pending: Pending = { key, job, cancelled: false, renaming: null };
    this.byKey.set(key, pending);
    this.queue.push(pending);
    if (!this.markIdle) {
      this.idle = new Promise((resolve) => (this.markIdle = resolve));
      void this.pump();
    }
    return true;
  }

  /**
   * Cancels the write under `key`: a queued one is dropped, one under way is discarded at its next chunk
   * (its temporary file removed then), one being renamed stays written. Resolves at once, or, during a
   * rename, once it is done: after this resolves no file of this write appears any more.
   */
  cancel(key: string): Promise<void> {
    const pending = this.byKey.get(key);
    if (!pending) return Promise.resolve();
    pending.cancelled = true;
    if (pending !== this.active) {
      this.queue.splice(this.queue.indexOf(pending), 1);
      this.settle(pending, { kind: 'discarded' });
    }
    return pending.renaming ?? Promise.resolve();
  }

  /** Resolves when every write queued so far (and any queued meanwhile) has settled. */
  flush(): Promise<void> {
    return this.idle;
  }

  private async pump(): Promise<void> {
    for (let next = this.queue.shift(); next; next = this.queue.shift()) {
      this.active = next;
      const outcome = await this.write(next);
      this.active = null;
      this.settle(next, outcome);
    }
    const markIdle = this.markIdle;
    this.markIdle = null;
    markIdle?.();
  }

  private settle(pending: Pending, outcome: WriteOutcome): void {
    this.byKey.delete(pending.key);
    if (outcome.kind === 'written') this.written++;
    pending.job.settled(outcome, pending.cancelled);
  }

  private async write(pending: Pending): Promise<WriteOutcome> {
    const { job } = pending;
    const chunkBytes = this.options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    const temp = `${job.path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
    let handle: FileHandle | null = null;
    const discard = async (): Promise<WriteOutcome> => {
      await handle?.close().catch(() => {});
      handle = null;
      await unlink(temp).catch(() => {});
      return { kind: 'discarded' };
    };
    try {
      handle = await open(temp, 'wx');
      let bytes = 0;
      for (const part of job.head) bytes += await writeAll(handle, part);
      const hash = createHash('sha256');
      for (const array of job.payload) {
        for (let offset = 0; offset < array.byteLength; offset += chunkBytes) {
          await this.options.beforeChunk?.();
          if (pending.cancelled) return await discard();
          const chunk = array.subarray(offset, Math.min(array.byteLength, offset + chunkBytes));
          hash.update(chunk);
          bytes += await writeAll(handle, chunk);
        }
      }
      bytes += await writeAll(handle, hash.digest());
      await handle.close();
      handle = null;
      if (pending.cancelled || job.wanted?.() === false) return await discard();
      const renamed = rename(temp, job.path);
      pending.renaming = renamed.catch(() => {});
      await renamed;
      return { kind: 'written', bytes };
    } catch (error) {
      await discard();
      return { kind: 'failed', error: error as Error };
    }
  }
}

async function writeAll(handle: FileHandle, data: Uint8Array): Promise<number> {
  for (let offset = 0; offset < data.byteLength; ) {
    const { bytesWritten } = await handle.write(data, offset, data.byteLength - offset);
    offset += bytesWritten;
  }
  return data.byteLength;
}

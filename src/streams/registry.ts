/**
 * Resumable streams, without HTTP. A streamed generation writes its SSE events into an EventLog
 * (event-log.ts); every connection that shows the stream is a reader of that log with its own cursor.
 *
 * Memory: a log holds at most `maxEvents` events (max_tokens + a few) and `maxStreamBytes` bytes,
 * dropping its oldest events beyond that; all logs together stay under `maxTotalBytes` by expiring
 * finished streams nobody reads, oldest first.
 *
 * Lifetime (with `resumeMs` > 0): a stream is registered under its completion id for its owner. When no
 * connection reads it, a clock starts; the stream expires `resumeMs` after the later of that moment
 * and the generation's end. A generation still running when nobody has come back for `resumeMs` is
 * stopped, and the stream expires then. With `resumeMs` 0 nothing is registered and a lost connection
 * stops the generation at once. The HTTP side (GET/DELETE /v1/streams/{id}) is server/streams.ts.
 */
import type { Logger } from '../lib/logger.ts';
import { silentLogger } from '../lib/logger.ts';
import { EventLog, type LogHost, type StreamInspection } from './event-log.ts';

export type { CancelReason, EventLog, ReaderOptions, StreamInspection } from './event-log.ts';

export const DEFAULT_STREAM_MAX_BYTES = 8 * 1024 * 1024;
export const DEFAULT_TOTAL_MAX_BYTES = 256 * 1024 * 1024;
export const DEFAULT_STALL_MS = 30_000;
/** Events a log keeps beyond max_tokens: role, echo, held-back text, finish, usage, [DONE], an error. */
export const EXTRA_EVENTS = 8;
/** How long DELETE waits for the generation to notice the cancellation. */
const CANCEL_WAIT_MS = 10_000;

export interface StreamRegistryOptions {
  /** How long a stream stays resumable once nobody reads it (see the file comment); 0 disables resumption. */
  resumeMs: number;
  /** A connection that has not taken data for this long is closed; 0 never. */
  stallMs?: number;
  /** Per stream: bytes of events kept; the oldest are dropped beyond it. */
  maxStreamBytes?: number;
  /** All streams together: finished streams that nobody reads are expired early beyond it. */
  maxTotalBytes?: number;
  logger?: Logger;
  now?: () => number;
}

export interface StreamStats {
  /** Registered streams (resumable, not expired). */
  streams: number;
  /** Of those, streams whose generation still runs. */
  generating: number;
  /** Connections reading registered streams. */
  readers: number;
  /** Bytes of events held by registered streams. */
  bufferedBytes: number;
  bufferedEvents: number;
  /** Expiry and abandonment timers pending. */
  timers: number;
}

export interface OpenStream {
  id: string;
  owner: string;
  /** Aborting it stops the generation. */
  abort: AbortController;
  maxTokens: number;
}

/** Every resumable stream by id (per owner); also makes the unregistered logs of non-resumable streams. */
export class EventLogRegistry implements LogHost {
  readonly resumeMs: number;
  readonly stallMs: number;
  readonly maxStreamBytes: number;
  readonly maxTotalBytes: number;
  readonly logger: Logger;
  readonly now: () => number;
  private readonly streams = new Map<string, EventLog>();
  private totalBytes = 0;

  constructor(options: StreamRegistryOptions) {
    this.resumeMs = Math.max(0, options.resumeMs);
    this.stallMs = options.stallMs ?? DEFAULT_STALL_MS;
    this.maxStreamBytes = options.maxStreamBytes ?? DEFAULT_STREAM_MAX_BYTES;
    this.maxTotalBytes = options.maxTotalBytes ?? DEFAULT_TOTAL_MAX_BYTES;
    this.logger = options.logger ?? silentLogger;
    this.now = options.now ?? Date.now;
  }

  /** Whether streams outlive their connection. */
  get enabled(): boolean {
    return this.resumeMs > 0;
  }

  /** A log for a generation that has started; registered under its id when resumption is on. */
  open(stream: OpenStream): EventLog {
    const log = new EventLog(stream.id, stream.owner, this, stream.abort, stream.maxTokens + EXTRA_EVENTS, this.maxStreamBytes, this.enabled);
    if (this.enabled) this.streams.set(stream.id, log);
    return log;
  }

  /** The stream, if it exists and belongs to `owner` (another owner's stream is as unknown). */
  get(id: string, owner: string): EventLog | undefined {
    const log = this.streams.get(id);
    return log && !log.removed && log.owner === owner ? log : undefined;
  }

  /**
   * Stops the generation (DELETE /v1/streams/{id}), waits until it has stopped (so its session is
   * free and its connections got the terminal event), then forgets the stream. False if unknown.
   */
  async cancel(id: string, owner: string): Promise<boolean> {
    const log = this.get(id, owner);
    if (!log) return false;
    log.cancel('deleted');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([log.generationEnded, new Promise<void>((resolve) => (timer = setTimeout(resolve, CANCEL_WAIT_MS).unref()))]);
    clearTimeout(timer);
    this.remove(log);
    return true;
  }

  /** Called when a log's readers or state change: sets its abandonment or expiry timer. */
  reschedule(log: EventLog): void {
    clearTimeout(log.timer);
    log.timer = undefined;
    if (log.removed || log.readers.size > 0) return;
    if (!this.enabled) {
      // Nobody can come back: a lost connection stops the generation.
      if (!log.ended) log.cancel('disconnected');
      return;
    }
    const now = this.now();
    if (!log.ended) {
      log.timer = setTimeout(() => {
        this.logger.info({ streamId: log.id }, 'nobody resumed the stream in time; stopping its generation');
        this.remove(log);
        log.cancel('abandoned');
      }, Math.max(1, log.idleSince + this.resumeMs - now));
    } else {
      log.timer = setTimeout(() => this.remove(log), Math.max(1, Math.max(log.idleSince, log.endedAt) + this.resumeMs - now));
    }
    log.timer.unref();
  }

  private remove(log: EventLog): void {
    if (this.streams.get(log.id) === log) this.streams.delete(log.id);
    log.release();
  }

  /** Bytes added to (or dropped from) some log. */
  resized(delta: number): void {
    this.totalBytes += delta;
  }

  /** Over the global cap: expire finished streams that nobody reads, oldest first. */
  enforceTotal(): void {
    if (this.totalBytes <= this.maxTotalBytes) return;
    const idle = [...this.streams.values()].filter((log) => log.ended && log.readers.size === 0);
    idle.sort((a, b) => Math.max(a.idleSince, a.endedAt) - Math.max(b.idleSince, b.endedAt));
    for (const log of idle) {
      if (this.totalBytes <= this.maxTotalBytes) break;
      this.logger.info({ streamId: log.id, bytes: log.bytes }, 'stream buffers over their memory cap; expiring a finished stream early');
      this.remove(log);
    }
  }

  stats(): StreamStats {
    const stats: StreamStats = { streams: 0, generating: 0, readers: 0, bufferedBytes: 0, bufferedEvents: 0, timers: 0 };
    for (const log of this.streams.values()) {
      stats.streams++;
      if (!log.ended) stats.generating++;
      stats.readers += log.readers.size;
      stats.bufferedBytes += log.bytes;
      stats.bufferedEvents += log.events;
      if (log.timer) stats.timers++;
    }
    return stats;
  }

  inspect(id: string): StreamInspection | undefined {
    return this.streams.get(id)?.inspect();
  }

  /** Forgets every stream (tests, shutdown); running generations are stopped. */
  close(): void {
    for (const log of [...this.streams.values()]) {
      this.remove(log);
      log.cancel('shutting_down');
    }
  }
}


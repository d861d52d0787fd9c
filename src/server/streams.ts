/**
 * Resumable streams. A streamed generation writes its SSE events into an EventLog (numbered frames,
 * encoded once); every HTTP connection that shows the stream is a StreamReader of that log with its own
 * cursor. The generation never waits for a connection, and a connection never queues more than one
 * chunk: the reader hands out bytes only when the socket asks for them (a pull-based ReadableStream
 * with highWaterMark 0), so a client that stops reading holds at most the socket's buffers, and one
 * that stays unreadable for `stallMs` is closed (the stream stays resumable).
 *
 * Memory: a log holds at most `maxEvents` events (max_tokens + a few) and `maxStreamBytes` bytes,
 * dropping its oldest events beyond that; all logs together stay under `maxTotalBytes` by expiring
 * finished streams nobody reads, oldest first.
 *
 * Lifetime (with `resumeMs` > 0): a stream is registered under its completion id for its owner. When no
 * connection reads it, a clock starts; the stream expires `resumeMs` after the later of that moment
 * and the generation's end. A generation still running when nobody has come back for `resumeMs` is
 * stopped, and the stream expires then. With `resumeMs` 0 nothing is registered and a lost connection
 * stops the generation at once.
 */
import type { Logger } from '../lib/logger.ts';
import { silentLogger } from '../lib/logger.ts';
import { ApiError } from './errors.ts';
import { PING, SSE_HEADERS, encodeDone, encodeEvent } from './sse.ts';

export const DEFAULT_STREAM_MAX_BYTES = 8 * 1024 * 1024;
export const DEFAULT_TOTAL_MAX_BYTES = 256 * 1024 * 1024;
export const DEFAULT_STALL_MS = 30_000;
/** Events a log keeps beyond max_tokens: role, echo, held-back text, finish, usage, [DONE], an error. */
export const EXTRA_EVENTS = 8;
const MAX_CHUNK_BYTES = 16 * 1024;
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

export interface ReaderOptions {
  /** Sends `: ping` after this long without any write while the socket is writable; 0 disables. */
  pingIntervalMs: number;
  /** Destroys the connection under the response (for a stalled reader); absent outside a Node server. */
  closeConnection?: () => void;
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

export interface StreamInspection {
  owner: string;
  firstEvent: number;
  nextEvent: number;
  bytes: number;
  ended: boolean;
  readers: Array<{ cursor: number; sentBytes: number; waiting: boolean }>;
}

/** One generation's events, numbered from 0. */
export class EventLog {
  private frames: Uint8Array[] = [];
  private head = 0;
  /** Sequence number of the oldest event kept. */
  firstSeq = 0;
  /** Sequence number the next event gets. */
  nextSeq = 0;
  bytes = 0;
  /** The generation is over: no more events. */
  ended = false;
  endedAt = 0;
  /** Expired, cancelled or abandoned: readers close, appends are ignored. */
  removed = false;
  /** When the last reader left (the stream's creation while it has had none). */
  idleSince: number;
  timer: NodeJS.Timeout | undefined;
  readonly readers = new Set<StreamReader>();
  /** Settles when the generation has ended. */
  readonly generationEnded: Promise<void>;
  private settleEnded!: () => void;

  constructor(
    readonly id: string,
    readonly owner: string,
    private readonly registry: StreamRegistry,
    private readonly abort: AbortController,
    private readonly maxEvents: number,
    private readonly maxBytes: number,
    /** In the registry (resumable): its bytes count towards the total. */
    private readonly registered: boolean,
  ) {
    this.idleSince = registry.now();
    this.generationEnded = new Promise((resolve) => (this.settleEnded = resolve));
  }

  get events(): number {
    return this.nextSeq - this.firstSeq;
  }

  /** The frame of event `seq`, if it is still kept. */
  frame(seq: number): Uint8Array | undefined {
    if (seq < this.firstSeq || seq >= this.nextSeq) return undefined;
    return this.frames[this.head + seq - this.firstSeq];
  }

  /** Appends `data: <JSON>` as the next event. */
  send(data: unknown): void {
    this.append(encodeEvent(this.nextSeq, data));
  }

  sendDone(): void {
    this.append(encodeDone(this.nextSeq));
  }

  private append(frame: Uint8Array): void {
    if (this.ended || this.removed) return;
    this.frames.push(frame);
    this.nextSeq++;
    this.bytes += frame.length;
    if (this.registered) this.registry.resized(frame.length);
    // The newest event is always kept, even alone over the byte cap.
    while (this.events > 1 && (this.events > this.maxEvents || this.bytes > this.maxBytes)) {
      const dropped = this.frames[this.head]!;
      this.frames[this.head] = EMPTY;
      this.head++;
      this.firstSeq++;
      this.bytes -= dropped.length;
      if (this.registered) this.registry.resized(-dropped.length);
    }
    if (this.head > 64 && this.head * 2 > this.frames.length) {
      this.frames = this.frames.slice(this.head);
      this.head = 0;
    }
    for (const reader of [...this.readers]) reader.wake();
    if (this.registered) this.registry.enforceTotal();
  }

  /** The generation is over; call after its last event. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.endedAt = this.registry.now();
    this.settleEnded();
    for (const reader of [...this.readers]) reader.wake();
    this.registry.reschedule(this);
  }

  /** Stops the generation (it ends at its next step). */
  cancel(): void {
    this.abort.abort();
  }

  /** A new connection that shows events from `start` on, then follows the stream live. */
  reader(start: number, options: ReaderOptions): ReadableStream<Uint8Array> {
    const reader = new StreamReader(this, start, options, this.registry);
    this.readers.add(reader);
    this.registry.reschedule(this);
    return reader.stream;
  }

  detach(reader: StreamReader): void {
    if (!this.readers.delete(reader)) return;
    if (this.readers.size === 0) this.idleSince = this.registry.now();
    this.registry.reschedule(this);
  }

  /** Frees the events and closes every reader. */
  release(): void {
    if (this.removed) return;
    this.removed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.registered) this.registry.resized(-this.bytes);
    this.frames = [];
    this.head = 0;
    this.bytes = 0;
    this.firstSeq = this.nextSeq;
    for (const reader of [...this.readers]) reader.wake();
  }

  inspect(): StreamInspection {
    return {
      owner: this.owner,
      firstEvent: this.firstSeq,
      nextEvent: this.nextSeq,
      bytes: this.bytes,
      ended: this.ended,
      readers: [...this.readers].map((r) => ({ cursor: r.cursor, sentBytes: r.sentBytes, waiting: r.waiting })),
    };
  }
}

const EMPTY = new Uint8Array(0);

/**
 * One connection's view of a log: a ReadableStream that produces bytes only when its consumer (the
 * socket writer) asks for them, at most MAX_CHUNK_BYTES at a time.
 */
class StreamReader {
  /** Next event to send. */
  cursor: number;
  sentBytes = 0;
  readonly stream: ReadableStream<Uint8Array>;
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  /** Resolves the pull the consumer is waiting on. */
  private pending: (() => void) | null = null;
  private timer: NodeJS.Timeout | undefined;
  private lastWriteAt: number;
  private done = false;

  constructor(
    private readonly log: EventLog,
    start: number,
    private readonly options: ReaderOptions,
    private readonly registry: StreamRegistry,
  ) {
    this.cursor = start;
    this.lastWriteAt = registry.now();
    this.stream = new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          this.controller = controller;
          this.arm();
        },
        pull: () => this.pull(),
        cancel: () => this.stop(),
      },
      { highWaterMark: 0 },
    );
  }

  /** True while the consumer waits for bytes (its socket is writable). */
  get waiting(): boolean {
    return this.pending !== null;
  }

  private pull(): Promise<void> | undefined {
    if (this.deliver()) {
      this.arm();
      return undefined;
    }
    return new Promise<void>((resolve) => {
      this.pending = resolve;
      this.arm();
    });
  }

  /** The log changed (an event, the end, a release). */
  wake(): void {
    if (this.done) return;
    if (this.log.removed) {
      this.finish();
      return;
    }
    if (this.pending && this.deliver()) this.settle();
  }

  private settle(): void {
    const resolve = this.pending;
    this.pending = null;
    resolve?.();
    this.arm();
  }

  /** Enqueues what is due, or closes; false when there is nothing to do yet. */
  private deliver(): boolean {
    if (this.done) return true;
    const log = this.log;
    // Removed, or the events this connection still needs were dropped: end it; a resume says why.
    if (log.removed || this.cursor < log.firstSeq) {
      this.finish();
      return true;
    }
    if (this.cursor < log.nextSeq) {
      const parts: Uint8Array[] = [];
      let size = 0;
      while (this.cursor < log.nextSeq) {
        const frame = log.frame(this.cursor)!;
        if (parts.length > 0 && size + frame.length > MAX_CHUNK_BYTES) break;
        parts.push(frame);
        size += frame.length;
        this.cursor++;
      }
      this.enqueue(parts.length === 1 ? parts[0] : concat(parts, size));
      return true;
    }
    if (log.ended) {
      this.finish();
      return true;
    }
    return false;
  }

  private enqueue(bytes: Uint8Array): void {
    this.controller.enqueue(bytes);
    this.sentBytes += bytes.length;
    this.lastWriteAt = this.registry.now();
  }

  /**
   * One timer per connection: while the consumer waits, the next ping; while it does not (its socket
   * has not drained since the last write), the stall deadline.
   */
  private arm(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.done) return;
    const interval = this.pending ? this.options.pingIntervalMs : this.registry.stallMs;
    if (interval <= 0) return;
    this.timer = setTimeout(() => this.onTimer(), Math.max(1, this.lastWriteAt + interval - this.registry.now()));
    this.timer.unref();
  }

  private onTimer(): void {
    this.timer = undefined;
    if (this.done) return;
    const idle = this.registry.now() - this.lastWriteAt;
    if (this.pending) {
      if (this.options.pingIntervalMs > 0 && idle >= this.options.pingIntervalMs) {
        this.enqueue(PING);
        this.settle();
        return;
      }
    } else if (this.registry.stallMs > 0 && idle >= this.registry.stallMs) {
      this.stall();
      return;
    }
    this.arm();
  }

  /** Normal end: everything sent (or nothing more can be). */
  private finish(): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.timer);
    try {
      this.controller.close();
    } catch {
      // already closed or errored
    }
    const resolve = this.pending;
    this.pending = null;
    resolve?.();
    this.log.detach(this);
  }

  /** The consumer went away (the connection closed). */
  private stop(): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.timer);
    this.pending = null;
    this.log.detach(this);
  }

  /** The socket has not drained for stallMs: drop the connection, keep the stream. */
  private stall(): void {
    if (this.done) return;
    this.registry.logger.info({ streamId: this.log.id, sentEvents: this.cursor, sentBytes: this.sentBytes }, 'stream connection stalled; closing it');
    this.done = true;
    try {
      this.controller.error(new Error('the client stopped reading'));
    } catch {
      // already closed
    }
    this.log.detach(this);
    this.options.closeConnection?.();
  }
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

export interface OpenStream {
  id: string;
  owner: string;
  /** Aborting it stops the generation. */
  abort: AbortController;
  maxTokens: number;
}

/** Every resumable stream by id; also makes the unregistered logs of non-resumable streams. */
export class StreamRegistry {
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
   * GET /v1/streams/{id}: replays the events after `after` (-1: all), then follows the stream to its
   * end. 404 for an unknown, expired or foreign stream; 410 when events after `after` were dropped;
   * 204 when the stream has ended and the client has its last event (EventSource then stops retrying).
   */
  resume(id: string, owner: string, after: number, options: ReaderOptions, headers: Record<string, string> = {}): Response {
    const log = this.get(id, owner);
    if (!log) throw new ApiError('stream_not_found', `Stream ${id} not found; it may have expired.`);
    if (after + 1 < log.firstSeq) {
      throw new ApiError(
        'stream_events_dropped',
        `Events ${after + 1}-${log.firstSeq - 1} of stream ${id} are no longer kept (the stream outgrew its buffer); resume from event ${log.firstSeq - 1} or later, or run the request again.`,
      );
    }
    if (log.ended && after >= log.nextSeq - 1) return new Response(null, { status: 204, headers: { 'X-Stream-Id': id, ...headers } });
    if (after >= log.nextSeq) {
      throw new ApiError('invalid_request', `Invalid value for 'Last-Event-ID': stream ${id} has sent events up to ${log.nextSeq - 1} only.`, 'Last-Event-ID');
    }
    const body = log.reader(after + 1, options);
    return new Response(body, { status: 200, headers: { ...SSE_HEADERS, 'X-Stream-Id': id, ...headers } });
  }

  /**
   * DELETE /v1/streams/{id}: stops the generation, forgets the stream (its connections end without
   * [DONE]) and waits until the generation has stopped, so its session is free. False if unknown.
   */
  async cancel(id: string, owner: string): Promise<boolean> {
    const log = this.get(id, owner);
    if (!log) return false;
    this.remove(log);
    log.cancel();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([log.generationEnded, new Promise<void>((resolve) => (timer = setTimeout(resolve, CANCEL_WAIT_MS).unref()))]);
    clearTimeout(timer);
    return true;
  }

  /** Called when a log's readers or state change: sets its abandonment or expiry timer. */
  reschedule(log: EventLog): void {
    clearTimeout(log.timer);
    log.timer = undefined;
    if (log.removed || log.readers.size > 0) return;
    if (!this.enabled) {
      // Nobody can come back: a lost connection stops the generation.
      if (!log.ended) log.cancel();
      return;
    }
    const now = this.now();
    if (!log.ended) {
      log.timer = setTimeout(() => {
        this.logger.info({ streamId: log.id }, 'nobody resumed the stream in time; stopping its generation');
        this.remove(log);
        log.cancel();
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
      log.cancel();
    }
  }
}

/** The cursor a resume starts after: `Last-Event-ID` (which an EventSource keeps current) wins over `?after`. */
export function resumeCursor(lastEventId: string | undefined, after: string | undefined): number {
  const parse = (value: string, param: string) => {
    const text = value.trim();
    if (!/^\d{1,15}$/.test(text)) throw new ApiError('invalid_request', `Invalid value for '${param}': must be an event id (a non-negative integer).`, param);
    return Number(text);
  };
  if (lastEventId !== undefined && lastEventId.trim() !== '') return parse(lastEventId, 'Last-Event-ID');
  if (after !== undefined) return parse(after, 'after');
  return -1;
}

/** Under @hono/node-server, `c.env.outgoing` is the ServerResponse: destroying it drops the socket. */
export function connectionCloser(env: unknown): (() => void) | undefined {
  const outgoing = (env as { outgoing?: { destroy?: (error?: Error) => void } } | undefined)?.outgoing;
  if (!outgoing || typeof outgoing.destroy !== 'function') return undefined;
  return () => outgoing.destroy!();
}

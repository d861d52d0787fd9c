/**
 * One generation's SSE events as numbered, once-encoded frames (EventLog), and the pull-based readers
 * that show them on connections (StreamReader): the generation never waits for a connection, and a
 * connection never queues more than one chunk (highWaterMark 0), so a client that stops reading holds
 * at most the socket's buffers; one that stays unreadable for `stallMs` is closed. Nothing here knows
 * HTTP: a reader is a web ReadableStream of bytes; the registry (registry.ts) owns lifetimes.
 */
import type { Logger } from '../lib/logger.ts';
import { PING, encodeDone, encodeEvent, encodeJsonEvent, encodeNamedEvent } from './frames.ts';

const MAX_CHUNK_BYTES = 16 * 1024;

/** What a log needs from the registry that keeps it: the clock, byte accounting and its timers. */
export interface LogHost {
  readonly stallMs: number;
  readonly logger: Logger;
  now(): number;
  /** Bytes added to (or dropped from) a registered log. */
  resized(delta: number): void;
  /** Over the global byte cap: expire what may be expired. */
  enforceTotal(): void;
  /** A log's readers or state changed: set its abandonment or expiry timer. */
  reschedule(log: EventLog): void;
}

/** Why a generation was stopped on the server (the terminal event's `cancel_reason`). */
export type CancelReason = 'superseded' | 'deleted' | 'abandoned' | 'disconnected' | 'shutting_down';

export interface ReaderOptions {
  /** Sends `: ping` after this long without any write while the socket is writable; 0 disables. */
  pingIntervalMs: number;
  /** Destroys the connection under the response (for a stalled reader); absent outside a Node server. */
  closeConnection?: () => void;
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
    private readonly registry: LogHost,
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

  /** Appends `data: <json>` for JSON text built by the caller (one token's chunk from a template). */
  sendJson(json: string): void {
    this.append(encodeJsonEvent(this.nextSeq, json));
  }

  /** Appends a named event (`event: <name>`); its sequence number is `nextSeq` before the call. */
  sendNamed(name: string, data: unknown): void {
    this.append(encodeNamedEvent(this.nextSeq, name, data));
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
    // A Set visits what is still in it: a reader that finishes (and leaves) during its wake is safe.
    for (const reader of this.readers) reader.wake();
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

  /**
   * Stops the generation (it ends at its next step); `reason` becomes the abort signal's reason, which
   * the producer writes into the stream's terminal event.
   */
  cancel(reason: CancelReason): void {
    this.abort.abort(reason);
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
  /** When `timer` fires (meaningful while it is set). */
  private timerDueAt = 0;
  private lastWriteAt: number;
  private done = false;

  constructor(
    private readonly log: EventLog,
    start: number,
    private readonly options: ReaderOptions,
    private readonly registry: LogHost,
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
   * One timer per connection, set once and moved only when it would fire too late: while the consumer
   * waits, its deadline is the next ping; while it does not (its socket has not drained since the last
   * write), the stall deadline. Both count from the last write, which only moves later, so a timer set
   * for an earlier deadline stays valid and checks `lastWriteAt` when it fires instead of being re-armed
   * on every token.
   */
  private arm(): void {
    if (this.done) return;
    const interval = this.pending ? this.options.pingIntervalMs : this.registry.stallMs;
    if (interval <= 0) return;
    const due = this.lastWriteAt + interval;
    if (this.timer !== undefined && this.timerDueAt <= due) return;
    clearTimeout(this.timer);
    this.timerDueAt = due;
    this.timer = setTimeout(() => this.onTimer(), Math.max(1, due - this.registry.now()));
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


/**
 * Server-sent events with exact control over the bytes: every event is `id: <n>\ndata: <json>\n\n`
 * with a per-stream sequence number, keep-alive comments are `: ping\n\n`, and nothing else is ever
 * written (no `event:` lines: OpenAI clients treat named events differently).
 */

const encoder = new TextEncoder();

export const SSE_HEADERS: Record<string, string> = {
  'Content-Type': 'text/event-stream',
  'Cache-Control': 'no-cache',
  'X-Accel-Buffering': 'no',
};

export interface SseWriter {
  /** Sends `data: <JSON of value>` (or the literal `[DONE]`). No-op once closed. */
  send(data: unknown): void;
  sendDone(): void;
  comment(text: string): void;
  close(): void;
  /** True once the client went away or the stream was closed. */
  readonly closed: boolean;
}

export interface SseStreamOptions {
  /** Sends `: ping` after this long without any write; 0 disables. */
  pingIntervalMs: number;
  /** The client disconnected (the response body was cancelled). */
  onCancel: () => void;
}

/**
 * A ReadableStream for a Response body and the writer that feeds it. The producer runs `produce` and
 * the stream closes when it settles.
 */
export function sseStream(options: SseStreamOptions, produce: (writer: SseWriter) => Promise<void>): ReadableStream<Uint8Array> {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let closed = false;
  let nextId = 0;
  let pingTimer: NodeJS.Timeout | undefined;

  const armPing = () => {
    if (options.pingIntervalMs <= 0) return;
    clearTimeout(pingTimer);
    pingTimer = setTimeout(() => {
      writer.comment('ping');
    }, options.pingIntervalMs);
  };
  const write = (text: string) => {
    if (closed) return;
    try {
      controller.enqueue(encoder.encode(text));
    } catch {
      closed = true;
      clearTimeout(pingTimer);
      return;
    }
    armPing();
  };
  const writer: SseWriter = {
    send(data) {
      write(`id: ${nextId++}\ndata: ${JSON.stringify(data)}\n\n`);
    },
    sendDone() {
      write(`id: ${nextId++}\ndata: [DONE]\n\n`);
    },
    comment(text) {
      write(`: ${text}\n\n`);
    },
    close() {
      if (closed) return;
      closed = true;
      clearTimeout(pingTimer);
      try {
        controller.close();
      } catch {
        // already closed or errored
      }
    },
    get closed() {
      return closed;
    },
  };

  return new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
      armPing();
      void produce(writer)
        .catch(() => {})
        .finally(() => writer.close());
    },
    cancel() {
      closed = true;
      clearTimeout(pingTimer);
      options.onCancel();
    },
  });
}

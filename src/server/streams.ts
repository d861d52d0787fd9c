/**
 * The HTTP side of resumable streams (the logs, readers and their lifetimes are src/streams/):
 * GET /v1/streams/{id} as a Response, the resume cursor from `Last-Event-ID` / `?after`, and dropping a
 * stalled reader's connection under @hono/node-server.
 */
import { EventLogRegistry, type ReaderOptions } from '../streams/registry.ts';
import { ApiError, quoteForMessage, streamNotFound } from './errors.ts';
import { SSE_HEADERS } from './sse.ts';

/** The registry with its HTTP answers. */
export class StreamRegistry extends EventLogRegistry {
  /**
   * GET /v1/streams/{id}: replays the events after `after` (-1: all), then follows the stream to its
   * end. 404 for an unknown, expired or foreign stream; 410 when events after `after` were dropped;
   * 204 when the stream has ended and the client has its last event (EventSource then stops retrying);
   * 400 for an event id the stream has never issued, ended or not (a client bug, not "nothing more").
   */
  resume(id: string, owner: string, after: number, options: ReaderOptions, headers: Record<string, string> = {}, cursorParam = 'Last-Event-ID'): Response {
    const log = this.get(id, owner);
    if (!log) throw streamNotFound(quoteForMessage(id));
    if (after + 1 < log.firstSeq) {
      throw new ApiError(
        'stream_events_dropped',
        `Events ${after + 1}-${log.firstSeq - 1} of stream ${id} are no longer kept (the stream outgrew its buffer); resume from event ${log.firstSeq - 1} or later, or run the request again.`,
      );
    }
    if (after >= log.nextSeq) {
      throw new ApiError('invalid_request', `Invalid value for '${cursorParam}': stream ${id} has sent events up to ${log.nextSeq - 1} only.`, cursorParam);
    }
    if (log.ended && after === log.nextSeq - 1) return new Response(null, { status: 204, headers: { 'X-Stream-Id': id, ...headers } });
    const body = log.reader(after + 1, options);
    return new Response(body, { status: 200, headers: { ...SSE_HEADERS, 'X-Stream-Id': id, ...headers } });
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

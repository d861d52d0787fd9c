/**
 * What every router shares: the Hono env of a request (its id, logger and owner), the server's
 * dependencies, and the serving parts a handler may use (503 while the model loads).
 */
import type { Context } from 'hono';
import type { Config } from '../config.ts';
import type { Logger } from '../lib/logger.ts';
import type { Serving, ServingSource } from '../serving.ts';
import type { Admission, Admitted } from './admission.ts';
import { ApiError } from './errors.ts';
import type { GenerationContext } from './generation.ts';
import type { SessionRuns } from './session-runs.ts';
import { connectionCloser, type StreamRegistry } from './streams.ts';

export type AppEnv = { Variables: { requestId: string; logger: Logger; owner: string } };
export type Ctx = Context<AppEnv>;

/** The server's parts, built once by createApp and handed to every router. */
export interface ServerDeps {
  runtime: ServingSource;
  config: Config;
  admission: Admission;
  streams: StreamRegistry;
  /** Streams of background responses (`background: true`), resumable for BACKGROUND_RESPONSE_STREAM_MS. */
  backgroundStreams: StreamRegistry;
  /** The generation running on each session (superseding, session-runs.ts). */
  runs: SessionRuns;
  /** Keep-alive comment interval on streams while nothing else is sent. */
  pingIntervalMs: number;
  now: () => number;
}

/**
 * Whose sessions (and streams) a request may see: its API key's id (`key_…`, see auth.ts), or "" when
 * the server runs without keys. The auth middleware sets it on every route but /healthz, /readyz (and
 * /metrics unless METRICS_REQUIRE_KEY); elsewhere this fails closed with a 500.
 */
export function ownerOf(c: Ctx): string {
  const owner = c.get('owner') as string | undefined;
  if (owner === undefined) throw new ApiError('internal', 'ownerOf used on a route without authentication');
  return owner;
}

/** The loaded parts, or 503 while loading / after a failed load (and, for new work, while draining). */
export function servingFor(runtime: ServingSource, forNewWork: boolean): Serving {
  if (runtime.state === 'draining' && forNewWork) throw new ApiError('shutting_down', 'The server is shutting down.');
  const parts = runtime.serving;
  if (parts) return parts;
  if (runtime.state === 'failed') throw new ApiError('model_failed', 'The model failed to load; see the server log.');
  throw new ApiError('model_loading', 'The model is still loading.');
}

/** What runGeneration needs of this request and of the server. */
export function generationContext(c: Ctx, deps: ServerDeps, parts: Serving, admitted: Admitted): GenerationContext {
  return {
    serving: parts,
    admitted,
    logger: c.get('logger'),
    clientSignal: c.req.raw.signal,
    pingIntervalMs: deps.pingIntervalMs,
    streams: deps.streams,
    runs: deps.runs,
    closeConnection: connectionCloser(c.env),
    headers: { 'X-Request-Id': c.get('requestId') },
    traceHeaders: { traceparent: c.req.header('traceparent'), tracestate: c.req.header('tracestate') },
    now: deps.now,
  };
}

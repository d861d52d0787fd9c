/**
 * The app-wide middleware, as small factories: the request context (id, logger, access log), API-key
 * authentication, and the answers for errors, unknown routes and wrong methods in OpenAI's format.
 */
import { randomBytes } from 'node:crypto';
import type { ErrorHandler, MiddlewareHandler, NotFoundHandler } from 'hono';
import { cors } from 'hono/cors';
import type { Logger } from '../lib/logger.ts';
import { isPublicPath, type ApiKeyAuth } from './auth.ts';
import type { AppEnv, Ctx } from './context.ts';
import type { ServingSource } from '../serving.ts';
import { ApiError, ClientGoneError, quoteForMessage } from './errors.ts';

const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** What the access log needs of @hono/node-server's `c.env.outgoing` (the ServerResponse). */
interface OutgoingResponse {
  once(event: 'close', listener: () => void): unknown;
  readonly writableFinished: boolean;
  /** Its 'close' has been emitted already (the client left while the body was read). */
  readonly closed: boolean;
}

/**
 * Gives every request an id (a well-formed incoming X-Request-Id, else a random one) and a logger
 * that carries it; answers with X-Request-Id and logs one line per request (health probes at debug).
 * Under @hono/node-server the line is written when the response has been sent or its connection
 * closed, so `ms` is the whole request, a stream's included, and `complete: false` says the client
 * left first; writing it there also keeps it off a stream's time to first token.
 */
export function requestContext(baseLogger: Logger): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const incoming = c.req.header('x-request-id');
    const requestId = incoming && REQUEST_ID_PATTERN.test(incoming) ? incoming : `req_${randomBytes(12).toString('hex')}`;
    const logger = baseLogger.child({ requestId });
    c.set('requestId', requestId);
    c.set('logger', logger);
    const started = performance.now();
    await next();
    c.res.headers.set('X-Request-Id', requestId);
    const { method, path } = c.req;
    const status = c.res.status;
    const write = (complete?: boolean) => {
      const fields = { method, path, status, ms: Math.round(performance.now() - started), ...(complete === false ? { complete } : {}) };
      if (path === '/healthz' || path === '/readyz') logger.debug(fields, 'request');
      else logger.info(fields, 'request');
    };
    const outgoing = (c.env as { outgoing?: OutgoingResponse } | undefined)?.outgoing;
    if (outgoing && typeof outgoing.once === 'function' && !outgoing.closed) outgoing.once('close', () => write(outgoing.writableFinished));
    else write(outgoing ? outgoing.writableFinished : undefined);
  };
}

/** `.`, `..` and their encodings (`%2e%2e`, `.%2E`): what URL parsing resolves against the segment before. */
function isDotSegment(segment: string): boolean {
  if (!segment.startsWith('.') && !segment.startsWith('%')) return false;
  let decoded: string;
  try {
    decoded = decodeURIComponent(segment);
  } catch {
    return false;
  }
  return decoded === '.' || decoded === '..';
}

/**
 * A request target with a dot segment is refused (400 invalid_path) before routing: URL parsing
 * resolves `/v1/sessions/%2e%2e/completions` to `/v1/completions`, so it would reach another route
 * than the one it names. Under @hono/node-server, `c.env.incoming.url` is the target as sent.
 */
export function refuseDotSegments(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const target = (c.env as { incoming?: { url?: string } } | undefined)?.incoming?.url;
    if (target !== undefined && target.split(/[?#]/, 1)[0].split('/').some(isDotSegment)) {
      return new ApiError('invalid_path', "The request path has a '.' or '..' segment (perhaps percent-encoded); ids cannot be '.' or '..'.").toResponse(c.get('requestId'));
    }
    await next();
  };
}

/** Headers a browser client may read on a cross-origin response: the ones the API documents. */
const EXPOSED_HEADERS = ['X-Session-Id', 'X-Stream-Id', 'X-Request-Id', 'X-Queue-Time-Ms', 'Retry-After'];

/**
 * CORS for CORS_ORIGINS (`*` for any origin), before authentication so a preflight (OPTIONS, which
 * carries no key) gets its 204. Any request header is allowed (the openai client sends its own
 * x-stainless-* headers, an EventSource sends Last-Event-ID); no credentials mode: keys travel in
 * Authorization, never in cookies.
 */
export function corsFor(origins: readonly string[]): MiddlewareHandler<AppEnv> {
  return cors({
    origin: origins.includes('*') ? '*' : [...origins],
    allowMethods: ['GET', 'HEAD', 'POST', 'DELETE', 'OPTIONS'],
    exposeHeaders: EXPOSED_HEADERS,
    maxAge: 600,
  });
}

/** Every route but the public ones needs a key (401 invalid_api_key otherwise) and gets its owner. */
export function apiKeyAuth(auth: ApiKeyAuth, metricsRequireKey: boolean, playground = false): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    if (isPublicPath(c.req.path, metricsRequireKey, playground)) return next();
    const owner = auth.ownerFor(c.req.header('authorization'));
    c.set('owner', owner);
    if (owner !== '') c.set('logger', c.get('logger').child({ owner }));
    await next();
  };
}

/**
 * ApiErrors as OpenAI error bodies; a gone client gets 499 (nobody reads it), an info line and a count
 * in warmkv_client_disconnects_total; anything else is a logged 500 that names no internals.
 */
export function errorHandler(baseLogger: Logger, runtime: ServingSource): ErrorHandler<AppEnv> {
  return (error, c) => {
    const requestId = c.get('requestId');
    if (error instanceof ClientGoneError) {
      (c.get('logger') ?? baseLogger).info({ phase: error.phase }, 'client disconnected');
      runtime.serving?.metrics.clientDisconnected(error.phase);
      return new Response(null, { status: 499 });
    }
    if (error instanceof ApiError) return error.toResponse(requestId);
    (c.get('logger') ?? baseLogger).error({ err: error.message, stack: error.stack }, 'unhandled error');
    return new ApiError('internal', 'internal').toResponse(requestId);
  };
}

export const notFound: NotFoundHandler<AppEnv> = (c) =>
  new ApiError('not_found', `No route for ${c.req.method} ${quoteForMessage(c.req.path)}.`).toResponse(c.get('requestId'));

/** For Hono's methodNotAllowed middleware: a known path with another method is 405 with Allow. */
export function methodNotAllowedAnswer(c: Ctx, methods: string[]): Response {
  const allow = methods.join(', ');
  return new ApiError('method_not_allowed', `${c.req.method} is not allowed on ${quoteForMessage(c.req.path)}; use ${allow}.`).toResponse(c.get('requestId'), { Allow: allow });
}

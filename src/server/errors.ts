/**
 * The one table from error kinds (the engine's and the HTTP layer's own) to status codes and OpenAI
 * error bodies: `{"error": {"message", "type", "param", "code"}}`.
 */
import type { EngineError, EngineErrorKind } from '../engine/types.ts';

export type HttpErrorKind =
  | 'invalid_json'
  | 'invalid_value'
  | 'unsupported_parameter'
  | 'model_not_found'
  | 'not_found'
  | 'method_not_allowed'
  | 'session_exists'
  | 'stream_not_found'
  | 'stream_events_dropped'
  | 'body_too_large'
  | 'unsupported_media_type'
  | 'invalid_path'
  | 'invalid_api_key'
  | 'too_many_sessions'
  | 'too_many_streams'
  | 'model_loading'
  | 'model_failed'
  | 'response_not_found'
  | 'previous_response_not_found'
  | 'response_in_progress'
  | 'response_not_cancellable';

export type ErrorKind = EngineErrorKind | HttpErrorKind;

interface ErrorSpec {
  status: number;
  type: string;
  /** `code` in the body; null where OpenAI sends none. */
  code: string | null;
  /** Seconds for a `Retry-After` header (429 and 503 always carry one). */
  retryAfter?: number;
  /** Extra response headers. */
  headers?: Record<string, string>;
}

export const ERROR_TABLE: Record<ErrorKind, ErrorSpec> = {
  invalid_json: { status: 400, type: 'invalid_request_error', code: 'invalid_json' },
  invalid_request: { status: 400, type: 'invalid_request_error', code: 'invalid_value' },
  invalid_value: { status: 400, type: 'invalid_request_error', code: 'invalid_value' },
  invalid_path: { status: 400, type: 'invalid_request_error', code: 'invalid_path' },
  unsupported_parameter: { status: 400, type: 'invalid_request_error', code: 'unsupported_parameter' },
  context_length_exceeded: { status: 400, type: 'invalid_request_error', code: 'context_length_exceeded' },
  request_too_large: { status: 400, type: 'invalid_request_error', code: 'request_too_large' },
  invalid_api_key: { status: 401, type: 'invalid_request_error', code: 'invalid_api_key', headers: { 'WWW-Authenticate': 'Bearer realm="warmkv"' } },
  too_many_sessions: { status: 403, type: 'invalid_request_error', code: 'too_many_sessions' },
  model_not_found: { status: 404, type: 'invalid_request_error', code: 'model_not_found' },
  session_not_found: { status: 404, type: 'invalid_request_error', code: 'session_not_found' },
  stream_not_found: { status: 404, type: 'invalid_request_error', code: 'stream_not_found' },
  not_found: { status: 404, type: 'invalid_request_error', code: 'not_found' },
  response_not_found: { status: 404, type: 'invalid_request_error', code: null },
  previous_response_not_found: { status: 404, type: 'invalid_request_error', code: 'previous_response_not_found' },
  method_not_allowed: { status: 405, type: 'invalid_request_error', code: 'method_not_allowed' },
  session_busy: { status: 409, type: 'invalid_request_error', code: 'session_busy' },
  session_exists: { status: 409, type: 'invalid_request_error', code: 'session_exists' },
  response_in_progress: { status: 409, type: 'invalid_request_error', code: 'response_in_progress' },
  response_not_cancellable: { status: 400, type: 'invalid_request_error', code: 'response_not_cancellable' },
  stream_events_dropped: { status: 410, type: 'invalid_request_error', code: 'stream_events_dropped' },
  body_too_large: { status: 413, type: 'invalid_request_error', code: 'body_too_large' },
  unsupported_media_type: { status: 415, type: 'invalid_request_error', code: 'unsupported_media_type' },
  queue_full: { status: 429, type: 'rate_limit_error', code: 'queue_full', retryAfter: 1 },
  cache_full: { status: 429, type: 'rate_limit_error', code: 'cache_full', retryAfter: 5 },
  batch_full: { status: 429, type: 'rate_limit_error', code: 'batch_full', retryAfter: 5 },
  too_many_streams: { status: 429, type: 'rate_limit_error', code: 'too_many_streams', retryAfter: 1 },
  internal: { status: 500, type: 'server_error', code: 'internal_error' },
  model_failed: { status: 503, type: 'service_unavailable_error', code: 'model_failed', retryAfter: 30 },
  model_loading: { status: 503, type: 'service_unavailable_error', code: 'model_loading', retryAfter: 5 },
  session_store_unavailable: { status: 503, type: 'service_unavailable_error', code: 'session_store_unavailable', retryAfter: 2 },
  shutting_down: { status: 503, type: 'service_unavailable_error', code: 'shutting_down', retryAfter: 5 },
};

export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** An error on its way to the client; thrown inside handlers, turned into a response by `onError`. */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly param: string | null = null,
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }

  /** `sessionId`: the request's session, so a session_not_found reads as the server's own (sessionNotFound). */
  static fromEngine(error: EngineError, sessionId?: string): ApiError {
    if (error.kind === 'session_not_found' && sessionId !== undefined) return sessionNotFound(sessionId);
    return new ApiError(error.kind, error.message, error.param ?? null, error.retryAfterSeconds);
  }

  get status(): number {
    return ERROR_TABLE[this.kind].status;
  }

  /** Internal errors never show their message: it may name internals. */
  body(requestId?: string): OpenAiErrorBody {
    const spec = ERROR_TABLE[this.kind];
    const message =
      this.kind === 'internal' ? `The server had an error while processing the request${requestId ? ` (request id ${requestId})` : ''}.` : this.message;
    return { error: { message, type: spec.type, param: this.param, code: spec.code } };
  }

  headers(): Record<string, string> {
    const spec = ERROR_TABLE[this.kind];
    const retry = this.retryAfterSeconds ?? spec.retryAfter;
    const headers = { ...spec.headers };
    if (retry !== undefined && (spec.status === 429 || spec.status === 503)) headers['Retry-After'] = String(Math.max(1, Math.ceil(retry)));
    return headers;
  }

  toResponse(requestId?: string, extraHeaders: Record<string, string> = {}): Response {
    return new Response(JSON.stringify(this.body(requestId)), {
      status: this.status,
      headers: { 'Content-Type': 'application/json', ...this.headers(), ...extraHeaders },
    });
  }
}

/**
 * The client went away before an answer could be sent: nobody reads the response. Not a server
 * error: answered 499 (which nobody receives), logged at info and counted by phase.
 */
export class ClientGoneError extends Error {
  override name = 'ClientGoneError';
  /** `body`: while the request body was being read; `generation`: while waiting for or running a non-streamed generation. */
  constructor(readonly phase: 'body' | 'generation' = 'generation') {
    super(`the client disconnected during the ${phase}`);
  }
}

/** The one wording of "no such thing": `<Thing> <id> not found.` Ids are checked before they get here, so echoing them is safe. */
export function sessionNotFound(id: string): ApiError {
  return new ApiError('session_not_found', `Session ${id} not found.`, 'session_id');
}

export function streamNotFound(id: string): ApiError {
  return new ApiError('stream_not_found', `Stream ${id} not found.`);
}

const PRINTABLE_SHORT = /^[\x21-\x7e]{1,200}$/;

/** A client-sent value fit to put in a message: short printable ASCII as is, anything else described, never echoed. */
export function quoteForMessage(value: string): string {
  return PRINTABLE_SHORT.test(value) ? value : `(not shown: ${value.length} characters${/[\x00-\x1f\x7f]/.test(value) ? ' with control characters' : ''})`;
}

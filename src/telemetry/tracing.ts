/**
 * OpenTelemetry spans following the GenAI semantic conventions: one span per generation named
 * "{gen_ai.operation.name} {gen_ai.request.model}", with children for the queue wait, the cache
 * lookup/restore, every prefill chunk and every decode step. Counts and ids only, never text.
 * The only module (with otel.ts) that imports OpenTelemetry.
 */
import { context, propagation, trace, SpanKind, SpanStatusCode, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { performance } from 'node:perf_hooks';
import type { EngineObserver } from '../engine/engine.ts';
import type { GenerationRequest, RequestRecord, Tier, Usage } from '../engine/types.ts';

/** What the request span needs beyond the engine request itself. */
export interface RequestSpanInfo {
  /** Incoming HTTP headers, for W3C traceparent / tracestate. */
  headers: Record<string, string | undefined>;
  stream: boolean;
}

export interface RequestSpanEnd {
  responseId?: string;
  finishReason?: string;
  usage?: Usage;
  /** Set when the request failed: a low-cardinality error kind. */
  errorType?: string;
}

/** performance.now() milliseconds -> epoch milliseconds, which span timestamps accept. */
const toEpoch = (ms: number) => performance.timeOrigin + ms;

export class Tracing implements EngineObserver {
  /**
   * Open request spans with the context their children start in (made once, not per step), keyed by
   * the request object handed to the engine: the engine's record of it carries that same object, and
   * unlike the client-supplied X-Request-Id it is one per request.
   */
  private readonly spans = new Map<Readonly<GenerationRequest>, { span: Span; context: Context }>();

  constructor(
    private readonly tracer: Tracer,
    private readonly modelId: string,
  ) {}

  /**
   * Opens the request span, as a child of the caller's trace when a traceparent header came in.
   * `request` is the very object then passed to `Engine.submit`: the engine's hooks find the span by it.
   */
  startRequest(request: Readonly<GenerationRequest>, info: RequestSpanInfo): void {
    const parent = propagation.extract(context.active(), info.headers);
    const operation = request.operation ?? 'text_completion';
    const { sampling } = request;
    const attributes: Record<string, string | number | boolean> = {
      'gen_ai.operation.name': operation,
      'gen_ai.request.model': this.modelId,
      'gen_ai.provider.name': 'warmkv',
      'gen_ai.request.stream': info.stream,
      'gen_ai.request.max_tokens': request.maxTokens,
      'gen_ai.request.temperature': sampling.temperature,
      'gen_ai.request.top_p': sampling.topP,
      'warmkv.request.id': request.requestId,
    };
    if (sampling.topK > 0) attributes['gen_ai.request.top_k'] = sampling.topK;
    if (request.seed !== undefined) attributes['gen_ai.request.seed'] = request.seed;
    if (request.sessionId) attributes['gen_ai.conversation.id'] = request.sessionId;
    const span = this.tracer.startSpan(`${operation} ${this.modelId}`, { kind: SpanKind.SERVER, attributes }, parent);
    this.spans.set(request, { span, context: trace.setSpan(parent, span) });
  }

  /** Closes the request span of the request `startRequest` was given: call when the response (or stream) has ended. */
  endRequest(request: Readonly<GenerationRequest>, end: RequestSpanEnd): void {
    const open = this.spans.get(request);
    if (!open) return;
    this.spans.delete(request);
    const span = open.span;
    if (end.responseId) span.setAttribute('gen_ai.response.id', end.responseId);
    if (end.finishReason) span.setAttribute('gen_ai.response.finish_reasons', [end.finishReason]);
    if (end.usage) {
      span.setAttribute('gen_ai.usage.input_tokens', end.usage.promptTokens);
      span.setAttribute('gen_ai.usage.output_tokens', end.usage.completionTokens);
      span.setAttribute('gen_ai.usage.cache_read.input_tokens', end.usage.cachedTokens);
      if (end.usage.droppedTokens > 0) span.setAttribute('warmkv.window.dropped_tokens', end.usage.droppedTokens);
    }
    if (end.errorType) {
      span.setAttribute('error.type', end.errorType);
      span.setStatus({ code: SpanStatusCode.ERROR });
    }
    span.end();
  }

  private child(sequence: RequestRecord, name: string, start: number, end: number, attributes: Record<string, string | number | boolean>): void {
    const parent = this.spans.get(sequence.request);
    if (!parent) return;
    this.tracer.startSpan(name, { startTime: start, attributes }, parent.context).end(end);
  }

  requestStarted(sequence: RequestRecord, info: { restoredFrom: Tier; restoreMs: number }): void {
    const admitted = sequence.admittedAt;
    this.child(sequence, 'queue', sequence.enqueuedAt, admitted, { 'warmkv.queue.ms': admitted - sequence.enqueuedAt });
    const restoreEnd = toEpoch(performance.now());
    this.child(sequence, 'cache.lookup', restoreEnd - info.restoreMs, restoreEnd, {
      'warmkv.cache.tier': info.restoredFrom,
      'warmkv.cache.cached_tokens': sequence.cachedTokens,
      'warmkv.cache.prompt_tokens': sequence.fullInput.length,
    });
  }

  prefillChunk(sequence: RequestRecord, info: { tokens: number; kvTokens: number; startMs: number; durationMs: number; lane: boolean }): void {
    this.child(sequence, 'prefill', toEpoch(info.startMs), toEpoch(info.startMs + info.durationMs), {
      'warmkv.prefill.tokens': info.tokens,
      'warmkv.kv.tokens': info.kvTokens,
      'warmkv.prefill.lane': info.lane,
    });
  }

  decodeStep(info: { sequences: readonly RequestRecord[]; kvTokens: number; startMs: number; durationMs: number }): void {
    const start = toEpoch(info.startMs);
    const end = toEpoch(info.startMs + info.durationMs);
    // The step's latency is the span's own duration; two attributes keep the many step spans small.
    for (const sequence of info.sequences) {
      this.child(sequence, 'decode', start, end, { 'warmkv.batch.size': info.sequences.length, 'warmkv.kv.tokens': sequence.cacheLength });
    }
  }

  windowDrop(sequence: RequestRecord, info: { droppedTokens: number; strategy: string }): void {
    this.spans.get(sequence.request)?.span.addEvent('window.drop', { 'warmkv.window.dropped_tokens': info.droppedTokens, 'warmkv.window.strategy': info.strategy });
  }
}

/** The tracer of the globally registered provider (a no-op one when tracing is not configured). */
export function globalTracer(): Tracer {
  return trace.getTracer('warmkv');
}

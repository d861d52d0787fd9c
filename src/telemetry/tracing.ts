/**
 * OpenTelemetry spans following the GenAI semantic conventions: one span per generation named
 * "{gen_ai.operation.name} {gen_ai.request.model}", with children for the queue wait, the cache
 * lookup/restore, every prefill chunk and every decode step. Counts and ids only, never text.
 * The only module (with otel.ts) that imports OpenTelemetry.
 */
import { context, propagation, trace, SpanKind, SpanStatusCode, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { performance } from 'node:perf_hooks';
import type { EngineObserver } from '../engine/engine.ts';
import type { RequestRecord, Tier, Usage } from '../engine/types.ts';

export interface RequestSpanInfo {
  requestId: string;
  operation: 'chat' | 'text_completion';
  /** Incoming HTTP headers, for W3C traceparent / tracestate. */
  headers: Record<string, string | undefined>;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  stream: boolean;
  sessionId?: string;
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
  /** Open request spans with the context their children start in (made once, not per step). */
  private readonly spans = new Map<string, { span: Span; context: Context }>();

  constructor(
    private readonly tracer: Tracer,
    private readonly modelId: string,
  ) {}

  /** Opens the request span, as a child of the caller's trace when a traceparent header came in. */
  startRequest(info: RequestSpanInfo): void {
    const parent = propagation.extract(context.active(), info.headers);
    const attributes: Record<string, string | number | boolean> = {
      'gen_ai.operation.name': info.operation,
      'gen_ai.request.model': this.modelId,
      'gen_ai.provider.name': 'warmkv',
      'gen_ai.request.stream': info.stream,
      'warmkv.request.id': info.requestId,
    };
    if (info.maxTokens !== undefined) attributes['gen_ai.request.max_tokens'] = info.maxTokens;
    if (info.temperature !== undefined) attributes['gen_ai.request.temperature'] = info.temperature;
    if (info.topP !== undefined) attributes['gen_ai.request.top_p'] = info.topP;
    if (info.topK !== undefined && info.topK > 0) attributes['gen_ai.request.top_k'] = info.topK;
    if (info.seed !== undefined) attributes['gen_ai.request.seed'] = info.seed;
    if (info.sessionId) attributes['gen_ai.conversation.id'] = info.sessionId;
    const span = this.tracer.startSpan(`${info.operation} ${this.modelId}`, { kind: SpanKind.SERVER, attributes }, parent);
    this.spans.set(info.requestId, { span, context: trace.setSpan(parent, span) });
  }

  /** Closes the request span: call when the response (or stream) has ended. */
  endRequest(requestId: string, end: RequestSpanEnd): void {
    const open = this.spans.get(requestId);
    if (!open) return;
    this.spans.delete(requestId);
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

  private child(sequence: RequestRecord, name: string, start: number, end: number, attributes: Record<string, string | number>): void {
    const parent = this.spans.get(sequence.request.requestId);
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

  prefillChunk(sequence: RequestRecord, info: { tokens: number; kvTokens: number; startMs: number; durationMs: number }): void {
    this.child(sequence, 'prefill', toEpoch(info.startMs), toEpoch(info.startMs + info.durationMs), {
      'warmkv.prefill.tokens': info.tokens,
      'warmkv.kv.tokens': info.kvTokens,
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
    this.spans.get(sequence.request.requestId)?.span.addEvent('window.drop', { 'warmkv.window.dropped_tokens': info.droppedTokens, 'warmkv.window.strategy': info.strategy });
  }
}

/** The tracer of the globally registered provider (a no-op one when tracing is not configured). */
export function globalTracer(): Tracer {
  return trace.getTracer('warmkv');
}

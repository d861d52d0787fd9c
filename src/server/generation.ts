/**
 * Runs one generation for an HTTP request and answers in OpenAI's shapes: a JSON body, or an SSE
 * stream of chunks. Response headers wait for the engine's first event, so anything that fails
 * before generation starts (queue timeout, cache full) still gets its own status code.
 *
 * A stream's chunks go into an event log (src/streams/) that the connection reads; with resumption on,
 * the generation no longer depends on the connection: a client that loses it resumes with
 * GET /v1/streams/{id}, and only DELETE (or nobody coming back in time) stops it early.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { FinishReason, GenerationEvent, GenerationRequest, Usage } from '../engine/types.ts';
import type { Logger } from '../lib/logger.ts';
import type { Serving } from '../serving.ts';
import type { Admitted } from './admission.ts';
import { ApiError, ClientGoneError } from './errors.ts';
import { LogprobFormatter } from './logprobs.ts';
import { SSE_HEADERS } from './sse.ts';
import type { EventLog } from '../streams/registry.ts';
import type { StreamRegistry } from './streams.ts';

export type ResponseFormat = 'completion' | 'chat';

export interface GenerationJob {
  format: ResponseFormat;
  request: Omit<GenerationRequest, 'signal'>;
  stream: boolean;
  includeUsage: boolean;
  /** Completions `echo`: text put before the output. */
  echo: string;
  /** For logs: which endpoint. */
  route: string;
}

export interface GenerationContext {
  serving: Serving;
  /** How this request submits, and undoes its admission when it never starts (admission.ts). */
  admitted: Admitted;
  logger: Logger;
  /** Aborts when the client goes away (Hono's request signal). */
  clientSignal: AbortSignal | undefined;
  pingIntervalMs: number;
  /** Where streams are kept for resumption (and which says whether they are). */
  streams: StreamRegistry;
  /** Drops the connection under the response (a stalled stream reader); absent outside a Node server. */
  closeConnection?: () => void;
  /** Headers every response of this request carries (X-Request-Id). */
  headers: Record<string, string>;
  /** The incoming traceparent / tracestate, so spans join the caller's trace. */
  traceHeaders: Record<string, string | undefined>;
  now: () => number;
}

/** `cmpl-` / `chatcmpl-` and 128 random bits. */
function completionId(format: ResponseFormat): string {
  return `${format === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(16).toString('hex')}`;
}

interface OpenAiUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  /** warmkv: tokens the sliding window dropped from the session's cache during this request. */
  dropped_tokens: number;
}

function openAiUsage(usage: Usage): OpenAiUsage {
  return {
    prompt_tokens: usage.promptTokens,
    completion_tokens: usage.completionTokens,
    total_tokens: usage.promptTokens + usage.completionTokens,
    prompt_tokens_details: { cached_tokens: usage.cachedTokens },
    dropped_tokens: usage.droppedTokens,
  };
}

type EndEvent = Extract<GenerationEvent, { type: 'end' }>;
type StartEvent = Extract<GenerationEvent, { type: 'start' }>;

/** Finish reasons a client sees; cancelled and error never reach a choice. */
function choiceFinish(reason: FinishReason): 'stop' | 'length' {
  return reason === 'length' ? 'length' : 'stop';
}

export { ClientGoneError };

export async function runGeneration(ctx: GenerationContext, job: GenerationJob): Promise<Response> {
  const { serving, logger } = ctx;
  const began = performance.now();
  const abort = new AbortController();
  const onClientAbort = () => abort.abort();
  if (ctx.clientSignal?.aborted) abort.abort();
  ctx.clientSignal?.addEventListener('abort', onClientAbort, { once: true });
  const detach = () => ctx.clientSignal?.removeEventListener('abort', onClientAbort);

  const id = completionId(job.format);
  const requestId = job.request.requestId;
  const { sampling } = job.request;
  serving.tracing.startRequest({
    requestId,
    operation: job.format === 'chat' ? 'chat' : 'text_completion',
    headers: ctx.traceHeaders,
    maxTokens: job.request.maxTokens,
    temperature: sampling.temperature,
    topP: sampling.topP,
    topK: sampling.topK,
    seed: job.request.seed,
    stream: job.stream,
    sessionId: job.request.sessionId,
  });
  const failBeforeStart = (error: ApiError | ClientGoneError): never => {
    detach();
    ctx.admitted.refused();
    serving.tracing.endRequest(requestId, { errorType: error instanceof ApiError ? error.kind : 'client_gone' });
    throw error;
  };

  let submitted;
  try {
    submitted = await ctx.admitted.submit({ ...job.request, operation: job.format === 'chat' ? 'chat' : 'text_completion', signal: abort.signal });
  } catch (error) {
    if (error instanceof ApiError) return failBeforeStart(error);
    throw error;
  }
  if (!submitted.ok) return failBeforeStart(ApiError.fromEngine(submitted.error, job.request.sessionId));
  const events = submitted.events[Symbol.asyncIterator]();
  const first = await events.next();
  if (first.done) return failBeforeStart(new ApiError('internal', 'the generation ended without events'));
  if (first.value.type === 'end') {
    const end = first.value;
    return failBeforeStart(end.error ? ApiError.fromEngine(end.error, job.request.sessionId) : new ClientGoneError());
  }
  const start = first.value as StartEvent;

  const created = Math.floor(ctx.now() / 1000);
  const sessionId = job.request.sessionId !== undefined ? submitted.sessionId : undefined;
  const headers: Record<string, string> = { ...ctx.headers };
  if (sessionId !== undefined) headers['X-Session-Id'] = sessionId;
  // Headers go out after the engine's start event, so the time spent waiting for admission is known.
  headers['X-Queue-Time-Ms'] = String(Math.round(start.queueMs));
  const model = serving.model;
  const log = logger.child({ sessionId, route: job.route });
  let firstTokenMs: number | null = null;

  const finished = (end: EndEvent) => {
    detach();
    serving.tracing.endRequest(requestId, {
      responseId: id,
      finishReason: end.finishReason,
      usage: end.usage,
      errorType: end.finishReason === 'error' ? (end.error?.kind ?? '_OTHER') : end.finishReason === 'cancelled' ? 'cancelled' : undefined,
    });
    const fields = {
      finishReason: end.finishReason,
      promptTokens: end.usage.promptTokens,
      cachedTokens: end.usage.cachedTokens,
      completionTokens: end.usage.completionTokens,
      droppedTokens: end.usage.droppedTokens,
      queueMs: start.queueMs,
      ttftMs: firstTokenMs === null ? null : Math.round(firstTokenMs - began),
      durationMs: Math.round(performance.now() - began),
      stream: job.stream,
      errorKind: end.error?.kind,
    };
    if (end.finishReason === 'error') log.warn(fields, 'generation failed');
    else log.info(fields, 'generation finished');
  };

  const logprobs = job.request.logprobs === undefined ? null : new LogprobFormatter(job.format, model.loaded.tokenizer, job.echo.length);
  /** What a choice carries when logprobs were asked for and no token came: the empty shape, else null. */
  const emptyLogprobs = () => (logprobs === null ? null : job.format === 'chat' ? { content: [], refusal: null } : { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] });

  if (!job.stream) {
    let text = job.echo;
    let end: EndEvent | undefined;
    for (let next = await events.next(); !next.done; next = await events.next()) {
      const event = next.value;
      if (event.type === 'token') {
        firstTokenMs ??= performance.now();
        if (event.logprob) logprobs?.add(event.tokenId, event.logprob);
        text += event.text;
      } else if (event.type === 'end') {
        end = event;
        text += event.text;
      }
    }
    if (!end) throw new ApiError('internal', 'the generation ended without an end event');
    finished(end);
    if (end.finishReason === 'error') throw ApiError.fromEngine(end.error ?? { kind: 'internal', message: 'generation failed' });
    if (end.finishReason === 'cancelled') throw new ClientGoneError();
    const finishReason = choiceFinish(end.finishReason);
    const base = { id, object: job.format === 'chat' ? 'chat.completion' : 'text_completion', created, model: model.id, system_fingerprint: model.fingerprint };
    const choiceLogprobs = logprobs?.take() ?? emptyLogprobs();
    const choice =
      job.format === 'chat'
        ? { index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: choiceLogprobs, finish_reason: finishReason }
        : { index: 0, text, logprobs: choiceLogprobs, finish_reason: finishReason };
    const body: Record<string, unknown> = { ...base, choices: [choice], usage: openAiUsage(end.usage) };
    if (sessionId !== undefined) body.session_id = sessionId;
    return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json', ...headers } });
  }

  const object = job.format === 'chat' ? 'chat.completion.chunk' : 'text_completion';
  const chunk = (choices: unknown[], usage?: OpenAiUsage): Record<string, unknown> => {
    const out: Record<string, unknown> = { id, object, created, model: model.id, system_fingerprint: model.fingerprint, choices };
    if (job.includeUsage) out.usage = usage ?? null;
    if (sessionId !== undefined) out.session_id = sessionId;
    return out;
  };
  /** A chunk's choice; it carries the logprobs of the tokens whose text it brings (and of held-back ones before). */
  const textChoice = (text: string, finishReason: 'stop' | 'length' | null = null) => {
    const chunkLogprobs = logprobs?.take() ?? null;
    return job.format === 'chat'
      ? { index: 0, delta: text === '' && finishReason ? {} : { content: text }, logprobs: chunkLogprobs, finish_reason: finishReason }
      : { index: 0, text, logprobs: chunkLogprobs, finish_reason: finishReason };
  };

  /** Reads the engine's events into the log, whoever reads the log, until the generation ends. */
  const produce = async (writer: EventLog) => {
    let end: EndEvent | undefined;
    try {
      if (job.format === 'chat') writer.send(chunk([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
      if (job.echo) writer.send(chunk([textChoice(job.echo)]));
      for (let next = await events.next(); !next.done; next = await events.next()) {
        const event = next.value;
        if (event.type === 'token') {
          firstTokenMs ??= performance.now();
          if (event.logprob) logprobs?.add(event.tokenId, event.logprob);
          if (event.text) writer.send(chunk([textChoice(event.text)]));
        } else if (event.type === 'end') {
          end = event;
        }
      }
    } catch (error) {
      log.error({ err: (error as Error).message }, 'stream failed');
      serving.tracing.endRequest(requestId, { responseId: id, errorType: 'internal' });
      abort.abort();
      writer.send(new ApiError('internal', 'stream failed').body());
      return;
    }
    if (!end) {
      serving.tracing.endRequest(requestId, { responseId: id, errorType: 'internal' });
      writer.send(new ApiError('internal', 'no end event').body());
      return;
    }
    finished(end);
    if (end.finishReason === 'cancelled') return;
    if (end.finishReason === 'error') {
      writer.send(ApiError.fromEngine(end.error ?? { kind: 'internal', message: 'generation failed' }).body());
      return;
    }
    if (end.text) writer.send(chunk([textChoice(end.text)]));
    writer.send(chunk([textChoice('', choiceFinish(end.finishReason))]));
    if (job.includeUsage) writer.send(chunk([], openAiUsage(end.usage)));
    writer.sendDone();
  };

  const eventLog = ctx.streams.open({ id, owner: job.request.owner, abort, maxTokens: job.request.maxTokens });
  // A resumable stream outlives its connection: only DELETE or the registry stop it from now on.
  // Otherwise the client signal and the connection's reader both stop it, as before.
  if (ctx.streams.enabled) {
    detach();
    headers['X-Stream-Id'] = id;
  }
  void produce(eventLog)
    .catch(() => {})
    .finally(() => eventLog.end());
  const body = eventLog.reader(0, { pingIntervalMs: ctx.pingIntervalMs, closeConnection: ctx.closeConnection });
  return new Response(body, { status: 200, headers: { ...SSE_HEADERS, ...headers } });
}

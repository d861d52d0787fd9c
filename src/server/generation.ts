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
import type { PromptLogprob } from './prompt-logprobs.ts';
import { sumUsage, type SharedPrompt } from './choices.ts';
import { LogprobFormatter } from './logprobs.ts';
import { ApiError, ClientGoneError } from './errors.ts';
import { SSE_HEADERS, jsonTemplate } from './sse.ts';
import type { CancelReason, EventLog } from '../streams/registry.ts';
import type { SessionRuns } from './session-runs.ts';
import type { StreamRegistry } from './streams.ts';
import { stepStatsOf, type StepStat } from './step-stats.ts';
import type { ToolCallFormat } from '../model/chat-template.ts';
import { ChatToolStream, chatToolAnswer } from './tool-calls.ts';
import { TOOL_EVENTS_PER_TOKEN } from './tool-stream.ts';

export type ResponseFormat = 'completion' | 'chat';

export interface GenerationJob {
  format: ResponseFormat;
  request: Omit<GenerationRequest, 'signal'>;
  stream: boolean;
  includeUsage: boolean;
  /** warmkv `stream_options.include_step_stats`: chunks carry this request's engine steps (step-stats.ts). */
  includeStepStats: boolean;
  /** Completions `echo`: text put before the output. */
  echo: string;
  /** For logs: which endpoint. */
  route: string;
  /**
   * Completions with several prompts: choices 1.. (choice 0 is `request` and `echo`). Each is its own
   * engine request, submitted together so the scheduler batches them; none may name a session.
   */
  extraChoices?: Array<{ request: Omit<GenerationRequest, 'signal'>; echo: string; promptLogprobs?: PromptLogprob[] }>;
  /** Completions `echo` with `logprobs`: the route scores the prompts (prompt-logprobs.ts) into `promptLogprobs`. */
  echoLogprobs?: boolean;
  promptLogprobs?: PromptLogprob[];
  /** Chat with tools: the reply is read for tool calls in this format (tool-stream.ts), as it streams. */
  toolCallFormat?: ToolCallFormat;
  /** `n` > 1: the choices share one prompt, prefilled once on sessions of the server's (choices.ts). */
  shared?: SharedPrompt;
  /** A stateless request on an anonymous prefix entry (prefix-reuse.ts): its session is never shown nor superseded. */
  prefixEntry?: boolean;
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
  /** The generation running on each session, for superseding one nobody reads (session-runs.ts). */
  runs: SessionRuns;
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

/** Why the generation behind `signal` was stopped: the reason the server gave, or the client leaving. */
function cancelReasonOf(signal: AbortSignal): CancelReason {
  const reason: unknown = signal.reason;
  return typeof reason === 'string' ? (reason as CancelReason) : 'disconnected';
}

/** Finish reasons a client sees in a complete answer; cancelled and error never reach one. */
function choiceFinish(reason: FinishReason): 'stop' | 'length' {
  return reason === 'length' ? 'length' : 'stop';
}

export { ClientGoneError };

/** One choice of a response: its engine request and what the server tracks of it. */
interface Choice {
  index: number;
  request: Omit<GenerationRequest, 'signal'>;
  echo: string;
  events?: AsyncIterator<GenerationEvent>;
  start?: StartEvent;
  firstTokenMs: number | null;
  logprobs: LogprobFormatter | null;
  /** The request submitted to the engine while its tracing span is open (the span's key). */
  traced: GenerationRequest | null;
}

export async function runGeneration(ctx: GenerationContext, job: GenerationJob): Promise<Response> {
  const { serving, logger } = ctx;
  const model = serving.model;
  const began = performance.now();
  const abort = new AbortController();
  const onClientAbort = () => abort.abort();
  if (ctx.clientSignal?.aborted) abort.abort();
  ctx.clientSignal?.addEventListener('abort', onClientAbort, { once: true });
  const stepStats = job.stream && job.includeStepStats ? stepStatsOf(serving.engine) : null;
  stepStats?.watch(abort.signal);
  const detach = () => ctx.clientSignal?.removeEventListener('abort', onClientAbort);

  const id = completionId(job.format);
  const operation = job.format === 'chat' ? 'chat' : 'text_completion';
  const choices: Choice[] = [{ request: job.request, echo: job.echo, promptLogprobs: job.promptLogprobs }, ...(job.extraChoices ?? [])].map((c, index) => ({
    index,
    request: c.request,
    echo: c.echo,
    firstTokenMs: null,
    logprobs: c.request.logprobs === undefined ? null : new LogprobFormatter(job.format, model.loaded.tokenizer, c.echo.length, c.promptLogprobs),
    traced: null,
  }));
  const endTrace = (choice: Choice, result: Parameters<Serving['tracing']['endRequest']>[1]) => {
    if (!choice.traced) return;
    serving.tracing.endRequest(choice.traced, result);
    choice.traced = null;
  };
  let settleEnded!: () => void;
  const ended = new Promise<void>((resolve) => (settleEnded = resolve));
  const failBeforeStart = (error: ApiError | ClientGoneError): never => {
    settleEnded();
    detach();
    // The choices that did start are cancelled; their ends are never read.
    abort.abort();
    stepStats?.unwatch(abort.signal);
    ctx.admitted.refused();
    for (const choice of choices) endTrace(choice, { errorType: error instanceof ApiError ? error.kind : 'client_gone' });
    throw error;
  };

  // With n choices, the sessions are the server's except the one the client named; a prefix entry is the server's too.
  const sessionKey = job.shared ? job.shared.sessionId : job.prefixEntry ? undefined : job.request.sessionId;
  void ended.then(() => job.shared?.release());
  // A generation on this session that nobody reads any more (its client pressed Stop) gives way.
  if (sessionKey !== undefined) await ctx.runs.supersede(job.request.owner, sessionKey);
  // Every choice is submitted before any is awaited, so the engine batches them.
  let sessionId: string | undefined;
  const firsts: Array<Promise<IteratorResult<GenerationEvent>> | null> = [];
  for (const choice of choices) {
    const { request } = choice;
    const submittedRequest: GenerationRequest = { ...request, operation, signal: abort.signal };
    serving.tracing.startRequest(submittedRequest, { headers: ctx.traceHeaders, stream: job.stream });
    choice.traced = submittedRequest;
    let submitted;
    try {
      submitted = await ctx.admitted.submit(submittedRequest);
    } catch (error) {
      if (error instanceof ApiError) return failBeforeStart(error);
      stepStats?.unwatch(abort.signal);
      throw error;
    }
    if (!submitted.ok) return failBeforeStart(ApiError.fromEngine(submitted.error, request.sessionId));
    if (choice.index === 0 && sessionKey !== undefined) sessionId = submitted.sessionId;
    choice.events = submitted.events[Symbol.asyncIterator]();
    firsts.push(choice.events.next());
  }
  let streamLog: EventLog | undefined;
  if (sessionKey !== undefined) {
    ctx.runs.track(job.request.owner, sessionKey, {
      hasReader: () => (streamLog ? streamLog.readers.size > 0 : !abort.signal.aborted && !ctx.clientSignal?.aborted),
      cancel: (reason) => abort.abort(reason),
      ended,
    });
  }
  for (const [i, pending] of firsts.entries()) {
    const first = await pending!;
    if (first.done) return failBeforeStart(new ApiError('internal', 'the generation ended without events'));
    if (first.value.type === 'end') {
      const end = first.value;
      return failBeforeStart(end.error ? ApiError.fromEngine(end.error, choices[i].request.sessionId) : new ClientGoneError());
    }
    choices[i].start = first.value as StartEvent;
  }

  const created = Math.floor(ctx.now() / 1000);
  const headers: Record<string, string> = { ...ctx.headers };
  if (sessionId !== undefined) headers['X-Session-Id'] = sessionId;
  // Headers go out after the engine's start events, so the time spent waiting for admission is known.
  const queueMs = Math.max(...choices.map((c) => c.start!.queueMs));
  headers['X-Queue-Time-Ms'] = String(Math.round(queueMs));
  const log = logger.child({ sessionId, route: job.route });
  let open = choices.length;

  const finished = (choice: Choice, end: EndEvent) => {
    if (--open === 0) detach();
    endTrace(choice, {
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
      queueMs: choice.start!.queueMs,
      ttftMs: choice.firstTokenMs === null ? null : Math.round(choice.firstTokenMs - began),
      durationMs: Math.round(performance.now() - began),
      stream: job.stream,
      errorKind: end.error?.kind,
      ...(choices.length > 1 ? { choice: choice.index } : {}),
    };
    if (end.finishReason === 'error') log.warn(fields, 'generation failed');
    else log.info(fields, 'generation finished');
  };
  /** What a choice carries when logprobs were asked for and no token came: the empty shape, else null. */
  const emptyLogprobs = (choice: Choice) =>
    choice.logprobs === null ? null : job.format === 'chat' ? { content: [], refusal: null } : { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  /** Reads one choice's events to its end, handing each token to `onToken`. */
  const pump = async (choice: Choice, onToken: (text: string) => void): Promise<EndEvent | undefined> => {
    const events = choice.events!;
    for (let next = await events.next(); !next.done; next = await events.next()) {
      const event = next.value;
      if (event.type === 'token') {
        choice.firstTokenMs ??= performance.now();
        if (event.logprob) choice.logprobs?.add(event.tokenId, event.logprob);
        onToken(event.text);
      } else if (event.type === 'end') return event;
    }
    return undefined;
  };

  if (!job.stream) {
    const answers = await Promise.all(
      choices.map(async (choice) => {
        let text = choice.echo;
        const end = await pump(choice, (piece) => (text += piece));
        if (!end) {
          abort.abort();
          endTrace(choice, { responseId: id, errorType: 'internal' });
          return { choice, text, end, error: new ApiError('internal', 'the generation ended without an end event') };
        }
        finished(choice, end);
        // One choice failing ends the others: the response is all or nothing.
        if (end.finishReason === 'error' || end.finishReason === 'cancelled') abort.abort();
        return { choice, text: text + end.text, end, error: null };
      }),
    ).finally(settleEnded);
    for (const { end, error } of answers) {
      if (error) throw error;
      if (end!.finishReason === 'error') throw ApiError.fromEngine(end!.error ?? { kind: 'internal', message: 'generation failed' });
    }
    if (answers.some(({ end }) => end!.finishReason === 'cancelled')) throw new ClientGoneError();
    const base = { id, object: job.format === 'chat' ? 'chat.completion' : 'text_completion', created, model: model.id, system_fingerprint: model.fingerprint };
    const body: Record<string, unknown> = {
      ...base,
      choices: answers.map(({ choice, text, end }) => {
        const finishReason = choiceFinish(end!.finishReason);
        const logprobs = choice.logprobs?.take() ?? emptyLogprobs(choice);
        const tools = job.toolCallFormat ? chatToolAnswer(text, job.toolCallFormat, end!.finishReason) : null;
        if (tools) return { index: choice.index, message: tools.message, logprobs, finish_reason: tools.finishReason };
        return job.format === 'chat'
          ? { index: choice.index, message: { role: 'assistant', content: text, refusal: null }, logprobs, finish_reason: finishReason }
          : { index: choice.index, text, logprobs, finish_reason: finishReason };
      }),
      usage: openAiUsage(sumUsage(answers.map(({ end }) => end!.usage), job.shared)),
    };
    if (sessionId !== undefined) body.session_id = sessionId;
    return new Response(JSON.stringify(body), { status: 200, headers: { 'Content-Type': 'application/json', ...headers } });
  }

  const object = job.format === 'chat' ? 'chat.completion.chunk' : 'text_completion';
  const chunk = (parts: unknown[], usage?: OpenAiUsage): Record<string, unknown> => {
    const out: Record<string, unknown> = { id, object, created, model: model.id, system_fingerprint: model.fingerprint, choices: parts };
    if (job.includeUsage) out.usage = usage ?? null;
    if (sessionId !== undefined) out.session_id = sessionId;
    if (stepStats) {
      // An extra field on an ordinary chunk: OpenAI clients pass unknown fields through untouched.
      const steps: StepStat[] = stepStats.take(abort.signal);
      out.warmkv = { steps };
    }
    return out;
  };
  /** A chunk's choice; it carries the logprobs of the tokens whose text it brings (and of held-back ones before). */
  const textChoice = (choice: Choice, text: string, finishReason: 'stop' | 'length' | 'tool_calls' | 'cancelled' | null = null) => {
    const logprobs = choice.logprobs?.take() ?? null;
    return job.format === 'chat'
      ? { index: choice.index, delta: text === '' && finishReason ? {} : { content: text }, logprobs, finish_reason: finishReason }
      : { index: choice.index, text, logprobs, finish_reason: finishReason };
  };

  /** Reads every choice's events into the log, whoever reads the log, until all generations end. */
  const produce = async (writer: EventLog) => {
    let failure: ReturnType<ApiError['body']> | null = null;
    const ends = await Promise.all(
      choices.map(async (choice) => {
        let end: EndEvent | undefined;
        const sendDelta = (delta: unknown) => writer.send(chunk([{ index: choice.index, delta, logprobs: choice.logprobs?.take() ?? null, finish_reason: null }]));
        const tools = job.toolCallFormat ? new ChatToolStream(job.toolCallFormat, sendDelta) : null;
        /** The text the engine's stop check held back (and all the reader did), then the finish reason. */
        const sendRest = (text: string) => {
          if (tools) return tools.finish(text, end!.finishReason);
          if (text) writer.send(chunk([textChoice(choice, text)]));
          return choiceFinish(end!.finishReason);
        };
        try {
          if (job.format === 'chat') writer.send(chunk([{ index: choice.index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
          if (choice.echo) writer.send(chunk([textChoice(choice, choice.echo)]));
          // Without per-token fields (logprobs, step stats) a token's chunk is a template around its text.
          const tokenChunk = choice.logprobs === null && !stepStats ? jsonTemplate((text) => chunk([textChoice(choice, text)])) : null;
          end = await pump(choice, (piece) => {
            if (!piece || failure) return;
            if (tools) tools.push(piece);
            else writer.sendJson(tokenChunk ? tokenChunk.prefix + JSON.stringify(piece) + tokenChunk.suffix : JSON.stringify(chunk([textChoice(choice, piece)])));
          });
        } catch (error) {
          log.error({ err: (error as Error).message }, 'stream failed');
          endTrace(choice, { responseId: id, errorType: 'internal' });
          abort.abort();
          failure ??= new ApiError('internal', 'stream failed').body();
          return undefined;
        }
        if (!end) {
          endTrace(choice, { responseId: id, errorType: 'internal' });
          abort.abort();
          failure ??= new ApiError('internal', 'no end event').body();
          return undefined;
        }
        finished(choice, end);
        if (end.finishReason === 'error') {
          abort.abort();
          failure ??= ApiError.fromEngine(end.error ?? { kind: 'internal', message: 'generation failed' }).body();
        }
        if (end.finishReason === 'cancelled' && !failure) {
          // Whoever reads or resumes the stream sees it was stopped, and why; never a silent close.
          sendRest(end.text);
          writer.send({ ...chunk([textChoice(choice, '', 'cancelled')]), cancel_reason: cancelReasonOf(abort.signal) });
          return end;
        }
        if (end.finishReason === 'error' || failure) return end;
        const finishReason = sendRest(end.text);
        writer.send(chunk([textChoice(choice, '', finishReason)]));
        return end;
      }),
    );
    if (failure) {
      writer.send(failure);
      return;
    }
    if (job.includeUsage) writer.send(chunk([], openAiUsage(sumUsage(ends.map((end) => end!.usage), job.shared))));
    writer.sendDone();
  };

  const maxTokens = choices.reduce((sum, c) => sum + c.request.maxTokens, 0);
  const eventLog = ctx.streams.open({ id, owner: job.request.owner, abort, maxTokens: maxTokens * (job.toolCallFormat ? TOOL_EVENTS_PER_TOKEN : 1) });
  streamLog = eventLog;
  // A resumable stream outlives its connection: only DELETE or the registry stop it from now on.
  // Otherwise the client signal and the connection's reader both stop it, as before.
  if (ctx.streams.enabled) {
    detach();
    headers['X-Stream-Id'] = id;
  }
  void produce(eventLog)
    .catch(() => {})
    .finally(() => {
      stepStats?.unwatch(abort.signal);
      eventLog.end();
      settleEnded();
    });
  const body = eventLog.reader(0, { pingIntervalMs: ctx.pingIntervalMs, closeConnection: ctx.closeConnection });
  return new Response(body, { status: 200, headers: { ...SSE_HEADERS, ...headers } });
}

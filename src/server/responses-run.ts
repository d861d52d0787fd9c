/**
 * Runs one POST /v1/responses generation and answers in OpenAI's Responses shapes: the response
 * object as JSON, or the named SSE events (response.created ... response.completed) with
 * `sequence_number` equal to the event's id in the stream log, so `starting_after=N` resumes after N.
 *
 * The record enters the store only once the engine has started the request: a request refused before
 * that (bad input, queue or cache full, a limit) leaves nothing behind, and the session this request
 * created is removed (admission.ts).
 */
import { performance } from 'node:perf_hooks';
import type { GenerationEvent, GenerationRequest } from '../engine/types.ts';
import type { ResponseStore, StoredResponse, Transcript } from '../responses/store.ts';
import { ApiError } from './errors.ts';
import { ClientGoneError, type GenerationContext, type GenerationJob } from './generation.ts';
import { outputItems } from './responses-items.ts';
import { ResponseEvents, ResponseOutput } from './responses-output.ts';
import { SSE_HEADERS } from './sse.ts';
import { templateArguments } from './tool-calls.ts';
import { TOOL_EVENTS_PER_TOKEN } from './tool-stream.ts';
import type { StreamRegistry } from './streams.ts';

/** Events a response stream sends besides its deltas (created ... completed), with room to spare. */
const RESPONSE_EXTRA_EVENTS = 10;

export interface ResponseRun {
  job: GenerationJob;
  /** The rendered prompt (`job.request.input` are its tokens, or the parent's tokens plus the rest's). */
  promptText: string;
  /** Built before submission; kept (when `params.store`) once the engine starts it. */
  record: StoredResponse;
  responses: ResponseStore;
  /** Where background responses keep their events for GET ?stream=true. */
  backgroundStreams: StreamRegistry;
  /** The request never started: undo what the route prepared (a branch's copied KV). */
  onRefused?: () => void;
  /** The generation has ended (the record holds its result; the engine has released the session). */
  onEnded?: (record: StoredResponse) => void;
}

type EndEvent = Extract<GenerationEvent, { type: 'end' }>;

/** The response object exactly as OpenAI sends it. */
export function responseObject(r: StoredResponse, snapshot: 'start' | 'current' = 'current'): Record<string, unknown> {
  const p = r.params;
  const usage = r.usage && {
    input_tokens: r.usage.inputTokens,
    input_tokens_details: { cached_tokens: r.usage.cachedTokens },
    output_tokens: r.usage.outputTokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: r.usage.inputTokens + r.usage.outputTokens,
  };
  const hasOutput = snapshot === 'current' && r.status !== 'queued' && (r.status !== 'failed' || r.outputText !== '');
  return {
    id: r.id,
    object: 'response',
    created_at: r.createdAt,
    status: snapshot === 'start' ? (p.background ? 'queued' : 'in_progress') : r.status,
    background: p.background,
    completed_at: snapshot === 'start' ? null : r.completedAt,
    error: snapshot === 'start' ? null : r.error,
    incomplete_details: snapshot === 'start' || !r.incompleteReason ? null : { reason: r.incompleteReason },
    instructions: p.instructions,
    max_output_tokens: p.maxOutputTokens,
    max_tool_calls: p.maxToolCalls ?? null,
    model: p.model,
    output: hasOutput ? outputItems(r) : [],
    parallel_tool_calls: p.parallelToolCalls ?? true,
    previous_response_id: r.parentId,
    prompt_cache_key: null,
    reasoning: { effort: null, summary: null },
    safety_identifier: null,
    service_tier: 'default',
    store: p.store,
    temperature: p.temperature,
    text: { format: p.textFormat ?? { type: 'text' }, verbosity: 'medium' },
    tool_choice: p.toolChoice ?? 'auto',
    tools: p.tools ?? [],
    top_logprobs: 0,
    top_p: p.topP,
    truncation: p.truncation,
    usage: snapshot === 'start' ? null : usage,
    user: null,
    metadata: p.metadata,
  };
}

export async function runResponse(ctx: GenerationContext, run: ResponseRun): Promise<Response> {
  const { job, record } = run;
  const { serving } = ctx;
  const background = record.params.background;
  const abort = new AbortController();
  record.abort = abort;
  const onClientAbort = () => abort.abort();
  const followClient = !background && !(job.stream && ctx.streams.enabled);
  if (followClient) {
    if (ctx.clientSignal?.aborted) abort.abort();
    ctx.clientSignal?.addEventListener('abort', onClientAbort, { once: true });
  }
  const detach = () => ctx.clientSignal?.removeEventListener('abort', onClientAbort);
  const submittedRequest: GenerationRequest = { ...job.request, operation: 'chat', signal: abort.signal };
  serving.tracing.startRequest(submittedRequest, { headers: ctx.traceHeaders, stream: job.stream });
  const failBeforeStart = (error: ApiError | ClientGoneError): never => {
    detach();
    record.abort = null;
    ctx.admitted.refused();
    run.onRefused?.();
    serving.tracing.endRequest(submittedRequest, { errorType: error instanceof ApiError ? error.kind : 'client_gone' });
    throw error;
  };

  let submitted;
  try {
    submitted = await ctx.admitted.submit(submittedRequest);
  } catch (error) {
    if (error instanceof ApiError) return failBeforeStart(error);
    throw error;
  }
  if (!submitted.ok) return failBeforeStart(inResponseTerms(ApiError.fromEngine(submitted.error)));
  const events = submitted.events[Symbol.asyncIterator]();
  const first = await events.next();
  if (first.done) return failBeforeStart(new ApiError('internal', 'the generation ended without events'));
  if (first.value.type === 'end') {
    const end = first.value;
    return failBeforeStart(end.error ? inResponseTerms(ApiError.fromEngine(end.error)) : new ClientGoneError());
  }
  const start = first.value as Extract<GenerationEvent, { type: 'start' }>;
  if (record.params.store) run.responses.put(record);
  const began = performance.now();
  const headers: Record<string, string> = { ...ctx.headers, 'X-Queue-Time-Ms': String(Math.round(start.queueMs)) };
  const log = ctx.logger.child({ responseId: record.id, route: 'responses' });

  const logs = job.stream || background;
  const registry = background ? run.backgroundStreams : ctx.streams;
  const perToken = job.toolCallFormat ? TOOL_EVENTS_PER_TOKEN : 1;
  const eventLog = logs ? registry.open({ id: record.id, owner: record.owner, abort, maxTokens: job.request.maxTokens * perToken + RESPONSE_EXTRA_EVENTS }) : null;
  if (eventLog && registry.enabled) detach();
  const out = new ResponseEvents(eventLog);

  /** Reads the engine's events to the end, updating the record and the stream log. */
  const produce = async (): Promise<void> => {
    let firstTokenMs: number | null = null;
    let end: EndEvent | undefined;
    const generated: number[] = [];
    let raw = '';
    out.emit('response.created', { response: responseObject(record, 'start') });
    out.emit('response.in_progress', { response: { ...responseObject(record, 'start'), status: 'in_progress' } });
    const output = new ResponseOutput(record, out, job.toolCallFormat);
    const delta = (text: string) => {
      raw += text;
      output.add(text);
    };
    try {
      for (let next = await events.next(); !next.done; next = await events.next()) {
        const event = next.value;
        if (event.type === 'token') {
          firstTokenMs ??= performance.now();
          generated.push(event.tokenId);
          delta(event.text);
        } else if (event.type === 'end') {
          end = event;
          delta(event.text);
        }
      }
    } catch (error) {
      log.error({ err: (error as Error).message }, 'response generation failed');
      abort.abort();
    }
    detach();
    record.abort = null;
    record.completedAt = Math.floor(ctx.now() / 1000);
    output.finish();
    record.conversation = [...record.conversation, replyMessage(record)];
    record.transcript = transcriptOf(serving, run, generated, raw, (record.toolCalls ?? []).length > 0);
    if (end) record.usage = { inputTokens: end.usage.promptTokens, cachedTokens: end.usage.cachedTokens, outputTokens: end.usage.completionTokens };
    if (!end || end.finishReason === 'error') {
      record.status = 'failed';
      const rateLimited = end?.error?.kind === 'cache_full' || end?.error?.kind === 'batch_full' || end?.error?.kind === 'queue_full';
      record.error = { code: rateLimited ? 'rate_limit_exceeded' : 'server_error', message: end?.error && !rateLimited ? 'The generation failed on the server.' : (end?.error?.message ?? 'The generation failed on the server.') };
    } else if (end.finishReason === 'cancelled') record.status = 'cancelled';
    else if (end.finishReason === 'length') {
      record.status = 'incomplete';
      record.incompleteReason = 'max_output_tokens';
    } else record.status = 'completed';
    try {
      run.responses.saved(record);
    } catch (error) {
      log.warn({ err: (error as Error).message }, 'response not written to disk');
    }
    run.onEnded?.(record);
    serving.tracing.endRequest(submittedRequest, {
      responseId: record.id,
      finishReason: end?.finishReason,
      usage: end?.usage,
      errorType: record.status === 'failed' ? (end?.error?.kind ?? 'internal') : record.status === 'cancelled' ? 'cancelled' : undefined,
    });
    log.info(
      { status: record.status, promptTokens: record.usage?.inputTokens, cachedTokens: record.usage?.cachedTokens, completionTokens: record.usage?.outputTokens, queueMs: start.queueMs, ttftMs: firstTokenMs === null ? null : Math.round(firstTokenMs - began) },
      'response finished',
    );
    if (record.status === 'cancelled' || record.status === 'failed') {
      if (record.status === 'failed') out.emit('response.failed', { response: responseObject(record) });
      return;
    }
    output.close();
    out.emit(record.status === 'completed' ? 'response.completed' : 'response.incomplete', { response: responseObject(record) });
  };

  const finished = produce()
    .catch(() => {})
    .finally(() => eventLog?.end());
  finishedRuns.set(record, finished);
  void finished.finally(() => finishedRuns.delete(record));

  if (background) return Response.json(responseObject(record, 'start'), { headers });
  if (!job.stream) {
    await finished;
    if (record.status === 'failed') throw new ApiError('internal', 'the generation failed');
    if (record.status === 'cancelled' && !record.params.store) throw new ClientGoneError();
    return Response.json(responseObject(record), { headers });
  }
  const body = eventLog!.reader(0, { pingIntervalMs: ctx.pingIntervalMs, closeConnection: ctx.closeConnection });
  return new Response(body, { status: 200, headers: { ...SSE_HEADERS, ...headers } });
}

/** The engine names chat's `response_format` when it refuses a schema: here the field is `text.format`. */
function inResponseTerms(error: ApiError): ApiError {
  return error.param === 'response_format' ? new ApiError(error.kind, error.message, 'text.format', error.retryAfterSeconds) : error;
}

/**
 * The transcript children continue: the prompt and the generated tokens without a final end-of-sequence
 * token (the template writes the turn's end itself), if those tokens decode to exactly the output text
 * (not so when a stop string cut it); null otherwise, and children render their prompt from text.
 */
function transcriptOf(serving: GenerationContext['serving'], run: ResponseRun, generated: number[], replyText: string, madeCalls: boolean): Transcript | null {
  const { tokenizer, folder } = serving.model.loaded;
  const visible = generated.length > 0 && folder.eosTokenIds.includes(generated.at(-1)!) ? generated.slice(0, -1) : generated;
  if (tokenizer.decode(visible) !== replyText) return null;
  return { promptText: run.promptText, tokens: run.job.request.input.concat(visible), ...(madeCalls ? { replyText } : {}) };
}

/** The reply as the next turn's template sees it: its text, and its calls with their arguments parsed (or as written, when broken). */
function replyMessage(r: StoredResponse): StoredResponse['conversation'][number] {
  const calls = r.toolCalls ?? [];
  if (calls.length === 0) return { role: 'assistant', content: r.outputText };
  return { role: 'assistant', content: r.outputText, tool_calls: calls.map((c) => ({ id: c.callId, type: 'function', function: { name: c.name, arguments: templateArguments(c.arguments) } })) };
}

/** Generations still running, so cancel can wait for their end. */
const finishedRuns = new WeakMap<StoredResponse, Promise<void>>();

/** Resolves when the response's generation has ended (at once if it is not running). */
export function whenFinished(record: StoredResponse): Promise<void> {
  return finishedRuns.get(record) ?? Promise.resolve();
}

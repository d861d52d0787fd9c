/**
 * The HTTP API: OpenAI-compatible completions and chat completions with session reuse, the native
 * session API, model listing and health. `createApp` only builds the Hono app; main.ts listens.
 */
import { randomBytes } from 'node:crypto';
import { Hono, type Context } from 'hono';
import type { z } from 'zod';
import { newSessionId } from '../cache/session-store.ts';
import type { Session } from '../cache/session.ts';
import type { Config } from '../config.ts';
import { GREEDY, type SamplingParams } from '../engine/sampler.ts';
import type { GenerationRequest } from '../engine/types.ts';
import { silentLogger, type Logger } from '../lib/logger.ts';
import type { Runtime, Serving } from '../runtime.ts';
import { ApiKeyAuth, isPublicPath, loadApiKeys } from './auth.ts';
import { readJsonBody } from './body.ts';
import { ChatTemplateError, type ChatMessage } from './chat-template.ts';
import { ApiError } from './errors.ts';
import { ClientGoneError, runGeneration, type GenerationContext, type GenerationJob } from './generation.ts';
import { KeyLimits } from './limits.ts';
import {
  SESSION_ID_PATTERN,
  appendSchema,
  chatSchema,
  completionSchema,
  createSessionSchema,
  listSessionsQuery,
  parseWith,
  refuseUnsupported,
  type MessageBody,
} from './schemas.ts';
import { StreamRegistry, connectionCloser, resumeCursor } from './streams.ts';

export interface AppOptions {
  logger?: Logger;
  /** Keep-alive comment interval on streams while nothing else is sent. */
  pingIntervalMs?: number;
  now?: () => number;
  /** Resumable streams; by default kept for STREAM_RESUME_SECONDS. */
  streams?: StreamRegistry;
  /** API keys; by default read from the config (API_KEYS, API_KEYS_FILE). main.ts passes its own to reload it on SIGHUP. */
  auth?: ApiKeyAuth;
}

type AppEnv = { Variables: { requestId: string; logger: Logger; owner: string } };
type Ctx = Context<AppEnv>;

/** OpenAI's default for /v1/completions. */
const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;
const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

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

export function createApp(runtime: Runtime, options: AppOptions = {}): Hono<AppEnv> {
  const config: Config = runtime.config;
  const baseLogger = options.logger ?? runtime.logger ?? silentLogger;
  const pingIntervalMs = options.pingIntervalMs ?? 10_000;
  const now = options.now ?? Date.now;
  const app = new Hono<AppEnv>();
  const auth = options.auth ?? new ApiKeyAuth(loadApiKeys(config));
  if (auth.enabled) baseLogger.info({ keys: auth.size, metricsRequireKey: config.metricsRequireKey }, 'API keys required');
  else baseLogger.warn({}, 'no API keys configured (API_KEYS / API_KEYS_FILE): the server is open to every client that can reach it');
  const limits = new KeyLimits(config.maxStreamsPerKey, config.maxSessionsPerKey);

  app.use('*', async (c, next) => {
    const incoming = c.req.header('x-request-id');
    const requestId = incoming && REQUEST_ID_PATTERN.test(incoming) ? incoming : `req_${randomBytes(12).toString('hex')}`;
    const logger = baseLogger.child({ requestId });
    c.set('requestId', requestId);
    c.set('logger', logger);
    const started = performance.now();
    await next();
    c.res.headers.set('X-Request-Id', requestId);
    const fields = { method: c.req.method, path: c.req.path, status: c.res.status, ms: Math.round(performance.now() - started) };
    if (c.req.path === '/healthz' || c.req.path === '/readyz') logger.debug(fields, 'request');
    else logger.info(fields, 'request');
  });

  // Every route but the public ones needs a key (401 invalid_api_key otherwise) and gets its owner.
  app.use('*', async (c, next) => {
    if (isPublicPath(c.req.path, config.metricsRequireKey)) return next();
    const owner = auth.ownerFor(c.req.header('authorization'));
    c.set('owner', owner);
    if (owner !== '') c.set('logger', c.get('logger').child({ owner }));
    await next();
  });

  app.onError((error, c) => {
    const requestId = c.get('requestId');
    if (error instanceof ClientGoneError) return new Response(null, { status: 499 });
    if (error instanceof ApiError) return error.toResponse(requestId);
    (c.get('logger') ?? baseLogger).error({ err: error.message, stack: error.stack }, 'unhandled error');
    return new ApiError('internal', 'internal').toResponse(requestId);
  });

  app.notFound((c) => new ApiError('not_found', `No route for ${c.req.method} ${c.req.path}.`).toResponse(c.get('requestId')));

  /** The loaded parts, or 503 while loading / after a failed load (and, for new work, while draining). */
  const serving = (forNewWork: boolean): Serving => {
    if (runtime.state === 'draining' && forNewWork) throw new ApiError('shutting_down', 'The server is shutting down.');
    const parts = runtime.serving;
    if (parts) return guard(parts);
    if (runtime.state === 'failed') throw new ApiError('model_failed', 'The model failed to load; see the server log.');
    throw new ApiError('model_loading', 'The model is still loading.');
  };

  let guarded: { parts: Serving; serving: Serving } | null = null;
  /** The serving parts with the engine behind the per-key generation limit (its counter observes the engine). */
  const guard = (parts: Serving): Serving => {
    if (guarded?.parts !== parts) {
      parts.engine.addObserver(limits);
      guarded = { parts, serving: { ...parts, engine: limits.gate(parts.engine) } };
    }
    return guarded.serving;
  };

  /**
   * Per-key limits before a generation: concurrent generations, and for a session that does not exist
   * yet, the number of sessions. The new session is created here, in the same tick as the count, so
   * concurrent requests cannot overshoot the limit.
   */
  const admitGeneration = async (c: Ctx, parts: Serving, sessionId: string | undefined) => {
    const owner = ownerOf(c);
    limits.checkStreams(owner);
    if (sessionId === undefined) return;
    if (parts.store.get(owner, sessionId) ?? (await parts.store.find(owner, sessionId))) return;
    if (parts.store.get(owner, sessionId)) return;
    limits.checkSessions(parts.store.list(owner).length);
    parts.store.create(owner, sessionId);
  };

  const body = async (c: Ctx, allowEmpty = false) => readJsonBody(c.req.raw, config.maxBodyBytes, allowEmpty);

  const streams = options.streams ?? new StreamRegistry({ resumeMs: config.streamResumeSeconds * 1000, logger: baseLogger.child({ component: 'streams' }) });

  const generationContext = (c: Ctx, parts: Serving): GenerationContext => ({
    serving: parts,
    logger: c.get('logger'),
    clientSignal: c.req.raw.signal,
    pingIntervalMs,
    streams,
    closeConnection: connectionCloser(c.env),
    headers: { 'X-Request-Id': c.get('requestId') },
    traceHeaders: { traceparent: c.req.header('traceparent'), tracestate: c.req.header('tracestate') },
    now,
  });

  const checkModel = (parts: Serving, model: string | null | undefined) => {
    if (model != null && model !== parts.model.id) {
      throw new ApiError('model_not_found', `The model '${model}' does not exist; this server serves '${parts.model.id}'.`, 'model');
    }
  };

  /** A generation request's body: fields that would change the output unsupported are refused, the rest validated. */
  const generationBody = async <S extends z.ZodType<{ model?: string | null }>>(c: Ctx, parts: Serving, schema: S, endpoint: 'completions' | 'chat' | 'append'): Promise<z.infer<S>> => {
    const raw = await body(c);
    if (raw && typeof raw === 'object' && !Array.isArray(raw)) refuseUnsupported(raw as Record<string, unknown>, endpoint);
    const parsed = parseWith(schema, raw);
    checkModel(parts, parsed.model);
    return parsed;
  };

  /** `session_id` from the body or the X-Session-Id header (they must agree). */
  const sessionIdOf = (c: Ctx, fromBody: string | null | undefined): string | undefined => {
    const header = c.req.header('x-session-id');
    if (header !== undefined && !SESSION_ID_PATTERN.test(header)) {
      throw new ApiError('invalid_request', "Invalid value for 'X-Session-Id': must be 1-128 characters of letters, digits, '.', '_', ':' and '-'.", 'session_id');
    }
    if (header !== undefined && fromBody != null && header !== fromBody) {
      throw new ApiError('invalid_request', 'session_id in the body and the X-Session-Id header differ.', 'session_id');
    }
    return fromBody ?? header;
  };

  const checkPromptLength = (input: number[], param: string) => {
    if (config.maxPromptTokens !== undefined && input.length > config.maxPromptTokens) {
      throw new ApiError('prompt_too_long', `The prompt has ${input.length} tokens; this server accepts at most ${config.maxPromptTokens}.`, param);
    }
  };

  const maxTokensOf = (requested: number | null | undefined, fallback: number, param: string): number => {
    if (requested != null) {
      if (requested > config.maxTokensLimit) {
        throw new ApiError('invalid_request', `Invalid value for '${param}': at most ${config.maxTokensLimit} on this server.`, param);
      }
      return requested;
    }
    return Math.min(fallback, config.maxTokensLimit);
  };

  const stopsOf = (stop: string | string[] | null | undefined): string[] => {
    const list = (stop == null ? [] : Array.isArray(stop) ? stop : [stop]).filter((s) => s.length > 0);
    if (list.length > config.maxStopSequences) {
      throw new ApiError('invalid_request', `Invalid value for 'stop': at most ${config.maxStopSequences} stop sequences.`, 'stop');
    }
    return list;
  };

  interface SamplingFields {
    temperature?: number | null;
    top_p?: number | null;
    top_k?: number | null;
    min_p?: number | null;
    repetition_penalty?: number | null;
  }
  /** The request's values, else the model's generation_config defaults, else OpenAI's (temperature 1, top_p 1). */
  const samplingOf = (parts: Serving, b: SamplingFields): SamplingParams => {
    const defaults = parts.model.loaded.folder.generationDefaults;
    const topK = b.top_k ?? defaults.topK ?? 0;
    return {
      temperature: b.temperature ?? defaults.temperature ?? 1,
      topP: b.top_p ?? defaults.topP ?? 1,
      topK: topK < 0 ? 0 : topK,
      minP: b.min_p ?? defaults.minP ?? 0,
      repetitionPenalty: b.repetition_penalty ?? defaults.repetitionPenalty ?? 1,
    };
  };

  const encodePrompt = (parts: Serving, prompt: string | number[], atStart: boolean): number[] => {
    if (typeof prompt !== 'string') return prompt;
    const ids = parts.model.loaded.tokenizer.encode(prompt, atStart);
    // An empty prompt conditions on the start of a document, as OpenAI's models do.
    const bos = parts.model.loaded.folder.bosTokenId;
    if (ids.length === 0 && atStart && bos !== null) return [bos];
    return ids;
  };

  const chatMessages = (messages: MessageBody[]): ChatMessage[] =>
    messages.map((m, i) => {
      const param = `messages[${i}]`;
      let role: ChatMessage['role'];
      if (m.role === 'system' || m.role === 'developer') role = 'system';
      else if (m.role === 'user' || m.role === 'assistant') role = m.role;
      else if (m.role === 'tool' || m.role === 'function') throw new ApiError('unsupported_parameter', `Tool messages are not supported by this server.`, `${param}.role`);
      else throw new ApiError('invalid_request', `Invalid value for '${param}.role': '${m.role}' is not one of system, developer, user, assistant.`, `${param}.role`);
      if (Array.isArray(m.tool_calls) && m.tool_calls.length > 0) {
        throw new ApiError('unsupported_parameter', 'Tool calls are not supported by this server.', `${param}.tool_calls`);
      }
      let content: string;
      if (typeof m.content === 'string') content = m.content;
      else if (Array.isArray(m.content)) {
        content = m.content
          .map((part, j) => {
            if (part.type !== 'text' || typeof (part as { text?: unknown }).text !== 'string') {
              throw new ApiError('unsupported_parameter', `Content parts of type '${part.type}' are not supported; send text.`, `${param}.content[${j}].type`);
            }
            return (part as { text: string }).text;
          })
          .join('\n');
      } else if (role === 'assistant') content = '';
      else throw new ApiError('invalid_request', `Invalid value for '${param}.content': is required.`, `${param}.content`);
      return m.name != null ? { role, content, name: m.name } : { role, content };
    });

  const renderChat = (parts: Serving, messages: MessageBody[], addGenerationPrompt: boolean): number[] => {
    let text: string;
    try {
      text = parts.model.chatTemplate.render(chatMessages(messages), addGenerationPrompt);
    } catch (error) {
      if (error instanceof ChatTemplateError) {
        throw new ApiError('invalid_request', `The model's chat template cannot render these messages: ${error.message}`, 'messages');
      }
      throw error;
    }
    return parts.model.loaded.tokenizer.encode(text, false);
  };

  const baseRequest = (c: Ctx, parts: Serving, b: SamplingFields & { seed?: number | null; ignore_eos?: boolean | null; truncation?: 'auto' | 'error' | null }) => ({
    requestId: c.get('requestId'),
    owner: ownerOf(c),
    sampling: samplingOf(parts, b),
    seed: b.seed ?? undefined,
    ignoreEos: b.ignore_eos ?? false,
    truncation: b.truncation ?? config.defaultTruncation,
  });

  const sessionView = ({ tiers }: Serving, session: Session) => ({
    id: session.id,
    object: 'session',
    tokens: session.tokens.length,
    cached_tokens: session.cachedLength,
    bytes: session.reservedBytes,
    used_bytes: tiers.usedBytes(session),
    blocks: tiers.blocks(session),
    state: session.busy ? 'busy' : 'idle',
    tier: session.tier,
    dropped_tokens: session.window.droppedTokens,
    window_drops: session.window.dropEvents,
    requests: session.requests,
    created_at: Math.floor(session.createdAt / 1000),
    last_used_at: Math.floor(session.lastUsedAt / 1000),
  });

  // ---- health and models ----

  app.get('/healthz', (c) => c.json({ status: 'ok' }));

  app.get('/readyz', (c) => {
    if (runtime.state === 'ready') return c.json({ status: 'ready', model: runtime.serving?.model.id ?? runtime.modelId });
    const kind = runtime.state === 'draining' ? 'shutting_down' : runtime.state === 'failed' ? 'model_failed' : 'model_loading';
    const message = { shutting_down: 'The server is shutting down.', model_failed: 'The model failed to load.', model_loading: 'The model is still loading.' }[kind];
    return new ApiError(kind, message).toResponse(c.get('requestId'));
  });

  const modelCard = () => {
    const parts = runtime.serving;
    return {
      id: parts?.model.id ?? runtime.modelId,
      object: 'model',
      created: parts?.model.createdAt ?? Math.floor(now() / 1000),
      owned_by: 'warmkv',
      max_model_len: parts?.model.contextLength ?? null,
      ready: runtime.state === 'ready',
    };
  };
  app.get('/metrics', async (c) => {
    const parts = runtime.serving;
    if (!parts) return c.text('# the model is not loaded yet\n', 503, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
    const { contentType, body } = await parts.metrics.render();
    return c.body(body, 200, { 'Content-Type': contentType });
  });

  app.get('/v1/models', (c) => c.json({ object: 'list', data: [modelCard()] }));
  app.get('/v1/models/:model{.+}', (c) => {
    const card = modelCard();
    if (c.req.param('model') !== card.id) throw new ApiError('model_not_found', `The model '${c.req.param('model')}' does not exist.`, 'model');
    return c.json(card);
  });

  // ---- OpenAI endpoints: stateless, with optional session reuse ----

  app.post('/v1/completions', async (c) => {
    const parts = serving(true);
    const b = await generationBody(c, parts, completionSchema, 'completions');
    const sessionId = sessionIdOf(c, b.session_id);
    let prompt: string | number[];
    if (Array.isArray(b.prompt) && b.prompt.length === 0) throw new ApiError('invalid_request', "Invalid value for 'prompt': must not be empty.", 'prompt');
    if (typeof b.prompt === 'string' || typeof b.prompt[0] === 'number') prompt = b.prompt as string | number[];
    else if (b.prompt.length === 1) prompt = b.prompt[0] as string | number[];
    else throw new ApiError('unsupported_parameter', 'Only one prompt per request is supported.', 'prompt');
    const input = encodePrompt(parts, prompt, true);
    checkPromptLength(input, 'prompt');
    const echo = b.echo ? (typeof prompt === 'string' ? prompt : parts.model.loaded.tokenizer.decode(prompt, false)) : '';
    const job: GenerationJob = {
      format: 'completion',
      route: 'completions',
      stream: b.stream ?? false,
      includeUsage: (b.stream ?? false) && (b.stream_options?.include_usage ?? false),
      echo,
      request: {
        ...baseRequest(c, parts, b),
        sessionId,
        onUnknownSession: 'create',
        mode: 'replace',
        input,
        maxTokens: maxTokensOf(b.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, 'max_tokens'),
        stop: stopsOf(b.stop),
      },
    };
    await admitGeneration(c, parts, sessionId);
    return runGeneration(generationContext(c, parts), job);
  });

  app.post('/v1/chat/completions', async (c) => {
    const parts = serving(true);
    const b = await generationBody(c, parts, chatSchema, 'chat');
    const sessionId = sessionIdOf(c, b.session_id);
    const input = renderChat(parts, b.messages, true);
    checkPromptLength(input, 'messages');
    const param = b.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
    const truncation = b.truncation ?? config.defaultTruncation;
    // Without an explicit limit under truncation "error", the default shrinks to what the context has left.
    const room = truncation === 'error' ? Math.max(1, parts.model.contextLength - input.length) : Infinity;
    const maxTokens = maxTokensOf(b.max_completion_tokens ?? b.max_tokens, Math.min(config.defaultChatMaxTokens, room), param);
    const job: GenerationJob = {
      format: 'chat',
      route: 'chat',
      stream: b.stream ?? false,
      includeUsage: (b.stream ?? false) && (b.stream_options?.include_usage ?? false),
      echo: '',
      request: {
        ...baseRequest(c, parts, b),
        sessionId,
        onUnknownSession: 'create',
        mode: 'replace',
        input,
        maxTokens,
        stop: [...stopsOf(b.stop), ...parts.model.chatTemplate.implicitStops],
      },
    };
    await admitGeneration(c, parts, sessionId);
    return runGeneration(generationContext(c, parts), job);
  });

  // ---- native session API ----

  app.post('/v1/sessions', async (c) => {
    const parts = serving(true);
    const raw = (await body(c, true)) ?? {};
    const b = parseWith(createSessionSchema, raw);
    const owner = ownerOf(c);
    const id = b.session_id ?? newSessionId();
    const exists = () => new ApiError('session_exists', `Session ${id} already exists.`, 'session_id');
    if (await parts.store.find(owner, id)) throw exists();
    if (b.prompt == null && b.messages == null) {
      if (parts.store.get(owner, id)) throw exists();
      limits.checkSessions(parts.store.list(owner).length);
      const session = parts.store.create(owner, id);
      return c.json(sessionView(parts, session), 201, { 'X-Session-Id': id });
    }
    const input = b.messages != null ? renderChat(parts, b.messages, b.add_generation_prompt ?? false) : encodePrompt(parts, b.prompt!, true);
    checkPromptLength(input, b.messages != null ? 'messages' : 'prompt');
    limits.checkStreams(owner);
    if (parts.store.get(owner, id)) throw exists();
    limits.checkSessions(parts.store.list(owner).length);
    // Created now so the count holds; removed again if the prefill does not happen (201 or nothing).
    const created = parts.store.create(owner, id);
    const submitted = await parts.engine.submit({
      requestId: c.get('requestId'),
      owner,
      sessionId: id,
      onUnknownSession: 'create',
      mode: 'replace',
      input,
      maxTokens: 0,
      sampling: GREEDY,
      stop: [],
      ignoreEos: true,
      truncation: config.defaultTruncation,
      signal: c.req.raw.signal,
    });
    if (!submitted.ok) {
      parts.store.delete(created);
      throw ApiError.fromEngine(submitted.error);
    }
    let end;
    for await (const event of submitted.events) if (event.type === 'end') end = event;
    if (end?.finishReason === 'error') {
      parts.store.delete(created);
      throw ApiError.fromEngine(end.error ?? { kind: 'internal', message: 'prefill failed' });
    }
    const session = parts.store.get(owner, id);
    if (!session) throw new ApiError('internal', 'session vanished after prefill');
    c.get('logger').info({ sessionId: id, promptTokens: input.length }, 'session prefilled');
    return c.json(sessionView(parts, session), 201, { 'X-Session-Id': id });
  });

  app.get('/v1/sessions', (c) => {
    const parts = serving(false);
    const query = parseWith(listSessionsQuery, c.req.query());
    const sorted = parts.store
      .list(ownerOf(c))
      .sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    if (query.order === 'desc') sorted.reverse();
    let start = 0;
    if (query.after !== undefined) {
      const index = sorted.findIndex((s) => s.id === query.after);
      if (index < 0) throw new ApiError('invalid_request', `Invalid value for 'after': no session ${query.after}.`, 'after');
      start = index + 1;
    }
    const page = sorted.slice(start, start + query.limit).map((session) => sessionView(parts, session));
    return c.json({
      object: 'list',
      data: page,
      first_id: page[0]?.id ?? null,
      last_id: page.at(-1)?.id ?? null,
      has_more: start + query.limit < sorted.length,
    });
  });

  const findSession = async (c: Ctx, parts: Serving): Promise<Session> => {
    const id = c.req.param('id') ?? '';
    const session = SESSION_ID_PATTERN.test(id) ? await parts.store.find(ownerOf(c), id) : undefined;
    if (!session) throw new ApiError('session_not_found', `Session ${id} not found.`, 'session_id');
    return session;
  };

  app.get('/v1/sessions/:id', async (c) => {
    const parts = serving(false);
    return c.json(sessionView(parts, await findSession(c, parts)));
  });

  app.delete('/v1/sessions/:id', async (c) => {
    const parts = serving(false);
    const session = await findSession(c, parts);
    if (!parts.store.delete(session)) throw new ApiError('session_busy', `Session ${session.id} is busy with another request.`, 'session_id');
    await parts.tiers.forget(session.owner, session.id);
    return c.json({ id: session.id, object: 'session.deleted', deleted: true });
  });

  app.post('/v1/sessions/:id/completions', async (c) => {
    const parts = serving(true);
    const id = c.req.param('id');
    if (!SESSION_ID_PATTERN.test(id)) throw new ApiError('session_not_found', `Session ${id} not found.`, 'session_id');
    const b = await generationBody(c, parts, appendSchema, 'append');
    const input = encodePrompt(parts, b.prompt, false);
    checkPromptLength(input, 'prompt');
    const echo = b.echo ? (typeof b.prompt === 'string' ? b.prompt : parts.model.loaded.tokenizer.decode(b.prompt, false)) : '';
    const request: Omit<GenerationRequest, 'signal'> = {
      ...baseRequest(c, parts, b),
      sessionId: id,
      onUnknownSession: 'fail',
      mode: 'append',
      input,
      maxTokens: maxTokensOf(b.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, 'max_tokens'),
      stop: stopsOf(b.stop),
    };
    await admitGeneration(c, parts, undefined);
    return runGeneration(generationContext(c, parts), {
      format: 'completion',
      route: 'session_completions',
      stream: b.stream ?? false,
      includeUsage: (b.stream ?? false) && (b.stream_options?.include_usage ?? false),
      echo,
      request,
    });
  });

  // ---- resumable streams (streams.ts) ----

  app.get('/v1/streams/:id', (c) => {
    const after = resumeCursor(c.req.header('last-event-id'), c.req.query('after'));
    return streams.resume(c.req.param('id'), ownerOf(c), after, { pingIntervalMs, closeConnection: connectionCloser(c.env) });
  });

  app.delete('/v1/streams/:id', async (c) => {
    const id = c.req.param('id');
    if (!(await streams.cancel(id, ownerOf(c)))) throw new ApiError('stream_not_found', `Stream ${id} not found; it may have expired.`);
    return c.json({ id, object: 'stream.deleted', deleted: true });
  });

  // Known paths with another method: 405 with Allow.
  const allowed: Array<[string, string]> = [
    ['/healthz', 'GET'],
    ['/readyz', 'GET'],
    ['/metrics', 'GET'],
    ['/v1/models', 'GET'],
    ['/v1/completions', 'POST'],
    ['/v1/chat/completions', 'POST'],
    ['/v1/sessions', 'GET, POST'],
    ['/v1/sessions/:id', 'GET, DELETE'],
    ['/v1/sessions/:id/completions', 'POST'],
    ['/v1/streams/:id', 'GET, DELETE'],
  ];
  for (const [path, allow] of allowed) {
    app.all(path, (c) =>
      new ApiError('method_not_allowed', `${c.req.method} is not allowed on ${c.req.path}; use ${allow}.`).toResponse(c.get('requestId'), { Allow: allow }),
    );
  }

  return app;
}


/** The native session API: create (optionally prefilled), list, inspect, delete, and append completions. */
import { Hono } from 'hono';
import { newSessionId } from '../../cache/session-store.ts';
import type { Session } from '../../cache/session.ts';
import type { Serving } from '../../serving.ts';
import { readGenerationBody, readJsonBody } from '../body.ts';
import { generationContext, ownerOf, servingFor, type AppEnv, type Ctx, type ServerDeps } from '../context.ts';
import { ApiError, sessionNotFound } from '../errors.ts';
import { runGeneration } from '../generation.ts';
import { appendSchema, checkSessionId, createSessionSchema, listSessionsQuery, parseWith } from '../schemas.ts';
import { Translator } from '../translate.ts';

/**
 * Where a session's cache is: `running` while a request generates on it (the request holds the KV
 * and `cached_tokens` counts what it has filled so far), `empty` for a session that never held
 * anything, else its tier.
 */
function tierView({ engine }: Serving, session: Session): { tier: string; cachedTokens: number } {
  const running = engine.runningCacheLength(session);
  if (running !== undefined) return { tier: 'running', cachedTokens: running };
  if (session.tier === 'evicted' && session.tokens.length === 0) return { tier: 'empty', cachedTokens: 0 };
  return { tier: session.tier, cachedTokens: session.cachedLength };
}

/** A session as the API shows it. */
function sessionView(parts: Serving, session: Session) {
  const { tiers } = parts;
  const { tier, cachedTokens } = tierView(parts, session);
  return {
    id: session.id,
    object: 'session',
    tokens: session.tokens.length,
    cached_tokens: cachedTokens,
    bytes: session.reservedBytes,
    used_bytes: tiers.usedBytes(session),
    blocks: tiers.blocks(session),
    state: session.busy ? 'busy' : 'idle',
    tier,
    dropped_tokens: session.window.droppedTokens,
    window_drops: session.window.dropEvents,
    requests: session.requests,
    version: session.version,
    created_at: Math.floor(session.createdAt / 1000),
    last_used_at: Math.floor(session.lastUsedAt / 1000),
  };
}

export function sessionRoutes(deps: ServerDeps): Hono<AppEnv> {
  const { runtime, config, admission } = deps;
  const routes = new Hono<AppEnv>();

  routes.post('/v1/sessions', async (c) => {
    const parts = servingFor(runtime, true);
    const b = parseWith(createSessionSchema, (await readJsonBody(c.req.raw, config.maxBodyBytes, true)) ?? {});
    const owner = ownerOf(c);
    const id = b.session_id ?? newSessionId();
    const exists = () => new ApiError('session_exists', `Session ${id} already exists.`, 'session_id');
    if (await parts.store.find(owner, id)) throw exists();
    if (b.prompt == null && b.messages == null) {
      if (parts.store.get(owner, id)) throw exists();
      const session = await admission.createEmpty(parts, owner, id);
      return c.json(sessionView(parts, session), 201, { 'X-Session-Id': id });
    }
    const translator = new Translator(config, parts);
    const input = translator.prefillInput(b);
    if (parts.store.get(owner, id)) throw exists();
    // Admission creates the session now so the count holds; it is removed again unless the prefill succeeds.
    const admitted = await admission.admit(parts, owner, id);
    if (!admitted.created) {
      admitted.refused();
      throw exists();
    }
    let submitted;
    try {
      submitted = await admitted.submit({ ...translator.prefill({ requestId: c.get('requestId'), owner }, id, input), signal: c.req.raw.signal });
    } catch (error) {
      admitted.refused();
      throw error;
    }
    if (!submitted.ok) {
      admitted.refused();
      throw ApiError.fromEngine(submitted.error);
    }
    let end;
    for await (const event of submitted.events) if (event.type === 'end') end = event;
    if (end?.finishReason === 'error') {
      admitted.refused();
      throw ApiError.fromEngine(end.error ?? { kind: 'internal', message: 'prefill failed' });
    }
    const session = parts.store.get(owner, id);
    if (!session) throw new ApiError('internal', 'session vanished after prefill');
    c.get('logger').info({ sessionId: id, promptTokens: input.length }, 'session prefilled');
    return c.json(sessionView(parts, session), 201, { 'X-Session-Id': id });
  });

  routes.get('/v1/sessions', async (c) => {
    const parts = servingFor(runtime, false);
    const query = parseWith(listSessionsQuery, c.req.query());
    const sorted = (await parts.store.listAll(ownerOf(c))).sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
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
    const id = checkSessionId(c.req.param('id') ?? '');
    await admission.refresh(parts, ownerOf(c), id);
    const session = await parts.store.find(ownerOf(c), id);
    if (!session) throw sessionNotFound(id);
    return session;
  };

  routes.get('/v1/sessions/:id', async (c) => {
    const parts = servingFor(runtime, false);
    return c.json(sessionView(parts, await findSession(c, parts)));
  });

  routes.delete('/v1/sessions/:id', async (c) => {
    const parts = servingFor(runtime, false);
    const session = await findSession(c, parts);
    if (!parts.store.delete(session)) throw new ApiError('session_busy', `Session ${session.id} is busy with another request.`, 'session_id');
    await parts.tiers.forget(session.owner, session.id);
    await admission.forget(parts, session.owner, session.id);
    return c.json({ id: session.id, object: 'session.deleted', deleted: true });
  });

  routes.post('/v1/sessions/:id/completions', async (c) => {
    const parts = servingFor(runtime, true);
    const id = checkSessionId(c.req.param('id'));
    const b = await readGenerationBody(c.req.raw, config.maxBodyBytes, appendSchema, 'append', parts.model.id);
    const job = new Translator(config, parts).append({ requestId: c.get('requestId'), owner: ownerOf(c) }, id, b);
    // The session must exist already: admission creates nothing, and the engine refuses an unknown one.
    const admitted = await admission.admit(parts, ownerOf(c), id, { create: false });
    return runGeneration(generationContext(c, deps, parts, admitted), job);
  });

  return routes;
}

/**
 * OpenAI's Responses API on warm KV: POST /v1/responses (chained with previous_response_id), GET,
 * DELETE, cancel, input_items, and background responses streamed again with `starting_after`.
 *
 * Which engine session a response runs on (see docs/api.md, "Responses"): a response without a parent
 * starts a session named after itself; a child of its session's head takes that session over (the
 * cache already holds the parent's transcript, so only the new input is prefilled); a child of any
 * other response (a branch) gets a session of its own, seeded with a copy of the shared prefix; a
 * response without a parent whose prompt starts with a kept transcript of the same key is seeded the
 * same way (found through the prefix index), on a temporary session when it is not stored.
 */
import { join } from 'node:path';
import { Hono } from 'hono';
import { z } from 'zod';
import { forkPrefix } from '../../cache/fork.ts';
import { PrefixIndex } from '../../cache/prefix-index.ts';
import type { Session } from '../../cache/session.ts';
import { ResponseFiles } from '../../responses/files.ts';
import { newResponseId, ResponseStore, type StoredResponse } from '../../responses/store.ts';
import type { Serving } from '../../serving.ts';
import { readJsonBody } from '../body.ts';
import { generationContext, ownerOf, servingFor, type AppEnv, type Ctx, type ServerDeps } from '../context.ts';
import { ApiError } from '../errors.ts';
import { storeCall } from '../shared-turns.ts';
import { parseResponseBody, responseFormatOf } from '../responses-body.ts';
import { callIdsOf, callerTranscript, inputItemsOf, storedItem } from '../responses-items.ts';
import { responseObject, runResponse, whenFinished } from '../responses-run.ts';
import { responseToolsOf } from '../responses-tools.ts';
import { parseWith } from '../schemas.ts';
import { Translator } from '../translate.ts';

/** How long a background response's events stay resumable (and how long one nobody reads may run). */
export const BACKGROUND_RESPONSE_STREAM_MS = 3600_000;
/** Prefix blocks the stateless-reuse index keeps (about 40 bytes each; 64 tokens a block). */
const PREFIX_INDEX_ENTRIES = 65_536;

const itemsQuery = z.object({
  limit: z.coerce.number().int().min(1).max(100).default(20),
  order: z.enum(['asc', 'desc']).default('desc'),
  after: z.string().optional(),
  include: z.unknown().optional(),
});

const retrieveQuery = z.object({
  stream: z.enum(['true', 'false']).optional(),
  starting_after: z.coerce.number().int().min(0).optional(),
  include: z.unknown().optional(),
  include_obfuscation: z.unknown().optional(),
});

export function responseRoutes(deps: ServerDeps): Hono<AppEnv> {
  const { runtime, config } = deps;
  const routes = new Hono<AppEnv>();
  const prefixes = new PrefixIndex(PREFIX_INDEX_ENTRIES);
  const responses = new ResponseStore({
    ttlSeconds: config.responseTtlSeconds,
    maxPerKey: config.maxResponsesPerKey,
    now: deps.now,
    files: config.snapshotDir !== undefined ? new ResponseFiles(join(config.snapshotDir, 'responses')) : undefined,
    onSessionReleased: (owner, sessionId) => {
      prefixes.forget(owner, sessionId);
      void releaseSession(runtime.serving, owner, sessionId);
    },
  });
  const { backgroundStreams } = deps;

  const find = (c: Ctx): StoredResponse => {
    const id = c.req.param('id')!;
    const record = responses.get(ownerOf(c), id);
    if (!record) throw new ApiError('response_not_found', `Response with id '${id}' not found.`, 'response_id');
    return record;
  };

  routes.post('/v1/responses', async (c) => {
    const parts = servingFor(runtime, true);
    if (c.req.header('x-session-id') !== undefined) {
      throw new ApiError('unsupported_parameter', 'Responses keep their own sessions; chain them with previous_response_id instead of X-Session-Id.', 'X-Session-Id');
    }
    const body = parseResponseBody(await readJsonBody(c.req.raw, config.maxBodyBytes));
    if (body.model != null && body.model !== parts.model.id) {
      throw new ApiError('model_not_found', `The model '${body.model}' does not exist; this server serves '${parts.model.id}'.`, 'model');
    }
    const owner = ownerOf(c);
    let parent: StoredResponse | null = null;
    if (body.previous_response_id != null) {
      parent = responses.get(owner, body.previous_response_id) ?? null;
      if (!parent) throw new ApiError('previous_response_not_found', `Previous response with id '${body.previous_response_id}' not found.`, 'previous_response_id');
      if (parent.abort !== null) {
        throw new ApiError('response_in_progress', `Previous response with id '${parent.id}' is still in progress; wait for it to finish or cancel it.`, 'previous_response_id');
      }
    }
    const history = parent?.conversation ?? [];
    const resolve = (itemId: string) => {
      for (const stored of responses.newestFirst(owner)) {
        const item = storedItem(stored, itemId);
        if (item) return item;
      }
      return undefined;
    };
    const { items, messages } = inputItemsOf(body.input, { calledIds: callIdsOf(history), resolve });
    const tools = responseToolsOf(body, parts.model.chatTemplate.toolCallFormat);
    // Instructions are not carried over from the previous response (as OpenAI does).
    const prompt = [...(body.instructions != null ? [{ role: 'system' as const, content: body.instructions }] : []), ...history, ...messages];
    const id = newResponseId('resp');
    const store = body.store ?? true;

    // The session: the parent's when this is a child of its head, else a new one (a branch or a new chain).
    let sessionId: string | undefined = store ? id : undefined;
    let branchFrom: Session | undefined;
    // In a fleet the parent may have run on another replica: its session's committed transcript decides.
    let takeOver = false;
    if (parent) {
      const parentSession = await parts.store.find(owner, parent.sessionId);
      takeOver = parts.shared?.shared
        ? parent.sessionId !== '' && holds((await storeCall(() => parts.shared!.load(owner, parent!.sessionId)))?.tokens, parent)
        : responses.isHead(parent) || holds(parentSession?.tokens, parent);
      if (takeOver && !parentSession?.busy) sessionId = parent.sessionId;
      else if (store) branchFrom = parentSession;
    }
    const translator = new Translator(config, parts);
    const replyIndex = prompt.length - messages.length - 1;
    const parentTranscript = parent ? (parent.transcript ? { ...parent.transcript, replyIndex } : null) : callerTranscript(responses.newestFirst(owner), prompt);
    const translated = translator.response({ requestId: c.get('requestId'), owner }, prompt, { ...body, response_format: responseFormatOf(body.text?.format) }, sessionId, parentTranscript, tools.plan);
    const { promptText } = translated;
    let { job } = translated;
    // A request without a parent whose prompt starts with a kept transcript of this key copies that
    // prefix like a branch; one not stored runs on a session of its own for the while (deleted at its end).
    let temporary = false;
    if (!parent) {
      branchFrom = prefixSource(parts, prefixes, owner, job.request.input);
      if (branchFrom && sessionId === undefined) {
        sessionId = id;
        temporary = true;
        job = { ...job, request: { ...job.request, sessionId } };
      }
    }
    // A branch copies from a hot cache: bring an idle int8 or disk parent session up first, as its own
    // next turn would (pinned, so making room for it cannot demote it again). After the translation, so
    // a body refused as invalid promotes nothing.
    if (branchFrom && (branchFrom.tier === 'int8' || branchFrom.tier === 'disk') && !branchFrom.busy && !branchFrom.pinned) {
      branchFrom.pinned = true;
      try {
        await parts.tiers.restore(branchFrom);
      } finally {
        branchFrom.pinned = false;
      }
    }
    let admitted;
    try {
      admitted = await deps.admission.admit(parts, owner, sessionId);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (takeOver && sessionId === parent?.sessionId && error.kind === 'session_busy') {
        // Another replica runs a child of the same parent on its session right now: this one branches.
        sessionId = store ? id : undefined;
      } else if (temporary) {
        // A temporary session over the key's session limit: run the request without a cache instead.
        temporary = false;
        branchFrom = undefined;
        sessionId = undefined;
      } else throw error;
      job = { ...job, request: { ...job.request, sessionId } };
      admitted = await deps.admission.admit(parts, owner, sessionId);
    }
    let forked: Session | undefined;
    if (admitted.created && sessionId !== undefined) {
      const target = parts.store.get(owner, sessionId);
      if (target && branchFrom && forkPrefix(parts.store, parts.engine.layout, branchFrom, target, job.request.input)) forked = target;
      else if (target && parent && parts.shared?.shared) seedFromSharedPrefix(target, parent);
    }
    const sampling = job.request.sampling;
    const record: StoredResponse = {
      id,
      owner,
      createdAt: Math.floor(deps.now() / 1000),
      completedAt: null,
      status: 'in_progress',
      parentId: parent?.id ?? null,
      params: {
        model: parts.model.id,
        instructions: body.instructions ?? null,
        temperature: sampling.temperature,
        topP: sampling.topP,
        maxOutputTokens: body.max_output_tokens ?? null,
        truncation: body.truncation ?? 'disabled',
        metadata: body.metadata ?? {},
        background: body.background ?? false,
        store,
        textFormat: body.text?.format ?? { type: 'text' },
        tools: tools.tools,
        toolChoice: tools.toolChoice,
        parallelToolCalls: tools.parallelToolCalls,
        maxToolCalls: body.max_tool_calls ?? null,
      },
      input: items,
      conversation: [...history, ...messages],
      outputItemId: newResponseId('msg'),
      outputText: '',
      transcript: null,
      sessionId: temporary ? '' : (sessionId ?? ''),
      usage: null,
      error: null,
      incompleteReason: null,
      abort: null,
    };
    return runResponse(generationContext(c, deps, parts, admitted), {
      job,
      promptText,
      record,
      responses,
      backgroundStreams,
      // The refused request's session goes with admission; a forked one must not be left reserved.
      onRefused: () => forked && parts.store.get(owner, forked.id) === forked && parts.store.delete(forked),
      onEnded: (ended) => {
        const tokens = ended.transcript?.tokens;
        if (temporary) void releaseSession(parts, owner, id);
        else if (store && tokens && sessionId !== undefined && responses.isHead(ended)) prefixes.add(owner, sessionId, tokens);
      },
    });
  });

  routes.get('/v1/responses/:id', (c) => {
    const record = find(c);
    const query = parseWith(retrieveQuery, c.req.query());
    if (query.stream !== 'true') return c.json(responseObject(record));
    if (!record.params.background) {
      throw new ApiError('invalid_request', 'Only background responses can be streamed with GET; create it with background: true.', 'stream');
    }
    const after = query.starting_after ?? -1;
    const headers = { 'X-Request-Id': c.get('requestId') };
    return backgroundStreams.resume(record.id, record.owner, after, { pingIntervalMs: deps.pingIntervalMs }, headers);
  });

  routes.delete('/v1/responses/:id', (c) => {
    const record = find(c);
    if (record.abort !== null) throw new ApiError('response_in_progress', `Response with id '${record.id}' is still in progress; cancel it first.`, 'response_id');
    responses.delete(record.owner, record.id);
    return c.json({ id: record.id, object: 'response', deleted: true });
  });

  routes.post('/v1/responses/:id/cancel', async (c) => {
    const record = find(c);
    if (record.abort === null && record.status !== 'cancelled') {
      throw new ApiError('response_not_cancellable', `Response with id '${record.id}' has already finished (${record.status}); only a running response can be cancelled.`, 'response_id');
    }
    record.abort?.abort();
    await whenFinished(record);
    return c.json(responseObject(record));
  });

  routes.get('/v1/responses/:id/input_items', (c) => {
    const record = find(c);
    const query = parseWith(itemsQuery, c.req.query());
    const page = responses.inputItems(record, query);
    if (page === 'unknown_after') throw new ApiError('invalid_request', `Invalid value for 'after': no input item '${query.after}' in response '${record.id}'.`, 'after');
    return c.json({ object: 'list', data: page.data, first_id: page.data[0]?.id ?? null, last_id: page.data.at(-1)?.id ?? null, has_more: page.hasMore });
  });

  return routes;
}

/**
 * Whether a session's tokens (its own, or its committed ones in a fleet's shared store) are exactly this
 * response's transcript (its prompt and reply, plus at most the end-of-sequence token): how a chain finds
 * its head again after a restart or on another replica.
 */
function holds(sessionTokens: readonly number[] | undefined, record: StoredResponse): boolean {
  const tokens = record.transcript?.tokens;
  if (!sessionTokens || !tokens || sessionTokens.length < tokens.length || sessionTokens.length > tokens.length + 1) return false;
  for (let i = 0; i < tokens.length; i++) if (sessionTokens[i] !== tokens[i]) return false;
  return true;
}

/**
 * A branch in a fleet whose parent's KV is not on this replica: the new session starts as the parent's
 * transcript with no KV (what an evicted session is), marked to look for the longest prefix snapshot
 * another replica left on shared storage; the request's prompt then replaces it, reusing what matches.
 */
function seedFromSharedPrefix(target: Session, parent: StoredResponse): void {
  const tokens = parent.transcript?.tokens;
  if (!tokens || target.tokens.length > 0) return;
  target.tokens = tokens.slice();
  target.prefixLookup = true;
}

/**
 * The kept session of `owner` holding the longest indexed prefix of `input`, if it is idle and can be
 * copied from (hot, or int8/disk, brought up like a branch's parent); forkPrefix then checks the tokens.
 */
function prefixSource(parts: Serving, prefixes: PrefixIndex, owner: string, input: readonly number[]): Session | undefined {
  for (const sessionId of prefixes.candidates(owner, input)) {
    const session = parts.store.get(owner, sessionId);
    if (session && !session.busy && session.window.droppedTokens === 0) return session;
  }
  return undefined;
}

/** Deletes a chain's engine session once no stored response uses it (memory and snapshot). */
async function releaseSession(parts: Serving | null, owner: string, sessionId: string): Promise<void> {
  if (!parts || sessionId === '') return;
  const session = parts.store.get(owner, sessionId);
  if (session && !parts.store.delete(session)) return;
  await parts.tiers.forget(owner, sessionId).catch(() => {});
}

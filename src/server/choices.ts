/**
 * `n` > 1 on completions and chat: n choices of one prompt. The translator gives each choice its own
 * engine request (seed + index); `fanOut` then prefills the prompt once and copies its KV prefix into a
 * session per choice (forkPrefix), so every choice feeds only its last prompt token before sampling.
 *
 * The choices' sessions are the server's, deleted when the response ends. With a `session_id`, choice 0
 * runs on that session (it keeps choice 0's reply, as a single-choice request would); choices 1.. are
 * copied from it after its prefill. Without one, a throwaway session takes the prefill and is deleted
 * once the copies are made.
 */
import { randomBytes } from 'node:crypto';
import { forkPrefix } from '../cache/fork.ts';
import type { Session } from '../cache/session.ts';
import type { Usage } from '../engine/types.ts';
import type { Serving } from '../serving.ts';
import type { Admitted } from './admission.ts';
import { ApiError } from './errors.ts';
import type { GenerationJob } from './generation.ts';
import { prefillRequest } from './translate.ts';

/** What a job whose choices share one prompt carries (set by the translator's choicesOf, filled in by fanOut). */
export interface SharedPrompt {
  /** The client's session (choice 0's), if it named one; the other choices' sessions are never shown. */
  sessionId: string | undefined;
  /** The usage of the one prefill: the prompt counted once, and its cached tokens. */
  prefill: Usage | null;
  /** Deletes the server's sessions of the choices; called once the response has ended. */
  release: () => void;
}

/** How often, and how far apart, a choice's session still held by the engine is tried again for deletion. */
const DELETE_RETRIES = 100;
const DELETE_RETRY_MS = 20;

function deleteSoon(parts: Serving, session: Session, tries = DELETE_RETRIES): void {
  if (parts.store.get(session.owner, session.id) !== session) return;
  if (parts.store.delete(session)) {
    void parts.tiers.forget(session.owner, session.id).catch(() => {});
    return;
  }
  if (tries > 0) setTimeout(() => deleteSoon(parts, session, tries - 1), DELETE_RETRY_MS).unref();
}

/**
 * Prefills the prompt of a job from choicesOf once and gives every choice a session holding its copy.
 * Returns the job with the choices' sessions set; on failure the server's sessions are gone again.
 */
export async function fanOut(parts: Serving, admitted: Admitted, job: GenerationJob, signal: AbortSignal | undefined): Promise<GenerationJob> {
  if (!job.shared || !job.extraChoices) return job;
  const { owner, input } = job.request;
  const ours: Session[] = [];
  const newSession = () => {
    const session = parts.store.create(owner, `warmkv-n-${randomBytes(12).toString('hex')}`);
    ours.push(session);
    return session;
  };
  const release = () => {
    for (const session of ours) deleteSoon(parts, session);
  };
  try {
    const clientSession = job.shared.sessionId;
    const source = clientSession !== undefined ? undefined : newSession();
    const sourceId = clientSession ?? source!.id;
    // The prompt's truncation is the request's own (it may name one), not POST /v1/sessions' default.
    const prefill = prefillRequest({ requestId: `${job.request.requestId}-prefill`, owner }, sourceId, input, job.request.truncation);
    const submitted = await admitted.submit({ ...prefill, signal });
    if (!submitted.ok) throw ApiError.fromEngine(submitted.error, clientSession);
    let usage: Usage | null = null;
    for await (const event of submitted.events) {
      if (event.type !== 'end') continue;
      if (event.finishReason === 'error') throw ApiError.fromEngine(event.error ?? { kind: 'internal', message: 'prefill failed' }, clientSession);
      if (event.finishReason === 'cancelled') throw new ApiError('internal', 'the shared prefill was cancelled');
      usage = event.usage;
    }
    const from = parts.store.get(owner, sourceId);
    const copyInto = (): string => {
      const target = newSession();
      // A failed copy (no room, a windowed source) only costs this choice a full prefill.
      if (from) forkPrefix(parts.store, parts.engine.layout, from, target, input);
      return target.id;
    };
    const firstId = clientSession ?? copyInto();
    const extraChoices = job.extraChoices.map((choice) => ({ ...choice, request: { ...choice.request, sessionId: copyInto(), onUnknownSession: 'create' as const } }));
    if (source) deleteSoon(parts, source);
    return {
      ...job,
      request: { ...job.request, sessionId: firstId },
      extraChoices,
      shared: { sessionId: clientSession, prefill: usage, release },
    };
  } catch (error) {
    release();
    throw error;
  }
}

/**
 * The usage of a response's choices. Several prompts count each prompt and each output once; n choices
 * of one prompt count the prompt once (as OpenAI does), with the cached tokens of its one prefill.
 */
export function sumUsage(usages: Usage[], shared: SharedPrompt | undefined): Usage {
  const total: Usage = { promptTokens: 0, completionTokens: 0, cachedTokens: 0, droppedTokens: 0 };
  for (const u of usages) {
    total.promptTokens += u.promptTokens;
    total.completionTokens += u.completionTokens;
    total.cachedTokens += u.cachedTokens;
    total.droppedTokens += u.droppedTokens;
  }
  if (shared?.prefill) {
    total.promptTokens = shared.prefill.promptTokens;
    total.cachedTokens = shared.prefill.cachedTokens;
    total.droppedTokens += shared.prefill.droppedTokens;
  }
  return total;
}

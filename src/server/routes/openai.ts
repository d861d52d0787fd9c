/** OpenAI's completions and chat completions: stateless, with optional session reuse (session_id / X-Session-Id). */
import { Hono } from 'hono';
import type { z } from 'zod';
import type { Serving } from '../../serving.ts';
import { readGenerationBody } from '../body.ts';
import { generationContext, ownerOf, servingFor, type AppEnv, type Ctx, type ServerDeps } from '../context.ts';
import { fanOut } from '../choices.ts';
import { runGeneration, type GenerationJob } from '../generation.ts';
import { onPrefixEntry } from '../prefix-reuse.ts';
import { withPromptLogprobs } from '../prompt-logprobs.ts';
import { chatSchema, completionSchema } from '../schemas.ts';
import { Translator, sessionIdOf, type Caller } from '../translate.ts';

export function openAiRoutes(deps: ServerDeps): Hono<AppEnv> {
  const routes = new Hono<AppEnv>();

  /** Read and check the body, translate it, admit the request (creating its session), then run it. */
  const generate =
    <S extends z.ZodType<{ model?: string | null; session_id?: string | null }>>(
      schema: S,
      endpoint: 'completions' | 'chat',
      translate: (translator: Translator, caller: Caller, body: z.infer<S>, sessionId: string | undefined) => GenerationJob,
    ) =>
    async (c: Ctx) => {
      const parts: Serving = servingFor(deps.runtime, true);
      const body = await readGenerationBody(c.req.raw, deps.config.maxBodyBytes, schema, endpoint, parts.model.id);
      const sessionId = sessionIdOf(c.req.header('x-session-id'), body.session_id);
      const owner = ownerOf(c);
      let job = translate(new Translator(deps.config, parts), { requestId: c.get('requestId'), owner }, body, sessionId);
      let admitted = await deps.admission.admit(parts, owner, sessionId);
      // n choices: the shared prefill runs on the client's session first, so an unread run there gives way now.
      if (job.shared && sessionId !== undefined) await deps.runs.supersede(owner, sessionId);
      try {
        job = await withPromptLogprobs(parts, job);
        job = await fanOut(parts, admitted, job, c.req.raw.signal);
      } catch (error) {
        admitted.refused();
        throw error;
      }
      // Without a session, the prompt may continue a kept prefix entry of this key (and leaves one).
      ({ job, admitted } = onPrefixEntry(parts, deps.admission, admitted, job));
      return runGeneration(generationContext(c, deps, parts, admitted), job);
    };

  routes.post('/v1/completions', generate(completionSchema, 'completions', (t, caller, b, sessionId) => t.completion(caller, b, sessionId)));
  routes.post('/v1/chat/completions', generate(chatSchema, 'chat', (t, caller, b, sessionId) => t.chat(caller, b, sessionId)));

  return routes;
}

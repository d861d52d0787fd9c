/** OpenAI's completions and chat completions: stateless, with optional session reuse (session_id / X-Session-Id). */
import { Hono } from 'hono';
import { readGenerationBody } from '../body.ts';
import { generationContext, ownerOf, servingFor, type AppEnv, type Ctx, type ServerDeps } from '../context.ts';
import { runGeneration } from '../generation.ts';
import { chatSchema, completionSchema } from '../schemas.ts';
import { Translator, sessionIdOf, type Caller } from '../translate.ts';

export function openAiRoutes(deps: ServerDeps): Hono<AppEnv> {
  const routes = new Hono<AppEnv>();
  const caller = (c: Ctx): Caller => ({ requestId: c.get('requestId'), owner: ownerOf(c) });

  routes.post('/v1/completions', async (c) => {
    const parts = servingFor(deps.runtime, true);
    const b = await readGenerationBody(c.req.raw, deps.config.maxBodyBytes, completionSchema, 'completions', parts.model.id);
    const sessionId = sessionIdOf(c.req.header('x-session-id'), b.session_id);
    const job = new Translator(deps.config, parts).completion(caller(c), b, sessionId);
    const admitted = await deps.admission.admit(parts, ownerOf(c), sessionId);
    return runGeneration(generationContext(c, deps, parts, admitted), job);
  });

  routes.post('/v1/chat/completions', async (c) => {
    const parts = servingFor(deps.runtime, true);
    const b = await readGenerationBody(c.req.raw, deps.config.maxBodyBytes, chatSchema, 'chat', parts.model.id);
    const sessionId = sessionIdOf(c.req.header('x-session-id'), b.session_id);
    const job = new Translator(deps.config, parts).chat(caller(c), b, sessionId);
    const admitted = await deps.admission.admit(parts, ownerOf(c), sessionId);
    return runGeneration(generationContext(c, deps, parts, admitted), job);
  });

  return routes;
}

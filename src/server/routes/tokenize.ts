/**
 * vLLM's /tokenize and /detokenize (also under /v1/): what a prompt or chat costs in tokens before
 * sending it, and ids back into text. No generation, no session, no admission.
 */
import { Hono } from 'hono';
import type { z } from 'zod';
import { readJsonBody } from '../body.ts';
import { servingFor, type AppEnv, type Ctx, type ServerDeps } from '../context.ts';
import { ApiError } from '../errors.ts';
import { detokenizeSchema, parseWith, tokenizeSchema } from '../schemas.ts';
import { Translator } from '../translate.ts';

export function tokenizeRoutes(deps: ServerDeps): Hono<AppEnv> {
  const routes = new Hono<AppEnv>();

  const read = async <S extends z.ZodType<{ model?: string | null }>>(c: Ctx, schema: S) => {
    const parts = servingFor(deps.runtime, false);
    const body = parseWith(schema, await readJsonBody(c.req.raw, deps.config.maxBodyBytes));
    if (body.model != null && body.model !== parts.model.id) {
      throw new ApiError('model_not_found', `The model '${body.model}' does not exist; this server serves '${parts.model.id}'.`, 'model');
    }
    return { parts, body, translator: new Translator(deps.config, parts) };
  };

  const tokenize = async (c: Ctx) => {
    const { parts, body, translator } = await read(c, tokenizeSchema);
    const tokens = translator.tokenize(body);
    const tokenizer = parts.model.loaded.tokenizer;
    return c.json({
      count: tokens.length,
      max_model_len: parts.model.contextLength,
      tokens,
      token_strs: body.return_token_strs ? tokens.map((id) => tokenizer.idToToken(id) ?? null) : null,
    });
  };
  const detokenize = async (c: Ctx) => {
    const { body, translator } = await read(c, detokenizeSchema);
    return c.json({ prompt: translator.detokenize(body) });
  };

  for (const prefix of ['', '/v1']) {
    routes.post(`${prefix}/tokenize`, tokenize);
    routes.post(`${prefix}/detokenize`, detokenize);
  }
  return routes;
}

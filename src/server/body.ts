/** Reads JSON request bodies under a byte limit: the declared Content-Length and the bytes actually read. */
import type { z } from 'zod';
import { ApiError } from './errors.ts';
import { parseWith, refuseUnsupported } from './schemas.ts';

function tooLarge(limit: number): ApiError {
  return new ApiError('body_too_large', `The request body is larger than the limit of ${limit} bytes.`);
}

/** The parsed body; `undefined` for an empty body when `allowEmpty`. */
export async function readJsonBody(request: Request, limit: number, allowEmpty = false): Promise<unknown> {
  const declared = request.headers.get('content-length');
  if (declared !== null && Number(declared) > limit) throw tooLarge(limit);
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (request.body) {
    const reader = request.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > limit) {
        await reader.cancel().catch(() => {});
        throw tooLarge(limit);
      }
      chunks.push(value);
    }
  }
  const text = Buffer.concat(chunks, total).toString('utf8');
  if (text.trim() === '') {
    if (allowEmpty) return undefined;
    throw new ApiError('invalid_json', 'The request body is empty; send a JSON object.');
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ApiError('invalid_json', `The request body is not valid JSON: ${(error as Error).message}.`);
  }
}

/**
 * A generation request's body: fields that would change the output unsupported are refused, the rest
 * validated, and a `model` other than the served one is 404 model_not_found.
 */
export async function readGenerationBody<S extends z.ZodType<{ model?: string | null }>>(
  request: Request,
  limit: number,
  schema: S,
  endpoint: 'completions' | 'chat' | 'append',
  servedModel: string,
): Promise<z.infer<S>> {
  const raw = await readJsonBody(request, limit);
  if (raw && typeof raw === 'object' && !Array.isArray(raw)) refuseUnsupported(raw as Record<string, unknown>, endpoint);
  const parsed = parseWith(schema, raw);
  if (parsed.model != null && parsed.model !== servedModel) {
    throw new ApiError('model_not_found', `The model '${parsed.model}' does not exist; this server serves '${servedModel}'.`, 'model');
  }
  return parsed;
}

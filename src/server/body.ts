/** Reads JSON request bodies under a byte limit: the declared Content-Length and the bytes actually read. */
import type { z } from 'zod';
import { ApiError, ClientGoneError, quoteForMessage } from './errors.ts';
import { parseWith, refuseUnsupported } from './schemas.ts';

function tooLarge(limit: number): ApiError {
  return new ApiError('body_too_large', `The request body is larger than the limit of ${limit} bytes.`);
}

/** `application/json` or a `+json` type, with any parameters (`; charset=utf-8`). */
const JSON_MEDIA_TYPE = /^\s*application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i;

/**
 * A body with a Content-Type that is not JSON is refused (415) before it is read: a form post
 * (`curl -d` sends application/x-www-form-urlencoded) would otherwise be parsed as JSON by luck.
 * No Content-Type, or an empty body, is accepted.
 */
function checkContentType(request: Request, declared: string | null): void {
  const type = request.headers.get('content-type');
  if (type === null || type.trim() === '' || JSON_MEDIA_TYPE.test(type) || declared === '0') return;
  throw new ApiError(
    'unsupported_media_type',
    `Content-Type ${quoteForMessage(type.split(';')[0].trim())} is not supported; send the body as JSON with Content-Type: application/json.`,
  );
}

/** The parsed body; `undefined` for an empty body when `allowEmpty`. A client that leaves mid-body is ClientGoneError('body'). */
export async function readJsonBody(request: Request, limit: number, allowEmpty = false): Promise<unknown> {
  const declared = request.headers.get('content-length');
  checkContentType(request, declared);
  if (declared !== null && Number(declared) > limit) throw tooLarge(limit);
  let body: Buffer;
  if (declared !== null && /^\d+$/.test(declared)) {
    // A declared length is what Node's parser holds the body to, so it is under the limit: read it in
    // one piece. Under @hono/node-server that reads the socket directly, where `request.body` would
    // first build a full undici Request around a web stream of it (about 0.4 ms a request).
    try {
      body = Buffer.from(await request.arrayBuffer());
    } catch {
      throw new ClientGoneError('body');
    }
    // Outside Node's parser (a Request built in a test) nothing held the body to its declared length.
    if (body.length > limit) throw tooLarge(limit);
  } else body = await readLimited(request, limit);
  const text = body.toString('utf8');
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

/** A body without a declared length (chunked), read while counting against the limit. */
async function readLimited(request: Request, limit: number): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (request.body) {
    const reader = request.body.getReader();
    for (;;) {
      let next: Awaited<ReturnType<typeof reader.read>>;
      try {
        next = await reader.read();
      } catch {
        // The request stream fails only when its connection does: closed by the client, or cut by REQUEST_TIMEOUT_SECONDS.
        throw new ClientGoneError('body');
      }
      const { done, value } = next;
      if (done) break;
      total += value.byteLength;
      if (total > limit) {
        await reader.cancel().catch(() => {});
        throw tooLarge(limit);
      }
      chunks.push(value);
    }
  }
  return Buffer.concat(chunks, total);
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

/**
 * The body of POST /v1/responses: validation, the fields this server cannot honour (400 naming the
 * field, never silently ignored), `text.format` in chat's terms. No HTTP beyond errors.
 */
import { z } from 'zod';
import { ApiError } from './errors.ts';
import { parseWith, type ResponseFormatBody } from './schemas.ts';

const RESPONSE_ID = /^resp_[A-Za-z0-9]{1,64}$/;

/** Responses' `text.format`: as chat's response_format, with the json_schema fields flat on the format. */
export const textFormatSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text') }),
  z.object({ type: z.literal('json_object') }),
  z.object({
    type: z.literal('json_schema'),
    name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1 to 64 letters, digits, underscores or dashes'),
    description: z.string().nullish(),
    schema: z.record(z.string(), z.unknown()),
    strict: z.boolean().nullish(),
  }),
]);
export type TextFormat = z.infer<typeof textFormatSchema>;

export const responseSchema = z.object({
  model: z.string().nullish(),
  input: z.union([z.string(), z.array(z.unknown()).min(1, 'must hold at least one item')]),
  instructions: z.string().nullish(),
  previous_response_id: z.string().nullish(),
  store: z.boolean().nullish(),
  stream: z.boolean().nullish(),
  background: z.boolean().nullish(),
  max_output_tokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  truncation: z.enum(['auto', 'disabled']).nullish(),
  metadata: z
    .record(z.string().max(64), z.string().max(512))
    .refine((m) => Object.keys(m).length <= 16, 'must have at most 16 keys')
    .nullish(),
  text: z.object({ format: textFormatSchema.nullish(), verbosity: z.string().nullish() }).nullish(),
  // warmkv extensions, as on chat completions.
  top_k: z.number().int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).nullish(),
  seed: z.number().int().nullish(),
  stop: z.union([z.string(), z.array(z.string())]).nullish(),
  ignore_eos: z.boolean().nullish(),
  /** Checked in responses-tools.ts, which names the offending entry. */
  tools: z.array(z.unknown()).nullish(),
  tool_choice: z.unknown().optional(),
  parallel_tool_calls: z.boolean().nullish(),
  /** Caps calls to built-in tools, which this server refuses: it cannot change the output. */
  max_tool_calls: z.number().int().min(1).nullish(),
  // Hints OpenAI documents as not changing the output: accepted and ignored.
  user: z.string().nullish(),
  safety_identifier: z.string().nullish(),
  prompt_cache_key: z.string().nullish(),
  service_tier: z.string().nullish(),
});
export type ResponseBody = z.infer<typeof responseSchema>;

type Check = (value: unknown) => boolean;
const isSet: Check = (v) => v !== undefined && v !== null;
const nonEmptyArray: Check = (v) => Array.isArray(v) && v.length > 0;

/** Fields that would change the output and are not implemented (reasoning, prompt templates, ...). */
const UNSUPPORTED: Record<string, [Check, string]> = {
  reasoning: [(v) => isSet(v) && typeof v === 'object' && Object.values(v as object).some(isSet), 'Reasoning options are not supported by this server'],
  include: [nonEmptyArray, 'Extra output data (include) is not supported by this server'],
  conversation: [isSet, 'Conversations are not supported by this server; chain responses with previous_response_id'],
  prompt: [isSet, 'Prompt templates are not supported by this server'],
  top_logprobs: [(v) => typeof v === 'number' && v !== 0, 'Log probabilities are not supported by this server'],
  context_management: [isSet, 'Context management is not supported by this server; use truncation'],
  session_id: [isSet, 'Responses keep their own sessions (docs/api.md, "How responses use the cache"); chain them with previous_response_id'],
  stream_options: [(v) => isSet(v) && (v as { include_obfuscation?: unknown }).include_obfuscation === true, 'Stream obfuscation is not supported by this server'],
};

/** Validates the body: unsupported fields first (they name the field), then the schema. */
export function parseResponseBody(raw: unknown): ResponseBody {
  if (raw && typeof raw === 'object' && !Array.isArray(raw)) {
    for (const [field, [check, why]] of Object.entries(UNSUPPORTED)) {
      const value = (raw as Record<string, unknown>)[field];
      if (check(value)) throw new ApiError('unsupported_parameter', `${why}: '${field}' with this value is not supported.`, field);
    }
  }
  const body = parseWith(responseSchema, raw);
  if (body.previous_response_id != null && !RESPONSE_ID.test(body.previous_response_id)) {
    throw new ApiError('invalid_request', `Invalid 'previous_response_id': '${body.previous_response_id}'. Expected an ID that begins with 'resp'.`, 'previous_response_id');
  }
  if (body.background && body.store === false) {
    throw new ApiError('invalid_request', 'Background responses must be stored: background: true needs store: true.', 'background');
  }
  return body;
}

/** `text.format` as chat's `response_format`, which the constrained decoding (engine/grammar.ts) enforces. */
export function responseFormatOf(format: TextFormat | null | undefined): ResponseFormatBody | undefined {
  if (!format || format.type !== 'json_schema') return format ?? undefined;
  return { type: 'json_schema', json_schema: { name: format.name, description: format.description, schema: format.schema, strict: format.strict } };
}

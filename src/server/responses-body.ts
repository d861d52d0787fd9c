/**
 * The body of POST /v1/responses: validation, the fields this server cannot honour (400 naming the
 * field, never silently ignored), and input items into conversation messages. No HTTP beyond errors.
 */
import { z } from 'zod';
import { newResponseId, type ConversationMessage, type InputItem } from '../responses/store.ts';
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
  // Hints OpenAI documents as not changing the output: accepted and ignored.
  user: z.string().nullish(),
  safety_identifier: z.string().nullish(),
  prompt_cache_key: z.string().nullish(),
  service_tier: z.string().nullish(),
  parallel_tool_calls: z.boolean().nullish(),
});
export type ResponseBody = z.infer<typeof responseSchema>;

type Check = (value: unknown) => boolean;
const isSet: Check = (v) => v !== undefined && v !== null;
const nonEmptyArray: Check = (v) => Array.isArray(v) && v.length > 0;

/** Fields that would change the output and are not implemented (tool calling, structured output, ...). */
const UNSUPPORTED: Record<string, [Check, string]> = {
  tools: [nonEmptyArray, 'Tool calling is not supported by this server yet'],
  tool_choice: [(v) => isSet(v) && v !== 'none' && v !== 'auto', 'Tool calling is not supported by this server yet'],
  max_tool_calls: [isSet, 'Tool calling is not supported by this server yet'],
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

const ROLES = new Set(['user', 'system', 'developer', 'assistant']);

/** `input` as items with ids (for input_items) and as template messages. */
export function inputItemsOf(input: ResponseBody['input']): { items: InputItem[]; messages: ConversationMessage[] } {
  if (typeof input === 'string') {
    return { items: [{ id: newResponseId('msg'), type: 'message', role: 'user', status: 'completed', content: [{ type: 'input_text', text: input }] }], messages: [{ role: 'user', content: input }] };
  }
  const items: InputItem[] = [];
  const messages: ConversationMessage[] = [];
  input.forEach((raw, i) => {
    const param = `input[${i}]`;
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ApiError('invalid_request', `Invalid value for '${param}': must be an input item object.`, param);
    const item = raw as Record<string, unknown>;
    const type = item.type ?? 'message';
    if (type !== 'message') {
      const why = typeof type === 'string' && /function_call|tool|computer|mcp|custom/.test(type) ? 'Tool calling is not supported by this server yet' : 'Only message items are supported by this server';
      throw new ApiError('unsupported_parameter', `${why}: '${param}.type' '${String(type)}' is not supported.`, `${param}.type`);
    }
    const role = item.role;
    if (typeof role !== 'string' || !ROLES.has(role)) {
      throw new ApiError('invalid_request', `Invalid value for '${param}.role': must be one of user, system, developer, assistant.`, `${param}.role`);
    }
    const text = contentText(item.content, role, `${param}.content`);
    const partType = role === 'assistant' ? 'output_text' : 'input_text';
    const content: InputItem['content'] = partType === 'output_text' ? [{ type: 'output_text', text, annotations: [] }] : [{ type: 'input_text', text }];
    items.push({ id: typeof item.id === 'string' ? item.id : newResponseId('msg'), type: 'message', role: role as InputItem['role'], status: 'completed', content });
    messages.push({ role: role === 'developer' ? 'system' : (role as ConversationMessage['role']), content: text });
  });
  return { items, messages };
}

/** A message's content: a string, or text parts (input_text; output_text for assistant messages). */
function contentText(content: unknown, role: string, param: string): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) throw new ApiError('invalid_request', `Invalid value for '${param}': must be a string or an array of content parts.`, param);
  return content
    .map((part, j) => {
      const p = part as Record<string, unknown> | null;
      const allowed = role === 'assistant' ? ['output_text', 'input_text'] : ['input_text'];
      if (!p || typeof p !== 'object' || typeof p.type !== 'string') throw new ApiError('invalid_request', `Invalid value for '${param}[${j}]': must be a content part with a type.`, `${param}[${j}]`);
      if (!allowed.includes(p.type)) {
        const kind = allowed.includes('output_text') ? "'output_text'" : "'input_text'";
        throw new ApiError('unsupported_parameter', `Content parts of type '${p.type}' are not supported here; send ${kind}.`, `${param}[${j}].type`);
      }
      if (typeof p.text !== 'string') throw new ApiError('invalid_request', `Invalid value for '${param}[${j}].text': is required.`, `${param}[${j}].text`);
      return p.text;
    })
    .join('');
}

/**
 * Request bodies: zod schemas for every endpoint, and the check that refuses fields that would change
 * the output but are not implemented (rather than silently ignoring them). Unknown fields that do not
 * change the output are accepted and dropped.
 */
import { z } from 'zod';
import { ApiError } from './errors.ts';

/**
 * Session ids are chosen by clients: printable, short, no path characters, and not a dot segment
 * ("." and ".." would be rewritten by URL normalisation, so /v1/sessions/{id} could never reach them).
 */
const SESSION_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
const SESSION_ID_RULE = "must be 1-128 characters of letters, digits, '.', '_', ':' and '-', and not '.' or '..'";

export function isValidSessionId(id: string): boolean {
  return SESSION_ID_PATTERN.test(id) && id !== '.' && id !== '..';
}

export const sessionIdSchema = z.string().refine(isValidSessionId, SESSION_ID_RULE);

/**
 * The one check for a session id from a URL path, a body or the X-Session-Id header: the same 400
 * wherever it came from, and the id itself is never echoed (it may be 10 KB, or hold a newline).
 */
export function checkSessionId(id: string): string {
  if (!isValidSessionId(id)) throw new ApiError('invalid_request', `Invalid value for 'session_id': ${SESSION_ID_RULE}.`, 'session_id');
  return id;
}

/** Alternatives per token in logprobs, as OpenAI's chat API and vLLM's default max_logprobs. */
export const MAX_TOP_LOGPROBS = 20;

const tokenIds = z.array(z.number().int().min(0)).min(1, 'must hold at least one token id');

function isTokenId(value: unknown): boolean {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function isTokenIds(value: unknown): value is number[] {
  if (!Array.isArray(value) || value.length === 0) return false;
  for (const item of value) if (!isTokenId(item)) return false;
  return true;
}

/**
 * Token-id prompts are the whole conversation on every turn, so their check is one loop: zod's
 * element-by-element array of int() costs about 0.3 us a token (0.12 ms for 400). These come first
 * in their unions and only accept; what they refuse falls through to `tokenIds` and the other
 * options, and `abort` keeps them out of the union's error (zod reports the one option that got
 * furthest), so a refused prompt gets the same message as before.
 */
const fastTokenIds = z.custom<number[]>(isTokenIds, { abort: true });
const fastTokenIdLists = z.custom<number[][]>((value) => Array.isArray(value) && value.length > 0 && value.every(isTokenIds), { abort: true });
const stop = z.union([z.string(), z.array(z.string())]);

/** Fields shared by every generating endpoint. `null` means absent, as in OpenAI's API. */
/** OpenAI's structured outputs: enforced by constrained decoding (engine/grammar.ts). */
export const responseFormat = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text') }),
  z.object({ type: z.literal('json_object') }),
  z.object({
    type: z.literal('json_schema'),
    json_schema: z.object({
      name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1 to 64 letters, digits, underscores or dashes'),
      description: z.string().nullish(),
      schema: z.record(z.string(), z.unknown()).nullish(),
      strict: z.boolean().nullish(),
    }),
  }),
]);
export type ResponseFormatBody = z.infer<typeof responseFormat>;

const generationFields = {
  model: z.string().nullish(),
  max_tokens: z.number().int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  /** -1 (vLLM) and 0 both disable top-k. */
  top_k: z.number().int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).nullish(),
  seed: z.number().int().nullish(),
  stop: stop.nullish(),
  stream: z.boolean().nullish(),
  /** include_step_stats is a warmkv extension: each chunk carries this request's engine steps (`warmkv.steps`). */
  stream_options: z.object({ include_usage: z.boolean().nullish(), include_step_stats: z.boolean().nullish() }).nullish(),
  user: z.string().nullish(),
  ignore_eos: z.boolean().nullish(),
  truncation: z.enum(['auto', 'error']).nullish(),
  n: z.number().int().nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  /** Token id (as a string key, as OpenAI's) -> bias added to its logit. */
  logit_bias: z.record(z.string().regex(/^\d+$/, 'keys must be token ids'), z.number().min(-100).max(100)).nullish(),
  /** vLLM: EOS and stop_token_ids cannot end the output before this many tokens. */
  min_tokens: z.number().int().min(0).nullish(),
  stop_token_ids: z.array(z.number().int().min(0)).nullish(),
  include_stop_str_in_output: z.boolean().nullish(),
  response_format: responseFormat.nullish(),
};

export const completionSchema = z.object({
  ...generationFields,
  prompt: z.union([z.string(), fastTokenIds, fastTokenIdLists, tokenIds, z.array(z.string()), z.array(tokenIds)]),
  echo: z.boolean().nullish(),
  session_id: sessionIdSchema.nullish(),
  best_of: z.number().int().nullish(),
  /** The sampled token's logprob and this many alternatives (OpenAI allows 5, vLLM 20). */
  logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  suffix: z.string().nullish(),
});
export type CompletionBody = z.infer<typeof completionSchema>;

const textPart = z.object({ type: z.literal('text'), text: z.string() });
const otherPart = z.looseObject({ type: z.string() });
const messageSchema = z.looseObject({
  role: z.string(),
  content: z.union([z.string(), z.array(z.union([textPart, otherPart]))]).nullish(),
  name: z.string().nullish(),
  tool_calls: z.array(z.unknown()).nullish(),
  tool_call_id: z.string().nullish(),
});
export type MessageBody = z.infer<typeof messageSchema>;
const messages = z.array(messageSchema).min(1, 'must hold at least one message');

export const chatSchema = z.object({
  ...generationFields,
  messages,
  max_completion_tokens: z.number().int().min(1).nullish(),
  session_id: sessionIdSchema.nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(MAX_TOP_LOGPROBS).nullish(),
  /** Checked in tool-calls.ts, which names the offending entry. */
  tools: z.array(z.unknown()).nullish(),
  tool_choice: z.unknown().optional(),
  parallel_tool_calls: z.boolean().nullish(),
});
export type ChatBody = z.infer<typeof chatSchema>;

/** Native append API: `prompt` is added to the session's transcript. */
export const appendSchema = z.object({
  ...generationFields,
  prompt: z.union([z.string(), fastTokenIds, tokenIds]),
  echo: z.boolean().nullish(),
});
export type AppendBody = z.infer<typeof appendSchema>;

export const createSessionSchema = z
  .object({
    session_id: sessionIdSchema.nullish(),
    prompt: z.union([z.string(), fastTokenIds, tokenIds]).nullish(),
    messages: messages.nullish(),
    /** With `messages`: end the prefill with the assistant turn's opening (default false). */
    add_generation_prompt: z.boolean().nullish(),
  })
  .refine((b) => b.prompt == null || b.messages == null, { message: 'give prompt or messages, not both', path: ['messages'] });
export type CreateSessionBody = z.infer<typeof createSessionSchema>;

export const listSessionsQuery = z.object({
  limit: z.coerce.number().int().min(1).max(100).default(20),
  after: sessionIdSchema.optional(),
  order: z.enum(['asc', 'desc']).default('desc'),
});

/** `messages[0].content` style. */
export function paramOf(path: ReadonlyArray<PropertyKey>): string | null {
  if (path.length === 0) return null;
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out;
}

export function parseWith<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new ApiError('invalid_request', 'The request body must be a JSON object.');
  }
  const parsed = schema.safeParse(input, { reportInput: true });
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const param = paramOf(issue.path);
  const last = [...issue.path].reverse().find((p) => typeof p === 'string') as string | undefined;
  let message = issue.message;
  if (issue.input === undefined && (issue.code === 'invalid_type' || issue.code === 'invalid_union')) message = 'is required';
  else if (issue.code === 'invalid_union') message = UNION_HINTS[last ?? ''] ?? 'has an invalid type';
  throw new ApiError('invalid_request', param ? `Invalid value for '${param}': ${message}.` : `Invalid request: ${message}.`, param);
}

const UNION_HINTS: Record<string, string> = {
  prompt: 'must be a string, an array of token ids, or an array of either',
  stop: 'must be a string or an array of strings',
  content: 'must be a string or an array of content parts',
};

type Check = (value: unknown) => boolean;
const isSet: Check = (v) => v !== undefined && v !== null;
const notOne: Check = (v) => isSet(v) && v !== 1;
const nonEmptyArray: Check = (v) => Array.isArray(v) && v.length > 0;
const nonEmptyObject: Check = (v) => isSet(v) && typeof v === 'object' && Object.keys(v as object).length > 0;
const isTrue: Check = (v) => v === true;

/** Fields that change the output and are not implemented: refused with 400 instead of ignored. */
const UNSUPPORTED: Record<string, Check> = {
  best_of: notOne,
  tools: nonEmptyArray,
  functions: nonEmptyArray,
  tool_choice: (v) => isSet(v) && v !== 'none' && v !== 'auto',
  function_call: (v) => isSet(v) && v !== 'none' && v !== 'auto',
  audio: isSet,
  modalities: (v) => Array.isArray(v) && v.some((m) => m !== 'text'),
  prediction: isSet,
  // vLLM extensions that change the output.
  use_beam_search: isTrue,
  length_penalty: (v) => typeof v === 'number' && v !== 1,
  bad_words: nonEmptyArray,
  allowed_token_ids: nonEmptyArray,
  prompt_logprobs: isSet,
  skip_special_tokens: (v) => v === false,
  guided_json: isSet,
  guided_regex: isSet,
  guided_choice: isSet,
  guided_grammar: isSet,
  structured_outputs: isSet,
  chat_template: isSet,
  chat_template_kwargs: nonEmptyObject,
  continue_final_message: isTrue,
  add_generation_prompt: (v) => v === false,
  truncate_prompt_tokens: isSet,
};

const UNSUPPORTED_BY_ENDPOINT: Record<'completions' | 'chat' | 'append', Record<string, Check>> = {
  completions: { ...UNSUPPORTED, suffix: (v) => typeof v === 'string' && v.length > 0 },
  chat: { ...Object.fromEntries(Object.entries(UNSUPPORTED).filter(([field]) => field !== 'tools' && field !== 'tool_choice')), echo: isTrue },
  append: { ...UNSUPPORTED, n: notOne, logprobs: isSet, suffix: (v) => typeof v === 'string' && v.length > 0 },
};

/** Throws 400 unsupported_parameter for the first field present with a value that is not implemented. */
export function refuseUnsupported(body: Record<string, unknown>, endpoint: 'completions' | 'chat' | 'append'): void {
  for (const [field, check] of Object.entries(UNSUPPORTED_BY_ENDPOINT[endpoint])) {
    if (field in body && check(body[field])) {
      throw new ApiError('unsupported_parameter', `'${field}' with this value is not supported by this server.`, field);
    }
  }
}

/** POST /tokenize (vLLM's shapes): a prompt, or chat messages rendered through the template. */
export const tokenizeSchema = z
  .object({
    model: z.string().nullish(),
    prompt: z.string().nullish(),
    messages: messages.nullish(),
    /** Chat: end with the assistant turn's opening (default true, as vLLM). */
    add_generation_prompt: z.boolean().nullish(),
    /** Prompt: add the tokenizer's special tokens such as BOS (default true); chat: default false (the template has them). */
    add_special_tokens: z.boolean().nullish(),
    return_token_strs: z.boolean().nullish(),
  })
  .refine((b) => (b.prompt == null) !== (b.messages == null), { message: 'give exactly one of prompt or messages', path: ['prompt'] });
export type TokenizeBody = z.infer<typeof tokenizeSchema>;

/** POST /detokenize: token ids back into text. */
export const detokenizeSchema = z.object({
  model: z.string().nullish(),
  tokens: z.array(z.number().int().min(0)),
});
export type DetokenizeBody = z.infer<typeof detokenizeSchema>;

/**
 * The request fields every generation endpoint shares, into the engine's terms: OpenAI's sampling
 * fields over the model's generation_config defaults, token ids checked against the vocabulary, and
 * `response_format` as a grammar. translate.ts builds each endpoint's job from these.
 */
import type { GrammarSpec } from '../engine/grammar.ts';
import type { SamplingParams } from '../engine/sampler.ts';
import type { GenerationDefaults } from '../model/model-folder.ts';
import { ApiError } from './errors.ts';
import type { ResponseFormatBody } from './schemas.ts';

export interface SamplingFields {
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  repetition_penalty?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  logit_bias?: Record<string, number> | null;
}

/** What chat, completions and the session API share beyond sampling. */
export interface GenerationFields extends SamplingFields {
  seed?: number | null;
  ignore_eos?: boolean | null;
  truncation?: 'auto' | 'error' | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null; include_step_stats?: boolean | null } | null;
  min_tokens?: number | null;
  stop_token_ids?: number[] | null;
  include_stop_str_in_output?: boolean | null;
  response_format?: ResponseFormatBody | null;
}

/** What POST /v1/responses gives the engine besides its messages. */
export interface ResponseFields extends SamplingFields {
  max_output_tokens?: number | null;
  truncation?: 'auto' | 'disabled' | null;
  stream?: boolean | null;
  seed?: number | null;
  stop?: string | string[] | null;
  ignore_eos?: boolean | null;
  /** `text.format` in chat's terms (responses-body.ts maps it). */
  response_format?: ResponseFormatBody | null;
}

/** A 400 naming `param` for an id at or above the vocabulary size. */
export function checkTokenId(id: number, param: string, vocabSize: number): void {
  if (id >= vocabSize) throw new ApiError('invalid_request', `Invalid value for '${param}': token id ${id} is not below the vocabulary size ${vocabSize}.`, param);
}

/** The request's values, else the model's generation_config defaults, else OpenAI's (temperature 1, top_p 1). */
export function samplingOf(b: SamplingFields, defaults: GenerationDefaults, vocabSize: number): SamplingParams {
  const topK = b.top_k ?? defaults.topK ?? 0;
  return {
    temperature: b.temperature ?? defaults.temperature ?? 1,
    topP: b.top_p ?? defaults.topP ?? 1,
    topK: topK < 0 ? 0 : topK,
    minP: b.min_p ?? defaults.minP ?? 0,
    repetitionPenalty: b.repetition_penalty ?? defaults.repetitionPenalty ?? 1,
    presencePenalty: b.presence_penalty ?? 0,
    frequencyPenalty: b.frequency_penalty ?? 0,
    logitBias: logitBiasOf(b.logit_bias, vocabSize),
  };
}

/** OpenAI's map of id strings to biases as pairs, every id checked against the vocabulary. */
function logitBiasOf(bias: Record<string, number> | null | undefined, vocabSize: number): Array<[number, number]> | null {
  if (bias == null) return null;
  const pairs: Array<[number, number]> = [];
  for (const [key, value] of Object.entries(bias)) {
    const id = Number(key);
    checkTokenId(id, `logit_bias.${key}`, vocabSize);
    if (value !== 0) pairs.push([id, value]);
  }
  return pairs.length > 0 ? pairs : null;
}

/** `response_format` as the engine's grammar: json_object is any JSON object; a json_schema without `schema` is too. */
export function grammarOf(format: ResponseFormatBody | null | undefined): GrammarSpec | undefined {
  if (!format || format.type === 'text') return undefined;
  if (format.type === 'json_object' || !format.json_schema.schema) return { kind: 'json_object' };
  return { kind: 'json_schema', schema: format.json_schema.schema };
}

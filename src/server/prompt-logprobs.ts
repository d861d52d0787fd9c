/**
 * `echo: true` with `logprobs: N` on /v1/completions: the prompt's own tokens with their logprobs
 * before the completion's, as OpenAI returns them (the first prompt token has none: `null`).
 *
 * The prompt is scored in one teacher-forced pass of the engine's decoder (engine/scorer.ts), next to
 * the engine's batches and outside the KV budget (a one-row cache of at most the context, freed after).
 * The values are from the same raw distribution as the completion's logprobs (engine/logprobs.ts).
 */
import { tokenLogprob, type TokenLogprob } from '../engine/logprobs.ts';
import { scoreTokens } from '../engine/scorer.ts';
import type { Serving } from '../serving.ts';
import { ApiError } from './errors.ts';
import type { GenerationJob } from './generation.ts';

/** One prompt token: its logprob and alternatives, or null for the first (nothing predicts it). */
export interface PromptLogprob {
  tokenId: number;
  logprob: TokenLogprob | null;
}

/** Tokens per decoder call while scoring a prompt. */
const SCORE_CHUNK_TOKENS = 128;

/** A prompt that echo with logprobs can score: within the context, so one pass attends to all of it. */
export function checkScorable(input: readonly number[], contextLength: number, param: string): void {
  if (input.length > contextLength) {
    throw new ApiError(
      'context_length_exceeded',
      `'echo' with 'logprobs' scores the prompt in one pass: it has ${input.length} tokens, more than the model's context of ${contextLength}.`,
      param,
    );
  }
}

/** The logprob of every prompt token given the ones before it, with the `k` most likely alternatives. */
export async function scorePrompt(parts: Serving, input: readonly number[], k: number): Promise<PromptLogprob[]> {
  const vocab = parts.model.loaded.vocabSize;
  const scored: PromptLogprob[] = input.map((tokenId) => ({ tokenId, logprob: null }));
  await scoreTokens(parts.engine.model.decoder, input, {
    window: null,
    positionEncoding: parts.model.loaded.folder.positionEncoding,
    chunkTokens: SCORE_CHUNK_TOKENS,
    onLogits: (position, logits) => {
      scored[position + 1].logprob = tokenLogprob(logits, vocab, input[position + 1], k);
    },
  });
  return scored;
}

/** Fills in the prompt logprobs of every choice of a job that asked for them (prompts scored once each). */
export async function withPromptLogprobs(parts: Serving, job: GenerationJob): Promise<GenerationJob> {
  const k = job.request.logprobs;
  if (!job.echoLogprobs || k === undefined) return job;
  const byPrompt = new Map<string, Promise<PromptLogprob[]>>();
  const of = (input: readonly number[]) => {
    const key = input.join(',');
    let pending = byPrompt.get(key);
    if (!pending) byPrompt.set(key, (pending = scorePrompt(parts, input, k)));
    return pending;
  };
  const first = await of(job.request.input);
  const extraChoices = job.extraChoices && (await Promise.all(job.extraChoices.map(async (c) => ({ ...c, promptLogprobs: await of(c.request.input) }))));
  return { ...job, promptLogprobs: first, ...(extraChoices ? { extraChoices } : {}) };
}

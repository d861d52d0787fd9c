/**
 * Log-probabilities of a sampled token and of the most likely alternatives, from the raw model
 * distribution: the log-softmax of the logits as the model gave them, before logit_bias, penalties,
 * temperature or truncation (vLLM's default `raw_logprobs`). One pass for the max, one for the sum of
 * exponentials, and a bounded heap for the top k: O(V log k) per step, only for rows that asked.
 */
import { topKIndices } from './sampler.ts';

export interface RankedLogprob {
  tokenId: number;
  logprob: number;
}

export interface TokenLogprob {
  /** Of the sampled token. */
  logprob: number;
  /** The `k` most likely ids, most likely first (ties by id); empty when none were asked for. */
  top: RankedLogprob[];
}

export function tokenLogprob(logits: Float32Array, vocab: number, chosen: number, k: number): TokenLogprob {
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < vocab; i++) sum += Math.exp(logits[i] - max);
  const logZ = max + Math.log(sum);
  const top: RankedLogprob[] = [];
  if (k > 0) {
    const ids = new Int32Array(Math.min(k, vocab)); // [k]
    topKIndices(logits, vocab, ids.length, ids);
    for (const id of ids) top.push({ tokenId: id, logprob: logits[id] - logZ });
  }
  return { logprob: logits[chosen] - logZ, top };
}

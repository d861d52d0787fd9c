/**
 * Log-probabilities of a sampled token and of the most likely alternatives, from the raw model
 * distribution: the log-softmax of the logits as the model gave them, before logit_bias, penalties,
 * temperature or truncation (vLLM's default `raw_logprobs`). One pass for the max, one for the sum of
 * exponentials, and a bounded heap for the top k: O(V log k) per step, only for rows that asked.
 */
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
  if (k > 0) for (const id of topIds(logits, vocab, Math.min(k, vocab))) top.push({ tokenId: id, logprob: logits[id] - logZ });
  return { logprob: logits[chosen] - logZ, top };
}

/** The k largest logits' ids, largest first, ties by the smaller id: a min-heap of size k. */
function topIds(logits: Float32Array, vocab: number, k: number): number[] {
  // `// [k]` ids; heap[0] is the worst kept. Most ids fail the first comparison against it.
  const heap = new Int32Array(k);
  const worse = (a: number, b: number) => logits[a] < logits[b] || (logits[a] === logits[b] && a > b);
  for (let id = 0; id < k; id++) {
    let i = id;
    heap[i] = id;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!worse(heap[i], heap[parent])) break;
      const swap = heap[i];
      heap[i] = heap[parent];
      heap[parent] = swap;
      i = parent;
    }
  }
  for (let id = k; id < vocab; id++) {
    // A later id never beats an equal logit (ties go to the smaller id), so `<=` rejects it.
    if (logits[id] <= logits[heap[0]]) continue;
    heap[0] = id;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < k && worse(heap[left], heap[smallest])) smallest = left;
      if (right < k && worse(heap[right], heap[smallest])) smallest = right;
      if (smallest === i) break;
      const swap = heap[i];
      heap[i] = heap[smallest];
      heap[smallest] = swap;
      i = smallest;
    }
  }
  return Array.from(heap).sort((a, b) => logits[b] - logits[a] || a - b);
}

import type { Rng } from '../lib/rng.ts';

export interface SamplingParams {
  /** 0 means greedy. */
  temperature: number;
  /** 0 disables. */
  topK: number;
  /** 1 disables. */
  topP: number;
  /** 0 disables: drop tokens below minP times the most likely token's probability. */
  minP: number;
  /** 1 disables; Hugging Face semantics (divide positive logits, multiply negative ones). */
  repetitionPenalty: number;
  /** 0 or absent disables. OpenAI's: subtracted once from the logit of every token generated so far. */
  presencePenalty?: number;
  /** 0 or absent disables. OpenAI's: subtracted as many times as the token was generated so far. */
  frequencyPenalty?: number;
  /** Added to the logit of each token id (OpenAI's logit_bias, ids already checked against the vocabulary). */
  logitBias?: ReadonlyArray<readonly [tokenId: number, bias: number]> | null;
}

export const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1 };

/**
 * Tokens seen so far (prompt and output) for the repetition penalty: a bitmap for O(1) membership and
 * a list so applying the penalty costs the number of distinct tokens, not the vocabulary size.
 */
export class TokenSet {
  private readonly seen: Uint8Array;
  readonly ids: number[] = [];

  constructor(vocabSize: number, initial: Iterable<number> = []) {
    this.seen = new Uint8Array(vocabSize);
    for (const id of initial) this.add(id);
  }

  add(id: number): void {
    if (id >= 0 && id < this.seen.length && this.seen[id] === 0) {
      this.seen[id] = 1;
      this.ids.push(id);
    }
  }
}

/**
 * How often each token was generated in this request, kept as tokens are accepted (never recounted):
 * the presence and frequency penalties cost the number of distinct generated tokens per step.
 */
export class TokenCounts {
  /** `// [vocabSize]` */
  readonly counts: Uint32Array;
  readonly ids: number[] = [];

  constructor(vocabSize: number) {
    this.counts = new Uint32Array(vocabSize);
  }

  add(id: number): void {
    if (id < 0 || id >= this.counts.length) return;
    if (this.counts[id]++ === 0) this.ids.push(id);
  }
}

/** A row's own state beyond its parameters: its output counts, and ids masked out at this step. */
export interface RowState {
  counts: TokenCounts | null;
  /** Ids that may not be sampled now (EOS and stop ids before `min_tokens`); null when none. */
  masked: readonly number[] | null;
}

/** Whether `adjustLogits` changes anything for these parameters and state (the fast path skips it). */
function adjusts(params: SamplingParams, seen: TokenSet | null, row: RowState | null): boolean {
  if (params.repetitionPenalty !== 1 && seen && seen.ids.length > 0) return true;
  if (params.logitBias && params.logitBias.length > 0) return true;
  if (row?.masked) return true;
  return !!row?.counts && row.counts.ids.length > 0 && ((params.presencePenalty ?? 0) !== 0 || (params.frequencyPenalty ?? 0) !== 0);
}

/**
 * Writes the processed logits into `out`: ids masked to -Infinity, logit_bias added, then the
 * repetition penalty (over prompt and output) and the presence and frequency penalties (over output),
 * in vLLM's order. Costs the vocabulary copy plus the number of touched ids.
 */
export function adjustLogits(out: Float32Array, logits: Float32Array, params: SamplingParams, seen: TokenSet | null, row: RowState | null): void {
  const vocab = out.length;
  out.set(logits.subarray(0, vocab));
  if (row?.masked) for (const id of row.masked) if (id < vocab) out[id] = -Infinity;
  if (params.logitBias) for (const [id, bias] of params.logitBias) if (id < vocab) out[id] += bias;
  if (params.repetitionPenalty !== 1 && seen) {
    const penalty = params.repetitionPenalty;
    for (const id of seen.ids) {
      if (id < vocab) out[id] = out[id] > 0 ? out[id] / penalty : out[id] * penalty;
    }
  }
  const presence = params.presencePenalty ?? 0;
  const frequency = params.frequencyPenalty ?? 0;
  if (row?.counts && (presence !== 0 || frequency !== 0)) {
    const counts = row.counts.counts;
    for (const id of row.counts.ids) if (id < vocab) out[id] -= frequency * counts[id] + presence;
  }
}

/** Candidates at least this fraction of the top probability are sorted first; the rest only if needed. */
const NUCLEUS_PREFILTER = 1e-4;

/**
 * Picks the next token from one row of logits. Order as in vLLM: masks and logit_bias, the repetition,
 * frequency and presence penalties (adjustLogits), temperature, top-k, top-p, min-p, then a draw from the renormalised distribution.
 */
export class Sampler {
  private readonly scratch: Float32Array;
  private readonly probs: Float32Array;
  private readonly order: Int32Array;

  constructor(private readonly vocabSize: number) {
    this.scratch = new Float32Array(vocabSize);
    this.probs = new Float32Array(vocabSize);
    this.order = new Int32Array(vocabSize);
  }

  sample(logits: Float32Array, params: SamplingParams, rng: Rng | null, seen: TokenSet | null, state: RowState | null = null): number {
    const vocab = this.vocabSize;
    let row = logits;
    if (adjusts(params, seen, state)) {
      row = this.scratch;
      adjustLogits(row, logits, params, seen, state);
    }
    if (params.temperature <= 0 || !rng || params.topK === 1) return argmax(row, vocab);

    const invTemperature = 1 / params.temperature;
    let max = -Infinity;
    for (let i = 0; i < vocab; i++) if (row[i] > max) max = row[i];
    const probs = this.probs;
    let total = 0;
    for (let i = 0; i < vocab; i++) {
      const p = Math.exp((row[i] - max) * invTemperature);
      probs[i] = p;
      total += p;
    }
    // probs are unnormalised: the most likely token has weight 1.

    let count: number;
    const order = this.order;
    if (params.topK > 0 && params.topK < vocab) {
      count = topKIndices(probs, vocab, params.topK, order);
    } else if (params.topP < 1) {
      count = 0;
      let kept = 0;
      for (let i = 0; i < vocab; i++) {
        if (probs[i] >= NUCLEUS_PREFILTER) {
          order[count++] = i;
          kept += probs[i];
        }
      }
      if (kept < params.topP * total) {
        count = vocab;
        for (let i = 0; i < vocab; i++) order[i] = i;
      }
      sortByProbability(order, count, probs);
    } else {
      count = vocab;
      for (let i = 0; i < vocab; i++) order[i] = i;
    }

    if (params.topP < 1) {
      // Top-p measures mass within what top-k left, or within the whole vocabulary without top-k
      // (the prefilter above may have set aside a tail whose mass still counts).
      let base = total;
      if (params.topK > 0 && params.topK < vocab) {
        base = 0;
        for (let i = 0; i < count; i++) base += probs[order[i]];
      }
      const target = params.topP * base;
      let cumulative = 0;
      let cut = count;
      for (let i = 0; i < count; i++) {
        cumulative += probs[order[i]];
        if (cumulative >= target) {
          cut = i + 1;
          break;
        }
      }
      count = cut;
    }
    if (params.minP > 0) {
      // After top-k / top-p the head token is still the most likely one, with weight 1.
      let kept = 0;
      for (let i = 0; i < count; i++) if (probs[order[i]] >= params.minP) order[kept++] = order[i];
      count = Math.max(kept, 1);
    }

    let mass = 0;
    for (let i = 0; i < count; i++) mass += probs[order[i]];
    let threshold = rng.next() * mass;
    for (let i = 0; i < count; i++) {
      threshold -= probs[order[i]];
      if (threshold < 0) return order[i];
    }
    return order[count - 1];
  }
}

export function argmax(row: Float32Array, length: number): number {
  let best = 0;
  let bestValue = row[0];
  for (let i = 1; i < length; i++) {
    if (row[i] > bestValue) {
      bestValue = row[i];
      best = i;
    }
  }
  return best;
}

/** Descending by probability, ties by id so results never depend on sort stability. */
function sortByProbability(order: Int32Array, count: number, probs: Float32Array): void {
  const view = order.subarray(0, count);
  view.sort((a, b) => probs[b] - probs[a] || a - b);
}

/**
 * The k largest values' ids into `out`, largest first, ties by the smaller id, via a bounded min-heap:
 * O(V log k). Returns k. The sampler runs it over probabilities, logprobs over logits.
 */
export function topKIndices(values: Float32Array, vocab: number, k: number, out: Int32Array): number {
  // `// [k]` ids; heap[0] is the worst kept. Most ids fail the first comparison against it.
  const heap = new Int32Array(k);
  const worse = (a: number, b: number) => values[a] < values[b] || (values[a] === values[b] && a > b);
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
    // A later id never beats an equal value (ties go to the smaller id), so `<=` rejects it.
    if (values[id] <= values[heap[0]]) continue;
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
  out.set(heap);
  sortByProbability(out, k, values);
  return k;
}

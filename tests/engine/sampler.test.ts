import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { adjustLogits, argmax, GREEDY, Sampler, TokenCounts, TokenSet, type RowState, type SamplingParams } from '../../src/engine/sampler.ts';
import { Rng } from '../../src/lib/rng.ts';

const params = (overrides: Partial<SamplingParams>): SamplingParams => ({ ...GREEDY, ...overrides });

/** Logits whose softmax is proportional to the given weights (the largest weight first gets logit 0). */
function logitsOf(weights: number[]): Float32Array {
  return Float32Array.from(weights, (w) => (w > 0 ? Math.log(w) : -Infinity));
}

function draw(logits: Float32Array, p: SamplingParams, n: number, seed = 1, seen: TokenSet | null = null): number[] {
  const sampler = new Sampler(logits.length);
  const rng = new Rng(seed);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[sampler.sample(logits, p, rng, seen)]++;
  return counts;
}

function softmax(values: number[]): number[] {
  const max = Math.max(...values);
  const e = values.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** Upper 0.999 quantile of chi-square (Wilson-Hilferty): loose, and the draws are seeded anyway. */
function chiSquareBound(dof: number): number {
  const z = 3.09;
  const a = 2 / (9 * dof);
  return dof * Math.pow(1 - a + z * Math.sqrt(a), 3);
}

/** Asserts the counts fit `expected` probabilities; ids with expected probability 0 must never occur. */
function assertDistribution(counts: number[], expected: number[], label: string): void {
  const n = counts.reduce((a, b) => a + b, 0);
  let chi = 0;
  let dof = -1;
  for (let i = 0; i < counts.length; i++) {
    if (expected[i] === 0) {
      assert.equal(counts[i], 0, `${label}: id ${i} has probability 0 but was drawn ${counts[i]} times`);
      continue;
    }
    chi += (counts[i] - n * expected[i]) ** 2 / (n * expected[i]);
    dof++;
  }
  if (dof > 0) assert.ok(chi < chiSquareBound(dof), `${label}: chi-square ${chi.toFixed(2)} over ${dof} dof; counts ${counts.join(',')}`);
}

const nonZero = (counts: number[]) => counts.flatMap((c, i) => (c > 0 ? [i] : []));

describe('Sampler: greedy', () => {
  test('temperature 0 is argmax, whatever the other settings', () => {
    const logits = Float32Array.of(0.1, 2.5, -3, 2.4, 1);
    const sampler = new Sampler(5);
    assert.equal(sampler.sample(logits, GREEDY, new Rng(1), null), 1);
    assert.equal(sampler.sample(logits, params({ temperature: 0, topK: 3, topP: 0.5, minP: 0.5 }), new Rng(1), null), 1);
    assert.equal(sampler.sample(logits, params({ temperature: 1 }), null, null), 1, 'no rng: greedy');
    assert.deepEqual(draw(logits, params({ temperature: 2, topK: 1 }), 50), [0, 50, 0, 0, 0], 'top-k 1 is greedy');
  });

  test('argmax breaks ties by the lowest id and only looks at the first `length` entries', () => {
    assert.equal(argmax(Float32Array.of(1, 3, 3, 2), 4), 1);
    assert.equal(argmax(Float32Array.of(-5, -5), 2), 0);
    assert.equal(argmax(Float32Array.of(1, 2, 9), 2), 1);
    assert.equal(argmax(Float32Array.of(-Infinity, -1e30, -Infinity), 3), 1);
  });

  test('logits longer than the vocabulary (padded exports) never yield an id past it', () => {
    const sampler = new Sampler(3);
    const logits = Float32Array.of(0, 1, 0.5, 100, 100);
    assert.equal(sampler.sample(logits, GREEDY, null, null), 1);
    const rng = new Rng(3);
    for (let i = 0; i < 200; i++) assert.ok(sampler.sample(logits, params({ temperature: 1 }), rng, null) < 3, 'sampler.sample(logits, params({ temperature: 1 }), rng, n...');
  });
});

describe('Sampler: repetition penalty (Hugging Face semantics)', () => {
  test('positive logits of seen tokens are divided, negative ones multiplied', () => {
    const sampler = new Sampler(4);
    // Unpenalised winner 0 (3.0); divided by 2 it drops to 1.5 < 2.5.
    assert.equal(sampler.sample(Float32Array.of(3, 2.5, -1, -2), params({ repetitionPenalty: 2 }), null, new TokenSet(4, [0])), 1);
    // A subtraction (3 - 2 = 1) would also lose to 2.5; this one tells them apart: 3 / 1.1 = 2.73 > 2.5, 3 - 1.1 = 1.9 < 2.5.
    assert.equal(sampler.sample(Float32Array.of(3, 2.5, -1, -2), params({ repetitionPenalty: 1.1 }), null, new TokenSet(4, [0])), 0);
    // Negative: -1 * 3 = -3 < -2 (and dividing, -1 / 3 = -0.33, would have kept it the winner).
    assert.equal(sampler.sample(Float32Array.of(-5, -6, -1, -2), params({ repetitionPenalty: 3 }), null, new TokenSet(4, [2])), 3);
    // A zero logit stays zero either way.
    assert.equal(sampler.sample(Float32Array.of(0, -0.5), params({ repetitionPenalty: 10 }), null, new TokenSet(2, [0])), 0);
  });

  test('a penalty below 1 boosts seen tokens', () => {
    const sampler = new Sampler(3);
    assert.equal(sampler.sample(Float32Array.of(1, 1.5, -1), params({ repetitionPenalty: 0.5 }), null, new TokenSet(3, [0])), 0);
    assert.equal(sampler.sample(Float32Array.of(-1, -1.5, -0.6), params({ repetitionPenalty: 0.5 }), null, new TokenSet(3, [0])), 0);
  });

  test('the penalty changes the sampled distribution exactly as the penalised logits', () => {
    const logits = Float32Array.of(1, 0.5, -0.5, 0, 2);
    const seen = new TokenSet(5, [4, 2]);
    const penalised = [1, 0.5, -0.5 * 1.7, 0, 2 / 1.7];
    const counts = draw(logits, params({ temperature: 1, repetitionPenalty: 1.7 }), 5000, 11, seen);
    assertDistribution(counts, softmax(penalised), 'penalised');
  });

  test('penalty 1 or an empty set leaves the logits alone, and the caller\'s logits are never modified', () => {
    const logits = Float32Array.of(3, 2.5);
    const copy = Float32Array.from(logits);
    const sampler = new Sampler(2);
    assert.equal(sampler.sample(logits, params({ repetitionPenalty: 1 }), null, new TokenSet(2, [0])), 0);
    assert.equal(sampler.sample(logits, params({ repetitionPenalty: 5 }), null, new TokenSet(2)), 0);
    assert.equal(sampler.sample(logits, params({ repetitionPenalty: 5 }), null, null), 0);
    assert.equal(sampler.sample(logits, params({ repetitionPenalty: 5 }), null, new TokenSet(2, [0])), 1);
    assert.deepEqual(logits, copy);
  });

  test('TokenSet keeps distinct in-range ids in first-seen order', () => {
    const set = new TokenSet(5, [3, 1, 3, 7, -1, 1]);
    set.add(0);
    set.add(3);
    assert.deepEqual(set.ids, [3, 1, 0]);
  });
});

describe('Sampler: temperature', () => {
  const logits = Float32Array.of(2, 1, 0.5, 0, -1, 3);
  for (const temperature of [0.5, 1, 1.7]) {
    test(`draws follow softmax(logits / ${temperature}) (chi-square, 6000 seeded draws)`, () => {
      const counts = draw(logits, params({ temperature }), 6000, 7);
      assertDistribution(counts, softmax(Array.from(logits, (l) => l / temperature)), `T=${temperature}`);
    });
  }

  test('the same seed gives the same draws, another seed other draws', () => {
    const sampler = new Sampler(6);
    const run = (seed: number) => {
      const rng = new Rng(seed);
      return Array.from({ length: 50 }, () => sampler.sample(logits, params({ temperature: 1 }), rng, null));
    };
    assert.deepEqual(run(5), run(5));
    assert.notDeepEqual(run(5), run(6));
  });
});

describe('Sampler: top-k', () => {
  test('keeps exactly the k most likely tokens, renormalised', () => {
    const weights = [0.05, 0.3, 0.1, 0.25, 0.2, 0.1];
    const counts = draw(logitsOf(weights), params({ temperature: 1, topK: 3 }), 5000, 3);
    assert.deepEqual(nonZero(counts), [1, 3, 4]);
    assertDistribution(counts, [0, 0.3 / 0.75, 0, 0.25 / 0.75, 0.2 / 0.75, 0], 'top-3');
  });

  test('ties at the cut keep the lowest ids', () => {
    const counts = draw(logitsOf([0.1, 0.2, 0.2, 0.2, 0.2, 0.1]), params({ temperature: 1, topK: 2 }), 2000, 4);
    assert.deepEqual(nonZero(counts), [1, 2]);
  });

  test('k of 0 or at least the vocabulary disables it', () => {
    const weights = [0.4, 0.3, 0.2, 0.1];
    for (const topK of [0, 4, 100]) {
      const counts = draw(logitsOf(weights), params({ temperature: 1, topK }), 4000, 5);
      assertDistribution(counts, weights, `topK ${topK}`);
    }
  });

  test('large vocabulary: top-k over 5000 logits keeps exactly k ids', () => {
    const vocab = 5000;
    let state = 17;
    const logits = Float32Array.from({ length: vocab }, () => {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      return (state / 2 ** 32) * 8;
    });
    const top = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]).slice(0, 40).sort((a, b) => a - b);
    const counts = draw(logits, params({ temperature: 0.3, topK: 40 }), 4000, 6);
    const drawn = nonZero(counts);
    for (const id of drawn) assert.ok(top.includes(id), `id ${id} is not in the top 40`);
    assert.ok(drawn.length > 30, `only ${drawn.length} of the top 40 were drawn`);
  });
});

describe('Sampler: top-p', () => {
  const weights = [0.5, 0.3, 0.15, 0.05];
  const cases: Array<[number, number[]]> = [
    [0.49, [0]],
    [0.75, [0, 1]],
    [0.81, [0, 1, 2]],
    [0.97, [0, 1, 2, 3]],
  ];
  for (const [topP, kept] of cases) {
    test(`p = ${topP} keeps the smallest prefix reaching p: ${kept.join(', ')}`, () => {
      const counts = draw(logitsOf(weights), params({ temperature: 1, topP }), 4000, 8);
      assert.deepEqual(nonZero(counts), kept);
      const mass = kept.reduce((s, i) => s + weights[i], 0);
      assertDistribution(counts, weights.map((w, i) => (kept.includes(i) ? w / mass : 0)), `top-p ${topP}`);
    });
  }

  test('the order of ids does not matter, only the probabilities', () => {
    // Same distribution, shuffled ids.
    const counts = draw(logitsOf([0.05, 0.15, 0.5, 0.3]), params({ temperature: 1, topP: 0.75 }), 2000, 9);
    assert.deepEqual(nonZero(counts), [2, 3]);
  });

  test('prefilter path: thousands of tiny tokens still count towards the mass that p is measured on', () => {
    // Weights 1, 0.6, 0.3 and 5000 tokens of 8e-5 (each under the 1e-4 prefilter): total 2.3.
    // p = 0.72 -> target 1.656: 1 + 0.6 = 1.6 falls short, so the third token is kept too.
    // (Measuring p on the prefiltered mass 1.9 would give a target of 1.368 and keep only two.)
    const weights = [1, 0.6, 0.3, ...new Array<number>(5000).fill(8e-5)];
    const counts = draw(logitsOf(weights), params({ temperature: 1, topP: 0.72 }), 3000, 10);
    assert.deepEqual(nonZero(counts), [0, 1, 2]);
    assertDistribution(counts, weights.map((w, i) => (i < 3 ? w / 1.9 : 0)), 'prefiltered top-p');
  });

  test('prefilter path: tiny tokens are never kept when the head reaches p', () => {
    const weights = [1, 0.5, ...new Array<number>(3000).fill(2e-9)];
    const counts = draw(logitsOf(weights), params({ temperature: 1, topP: 0.9 }), 2000, 12);
    assert.deepEqual(nonZero(counts), [0, 1]);
  });

  test('kept mass below p: the full sort runs and the tail is cut at p, ties by the lowest id', () => {
    // One token of weight 1 and 3000 of 9e-5 (under the prefilter): total 1.27, target 0.9 * 1.27 = 1.143.
    const tail = 3000;
    const w = 9e-5;
    const weights = [1, ...new Array<number>(tail).fill(w)];
    const counts = draw(logitsOf(weights), params({ temperature: 1, topP: 0.9 }), 1000, 13);
    const cut = Math.ceil((0.9 * (1 + tail * w) - 1) / w); // tail tokens kept: about 1589
    const drawn = nonZero(counts);
    const maxTail = Math.max(...drawn);
    assert.ok(maxTail <= cut + 1, `tail id ${maxTail} drawn past the cut ${cut}`);
    assert.ok(maxTail > cut - 400, `no tail id near the cut ${cut} (max ${maxTail}): the tail was not kept`);
    const headShare = counts[0] / 1000;
    const expectedHead = 1 / (1 + cut * w);
    assert.ok(Math.abs(headShare - expectedHead) < 0.05, `head share ${headShare}, expected about ${expectedHead.toFixed(3)}`);
  });

  test('ties inside the nucleus are ordered by id, so the cut keeps the lowest ids', () => {
    const counts = draw(logitsOf([0.1, 0.3, 0.3, 0.3]), params({ temperature: 1, topP: 0.55 }), 2000, 14);
    assert.deepEqual(nonZero(counts), [1, 2]);
  });
});

describe('Sampler: min-p', () => {
  const weights = [1, 0.2, 0.05, 0.01];
  test('drops tokens below min_p times the top probability', () => {
    assert.deepEqual(nonZero(draw(logitsOf(weights), params({ temperature: 1, minP: 0.1 }), 3000, 15)), [0, 1]);
    assert.deepEqual(nonZero(draw(logitsOf(weights), params({ temperature: 1, minP: 0.04 }), 3000, 15)), [0, 1, 2]);
    const counts = draw(logitsOf(weights), params({ temperature: 1, minP: 0.04 }), 4000, 16);
    assertDistribution(counts, [1 / 1.25, 0.2 / 1.25, 0.05 / 1.25, 0], 'min-p 0.04');
  });

  test('min_p applies to the temperature-scaled probabilities', () => {
    // T = 0.5 squares the weights: 1, 0.04, 0.0025, 1e-4. min_p 0.03 keeps two.
    assert.deepEqual(nonZero(draw(logitsOf(weights), params({ temperature: 0.5, minP: 0.03 }), 3000, 17)), [0, 1]);
    // T = 2 takes square roots: 1, 0.447, 0.224, 0.1. min_p 0.15 keeps three.
    assert.deepEqual(nonZero(draw(logitsOf(weights), params({ temperature: 2, minP: 0.15 }), 3000, 17)), [0, 1, 2]);
  });

  test('the most likely token always survives', () => {
    assert.deepEqual(nonZero(draw(logitsOf(weights), params({ temperature: 1, minP: 1 }), 200, 18)), [0]);
  });
});

describe('Sampler: combinations in Hugging Face order', () => {
  test('repetition penalty before temperature', () => {
    // Penalised logits [2 / 1.5, 1.9] make id 1 the favourite at any temperature.
    const counts = draw(Float32Array.of(2, 1.9), params({ temperature: 0.1, repetitionPenalty: 1.5 }), 500, 19, new TokenSet(2, [0]));
    assert.ok(counts[1] > 490, `counts ${counts}`);
  });

  test('temperature before top-p', () => {
    // Weights 1, 0.5, 0.25 at T = 0.5 become 1, 0.25, 0.0625: p = 0.7 keeps only the first
    // (top-p before temperature would keep two).
    assert.deepEqual(nonZero(draw(logitsOf([1, 0.5, 0.25]), params({ temperature: 0.5, topP: 0.7 }), 2000, 20)), [0]);
  });

  test('top-k before top-p: p is measured within the top k', () => {
    // Weights 1, .7, .6, .5, .5, .5, .5 (total 4.3). Top-3 mass 2.3; p = 0.6 -> 1.38 keeps two.
    // (p over the whole vocabulary, 2.58, would keep all three.)
    const weights = [1, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5];
    const counts = draw(logitsOf(weights), params({ temperature: 1, topK: 3, topP: 0.6 }), 3000, 21);
    assert.deepEqual(nonZero(counts), [0, 1]);
    assertDistribution(counts, [1 / 1.7, 0.7 / 1.7, 0, 0, 0, 0, 0], 'top-k + top-p');
  });

  test('all five stages together: penalty, temperature, top-k, top-p, min-p', () => {
    // Logits [2, 1.8, 0.9, 0.5, 0]; id 0 seen with penalty 2 -> [1, 1.8, 0.9, 0.5, 0].
    // T = 0.8, relative to the max: weights e^-1, 1, e^-1.125, e^-1.625, e^-2.25 = .368, 1, .325, .197, .105.
    // top-k 3 keeps ids 1, 0, 2 (mass 1.693); p = 0.85 -> 1.439 keeps all three; min-p 0.35 drops id 2.
    const logits = Float32Array.of(2, 1.8, 0.9, 0.5, 0);
    const p = params({ temperature: 0.8, topK: 3, topP: 0.85, minP: 0.35, repetitionPenalty: 2 });
    const counts = draw(logits, p, 3000, 22, new TokenSet(5, [0]));
    assert.deepEqual(nonZero(counts), [0, 1]);
    const head = Math.exp(-1);
    assertDistribution(counts, [head / (1 + head), 1 / (1 + head), 0, 0, 0], 'all five');
  });
});

/** OpenAI's documented formula, from scratch: mu[j] - c[j] * frequency - (c[j] > 0) * presence, after logit_bias. */
function referenceLogits(logits: number[], generated: number[], presence: number, frequency: number, bias: Record<number, number>, masked: number[]): number[] {
  return logits.map((value, j) => {
    if (masked.includes(j)) return -Infinity;
    const count = generated.filter((t) => t === j).length;
    return value + (bias[j] ?? 0) - count * frequency - (count > 0 ? 1 : 0) * presence;
  });
}

describe('presence, frequency, logit_bias and masks', () => {
  const raw = [2.5, -1.25, 0.5, 3, -0.75, 1];
  const generated = [3, 3, 0, 5, 3];
  const countsOf = (ids: number[]) => {
    const counts = new TokenCounts(raw.length);
    for (const id of ids) counts.add(id);
    return counts;
  };

  test('adjustLogits equals the reference on known logits, for every combination', () => {
    const cases: Array<{ presence: number; frequency: number; bias: Record<number, number>; masked: number[] }> = [
      { presence: 0.5, frequency: 0, bias: {}, masked: [] },
      { presence: 0, frequency: 0.75, bias: {}, masked: [] },
      { presence: -1, frequency: 1.5, bias: { 1: 100, 2: -100 }, masked: [] },
      { presence: 2, frequency: -2, bias: { 4: 3.5 }, masked: [0, 5] },
    ];
    for (const c of cases) {
      const params: SamplingParams = { ...GREEDY, presencePenalty: c.presence, frequencyPenalty: c.frequency, logitBias: Object.entries(c.bias).map(([k, v]) => [Number(k), v]) };
      const out = new Float32Array(raw.length);
      adjustLogits(out, Float32Array.from(raw), params, null, { counts: countsOf(generated), masked: c.masked.length ? c.masked : null });
      const expected = referenceLogits(raw, generated, c.presence, c.frequency, c.bias, c.masked);
      out.forEach((v, j) => assert.ok(Math.abs(v - expected[j]) < 1e-6 || v === expected[j], `case ${JSON.stringify(c)} id ${j}: ${v} vs ${expected[j]}`));
    }
  });

  test('greedy picks follow the adjusted logits; the input logits are left as they were', () => {
    const sampler = new Sampler(raw.length);
    const logits = Float32Array.from(raw);
    assert.equal(sampler.sample(logits, GREEDY, null, null), 3);
    // 3 was generated three times: 3 - 3 * 0.4 - 0.2 = 1.6 < 2.5 - 0.4 - 0.2 = 1.9 (id 0).
    const state: RowState = { counts: countsOf(generated), masked: null };
    assert.equal(sampler.sample(logits, { ...GREEDY, presencePenalty: 0.2, frequencyPenalty: 0.4 }, null, null, state), 0);
    assert.equal(sampler.sample(logits, { ...GREEDY, logitBias: [[1, 100]] }, null, null), 1);
    assert.equal(sampler.sample(logits, GREEDY, null, null, { counts: null, masked: [3, 0] }), 5);
    assert.deepEqual(Array.from(logits), raw.map((v) => Math.fround(v)));
  });

  test('sampling draws from the softmax of the adjusted logits', () => {
    const p: SamplingParams = { ...GREEDY, temperature: 1, presencePenalty: 0.5, frequencyPenalty: 0.25, logitBias: [[2, 1.5]] };
    const state: RowState = { counts: countsOf(generated), masked: [4] };
    const expected = softmax(referenceLogits(raw, generated, 0.5, 0.25, { 2: 1.5 }, [4]));
    const sampler = new Sampler(raw.length);
    const rng = new Rng(11);
    const n = 20000;
    const counts = new Array<number>(raw.length).fill(0);
    for (let i = 0; i < n; i++) counts[sampler.sample(Float32Array.from(raw), p, rng, null, state)]++;
    assert.equal(counts[4], 0, 'a masked id is never drawn');
    let chi = 0;
    expected.forEach((q, j) => {
      if (q > 0) chi += (counts[j] - n * q) ** 2 / (n * q);
    });
    assert.ok(chi < chiSquareBound(4), `chi-square ${chi}`);
  });

  test('TokenCounts counts each generated id once per occurrence and lists distinct ids once', () => {
    const counts = countsOf(generated);
    assert.deepEqual(counts.ids, [3, 0, 5]);
    assert.deepEqual(Array.from(counts.counts), [1, 0, 0, 3, 0, 1]);
    counts.add(99);
    assert.deepEqual(counts.ids, [3, 0, 5], 'ids outside the vocabulary are ignored');
  });
});

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Rng } from '../../src/lib/rng.ts';

function stream(seed: number, count: number): number[] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, () => rng.next());
}

/** Upper 0.999 quantile of chi-square with `dof` degrees of freedom (Wilson-Hilferty), a loose bound. */
function chiSquareBound(dof: number): number {
  const z = 3.09;
  const a = 2 / (9 * dof);
  return dof * Math.pow(1 - a + z * Math.sqrt(a), 3);
}

describe('Rng', () => {
  test('the same seed gives the same stream, across instances', () => {
    for (const seed of [0, 1, 42, 0xffffffff, 2 ** 40 + 3, Number.MAX_SAFE_INTEGER]) {
      assert.deepEqual(stream(seed, 1000), stream(seed, 1000), `seed ${seed}`);
    }
  });

  test('interleaving two generators does not change either stream (no shared state)', () => {
    const a = new Rng(5);
    const b = new Rng(6);
    const mixed: number[] = [];
    for (let i = 0; i < 100; i++) {
      mixed.push(a.next());
      b.next();
    }
    assert.deepEqual(mixed, stream(5, 100));
  });

  test('different seeds give different streams (1000 consecutive seeds, no repeated first value)', () => {
    const firsts = new Set<number>();
    for (let seed = 0; seed < 1000; seed++) firsts.add(new Rng(seed).next());
    assert.equal(firsts.size, 1000);
    const a = stream(1, 50);
    const b = stream(2, 50);
    assert.equal(a.filter((v, i) => v === b[i]).length, 0);
  });

  test('values lie in [0, 1), vary, and use more than 32 bits of resolution', () => {
    const rng = new Rng(123);
    let min = 1;
    let max = 0;
    let fine = 0;
    const distinct = new Set<number>();
    for (let i = 0; i < 100_000; i++) {
      const v = rng.next();
      assert.ok(v >= 0 && v < 1, `value ${v} out of [0, 1)`);
      min = Math.min(min, v);
      max = Math.max(max, v);
      distinct.add(v);
      // A value on a 2^-32 grid has v * 2^32 integral; 53-bit values almost never do.
      if (!Number.isInteger(v * 2 ** 32)) fine++;
    }
    assert.ok(min < 1e-3 && max > 1 - 1e-3, `range [${min}, ${max}]`);
    assert.equal(distinct.size, 100_000);
    assert.ok(fine > 99_000, `${fine} values finer than 2^-32`);
  });

  test('uniformity: chi-square over 64 bins, and over pairs (serial correlation)', () => {
    for (const seed of [1, 7, 2 ** 35]) {
      const rng = new Rng(seed);
      const bins = 64;
      const n = 64_000;
      const counts = new Array<number>(bins).fill(0);
      const pairCounts = new Array<number>(64).fill(0);
      let previous = rng.next();
      for (let i = 0; i < n; i++) {
        const v = rng.next();
        counts[Math.floor(v * bins)]++;
        pairCounts[Math.floor(previous * 8) * 8 + Math.floor(v * 8)]++;
        previous = v;
      }
      const expected = n / bins;
      const chi = counts.reduce((s, c) => s + (c - expected) ** 2 / expected, 0);
      const pairChi = pairCounts.reduce((s, c) => s + (c - n / 64) ** 2 / (n / 64), 0);
      assert.ok(chi < chiSquareBound(bins - 1), `seed ${seed}: chi-square ${chi.toFixed(1)}`);
      assert.ok(pairChi < chiSquareBound(63), `seed ${seed}: pair chi-square ${pairChi.toFixed(1)}`);
      // And not suspiciously perfect (a counter would give chi = 0).
      assert.ok(chi > 10, `seed ${seed}: chi-square ${chi.toFixed(1)} too small for random data`);
    }
  });

  test('the mean of many values is near 1/2 and the low bits are not stuck', () => {
    const rng = new Rng(99);
    let sum = 0;
    let odd = 0;
    const n = 50_000;
    for (let i = 0; i < n; i++) {
      const v = rng.next();
      sum += v;
      if (Math.floor(v * 2 ** 53) % 2 === 1) odd++;
    }
    assert.ok(Math.abs(sum / n - 0.5) < 0.01, `mean ${sum / n}`);
    assert.ok(Math.abs(odd / n - 0.5) < 0.02, `lowest bit set in ${odd} of ${n}`);
  });

  test('seeds above 2^32 are not reduced to their low 32 bits', () => {
    for (const low of [0, 1, 12345, 0xfffffffe]) {
      for (const high of [1, 2, 1000, 2 ** 20]) {
        const seed = high * 2 ** 32 + low;
        assert.ok(Number.isSafeInteger(seed), 'Number.isSafeInteger(seed)');
        assert.notDeepEqual(stream(seed, 8), stream(low, 8), `seed ${seed} equals seed ${low}`);
      }
    }
    // And two large seeds that share their low 32 bits differ too.
    assert.notDeepEqual(stream(2 ** 32 + 77, 8), stream(2 * 2 ** 32 + 77, 8));
  });

  test(
    'negative seeds give their own streams (the API accepts any integer seed)',
    () => {
      for (const seed of [-1, -2, -3, -100]) {
        for (const other of [0, 1, 2, 99]) assert.notDeepEqual(stream(seed, 8), stream(other, 8), `seed ${seed} equals seed ${other}`);
      }
    },
  );

  test(
    'simple seeds above 2^32 do not collide with small seeds',
    () => {
      assert.notDeepEqual(stream(2 ** 32 + 1, 8), stream(0, 8), '2^32 + 1 vs 0');
      assert.notDeepEqual(stream(2 ** 32, 8), stream(1, 8), '2^32 vs 1');
      assert.notDeepEqual(stream(3 * 2 ** 32 + 1, 8), stream(2, 8), '3 * 2^32 + 1 vs 2');
    },
  );
});

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { floatArrayToHalf, floatToHalf, halfArrayToFloat, halfToFloat } from '../../src/lib/float16.ts';

/**
 * Independent reference, written from the IEEE 754 binary16 definition with plain double arithmetic
 * (no typed-array punning, no DataView): value = (-1)^s * significand * 2^(exponent), where the
 * significand is an integer of 11 bits (10 for subnormals).
 */
function refHalfToNumber(bits: number): number {
  const negative = bits >= 0x8000;
  const e = Math.floor(bits / 1024) % 32;
  const m = bits % 1024;
  let magnitude: number;
  if (e === 31) magnitude = m === 0 ? Infinity : NaN;
  else if (e === 0) magnitude = m * Math.pow(2, -24);
  else magnitude = (1024 + m) * Math.pow(2, e - 25);
  return negative ? -magnitude : magnitude;
}

function isHalfNaN(bits: number): boolean {
  return (bits & 0x7c00) === 0x7c00 && (bits & 0x3ff) !== 0;
}

/** Round half to even of a non-negative double to an integer (exact for the magnitudes used here). */
function roundHalfEven(x: number): number {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Reference float -> half: quantise the magnitude to the binary16 grid with ties to even, then encode. */
function refNumberToHalf(value: number): number {
  if (Number.isNaN(value)) return 0x7e00;
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0;
  const a = Math.abs(value);
  if (a === Infinity) return sign | 0x7c00;
  // Binade of a: 2^e <= a < 2^(e+1), clamped to the subnormal range below 2^-14.
  let e = -14;
  while (e < 16 && Math.pow(2, e + 1) <= a) e++;
  const quantum = Math.pow(2, e - 10); // spacing of binary16 values in that binade (2^-24 for subnormals)
  const rounded = roundHalfEven(a / quantum) * quantum;
  if (rounded >= 65536) return sign | 0x7c00;
  if (rounded < Math.pow(2, -14)) return sign | (rounded / Math.pow(2, -24));
  let re = -14;
  while (Math.pow(2, re + 1) <= rounded) re++;
  const mantissa = rounded / Math.pow(2, re - 10) - 1024;
  return sign | ((re + 15) * 1024 + mantissa);
}

describe('float16', () => {
  test('halfToFloat matches the binary16 definition for all 65536 bit patterns', () => {
    for (let bits = 0; bits < 65536; bits++) {
      const got = halfToFloat(bits);
      const want = refHalfToNumber(bits);
      if (Number.isNaN(want)) assert.ok(Number.isNaN(got), `0x${bits.toString(16)} should be NaN`);
      else assert.ok(Object.is(got, want), `0x${bits.toString(16)}: got ${got}, want ${want}`);
    }
  });

  test('every half survives float -> half exactly (NaN stays NaN, -0 keeps its sign)', () => {
    let nanCount = 0;
    for (let bits = 0; bits < 65536; bits++) {
      const back = floatToHalf(halfToFloat(bits));
      if (isHalfNaN(bits)) {
        nanCount++;
        assert.ok(isHalfNaN(back), `NaN 0x${bits.toString(16)} came back as 0x${back.toString(16)}`);
      } else if (back !== bits) {
        assert.fail(`0x${bits.toString(16)} came back as 0x${back.toString(16)}`);
      }
    }
    assert.equal(nanCount, 2 * 1023);
    assert.equal(floatToHalf(-0), 0x8000);
    assert.equal(floatToHalf(0), 0x0000);
  });

  test('the reference agrees with itself on the round trip (guards the reference)', () => {
    for (let bits = 0; bits < 65536; bits++) {
      if (isHalfNaN(bits)) continue;
      assert.equal(refNumberToHalf(refHalfToNumber(bits)), bits);
    }
  });

  test('ties between neighbouring halves round to the even one, everywhere', () => {
    // Midpoints of consecutive finite halves are exact float32 values (12 significant bits).
    let checked = 0;
    for (let bits = 0; bits < 0x7bff; bits++) {
      const lo = refHalfToNumber(bits);
      const hi = refHalfToNumber(bits + 1);
      const mid = (lo + hi) / 2;
      assert.equal(Math.fround(mid), mid);
      const even = bits % 2 === 0 ? bits : bits + 1;
      assert.equal(floatToHalf(mid), even, `tie between 0x${bits.toString(16)} and 0x${(bits + 1).toString(16)}`);
      assert.equal(floatToHalf(-mid), 0x8000 | even);
      // Just above and below the tie (next float32 values) go to the nearer neighbour.
      const up = nextFloat32(mid, 1);
      const down = nextFloat32(mid, -1);
      assert.equal(floatToHalf(up), bits + 1, `just above the tie after 0x${bits.toString(16)}`);
      assert.equal(floatToHalf(down), bits, `just below the tie after 0x${bits.toString(16)}`);
      checked++;
    }
    assert.equal(checked, 0x7bff);
    // Hand-checked examples: 1 + 2^-11 is the tie between 1 (0x3c00, even) and 1 + 2^-10 (0x3c01).
    assert.equal(floatToHalf(1 + 2 ** -11), 0x3c00);
    assert.equal(floatToHalf(1 + 3 * 2 ** -11), 0x3c02);
    // Smallest subnormal tie: 2^-25 is halfway between 0 and 2^-24 and goes to 0.
    assert.equal(floatToHalf(2 ** -25), 0x0000);
    assert.equal(floatToHalf(3 * 2 ** -25), 0x0002);
  });

  test('overflow to infinity and the largest finite half', () => {
    assert.equal(floatToHalf(65504), 0x7bff);
    assert.equal(floatToHalf(65519.99), 0x7bff); // below the tie with 65536 stays finite
    assert.equal(floatToHalf(65520), 0x7c00); // the tie rounds to even (0x7c00 = infinity)
    assert.equal(floatToHalf(65536), 0x7c00);
    assert.equal(floatToHalf(1e9), 0x7c00);
    assert.equal(floatToHalf(3.4e38), 0x7c00);
    assert.equal(floatToHalf(-1e9), 0xfc00);
    assert.equal(floatToHalf(Infinity), 0x7c00);
    assert.equal(floatToHalf(-Infinity), 0xfc00);
    assert.ok(isHalfNaN(floatToHalf(NaN)), 'isHalfNaN(floatToHalf(NaN))');
    assert.equal(halfToFloat(0x7c00), Infinity);
    assert.equal(halfToFloat(0xfc00), -Infinity);
  });

  test('subnormals: exact values, rounding, underflow to signed zero, carry into the normal range', () => {
    assert.equal(halfToFloat(0x0001), 2 ** -24);
    assert.equal(halfToFloat(0x03ff), 1023 * 2 ** -24);
    assert.equal(halfToFloat(0x0400), 2 ** -14);
    for (let m = 1; m < 1024; m++) assert.equal(floatToHalf(m * 2 ** -24), m);
    assert.equal(floatToHalf(0.6 * 2 ** -24), 0x0001);
    assert.equal(floatToHalf(0.4 * 2 ** -24), 0x0000);
    assert.equal(floatToHalf(-0.4 * 2 ** -24), 0x8000);
    assert.equal(floatToHalf(1e-30), 0x0000);
    assert.equal(floatToHalf(-1e-30), 0x8000);
    assert.equal(floatToHalf(1e-45), 0x0000); // a float32 subnormal
    // 1023.5 * 2^-24 is a tie between 0x03ff (odd) and 0x0400 (the smallest normal): rounds up.
    assert.equal(floatToHalf(1023.5 * 2 ** -24), 0x0400);
    assert.equal(floatToHalf(1023.4 * 2 ** -24), 0x03ff);
  });

  test('random float32 values agree with the reference (200k samples over the whole range)', () => {
    const bitsView = new Uint32Array(1);
    const floatView = new Float32Array(bitsView.buffer);
    let state = 0x12345678;
    for (let i = 0; i < 200_000; i++) {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      // Half the samples in the interesting exponent range [2^-26, 2^17), half anywhere.
      let bits = state;
      if (i % 2 === 0) bits = (state & 0x807fffff) | ((101 + (state >>> 23) % 43) << 23);
      bitsView[0] = bits;
      const value = floatView[0];
      const got = floatToHalf(value);
      const want = refNumberToHalf(value);
      if (Number.isNaN(value)) assert.ok(isHalfNaN(got), 'isHalfNaN(got)');
      else if (got !== want) assert.fail(`${value} (0x${bits.toString(16)}): got 0x${got.toString(16)}, want 0x${want.toString(16)}`);
    }
  });

  test('array helpers convert element-wise and fill a given target', () => {
    const source = Float32Array.of(0, -0, 1, -2.5, 65504, 1e6, 2 ** -24, NaN, 0.1);
    const halves = floatArrayToHalf(source);
    assert.ok(halves instanceof Uint16Array, 'halves instanceof Uint16Array');
    assert.deepEqual(Array.from(halves.subarray(0, 7)), [0x0000, 0x8000, 0x3c00, 0xc100, 0x7bff, 0x7c00, 0x0001]);
    assert.ok(isHalfNaN(halves[7]), 'isHalfNaN(halves[7])');
    assert.equal(halves[8], 0x2e66);
    const target = new Float32Array(9);
    const back = halfArrayToFloat(halves, target);
    assert.equal(back, target);
    assert.deepEqual(Array.from(back.subarray(0, 7)), [0, -0, 1, -2.5, 65504, Infinity, 2 ** -24]);
    assert.ok(Number.isNaN(back[7]), 'Number.isNaN(back[7])');
    assert.equal(back[8], refHalfToNumber(0x2e66));
  });
});

function nextFloat32(value: number, direction: 1 | -1): number {
  const f = new Float32Array([value]);
  const u = new Uint32Array(f.buffer);
  // value > 0 here: stepping the bit pattern steps the magnitude.
  u[0] += direction;
  return f[0];
}

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ropeInvFreq } from '../../tools/model-builder/index.ts';
import { dropAndShift, extractRow, gatherRows, prefixOf, rotaryInverseFrequencies, shiftRotaryKeys, sourceLength } from '../../src/cache/kv-ops.ts';
import { floatToHalf, halfToFloat } from '../../src/lib/float16.ts';
import type { KvData, KvLayout, KvTensors } from '../../src/model/types.ts';

const LAYOUT: KvLayout = { numLayers: 2, numKvHeads: 2, headDim: 3, dtype: 'float32', bytesPerToken: 2 * 2 * 2 * 3 * 4 };

/**
 * A hand-made cache whose every element names its own coordinates, so a misplaced copy is visible:
 * tag * 100000 + layer * 10000 + (key 0 / value 5000) + row * 1000 + head * 100 + slot * 10 + d (all < 2^24).
 */
function tagged(layout: KvLayout, tag: number, batchSize: number, length: number): KvTensors {
  const { numKvHeads: heads, headDim } = layout;
  const layers = [];
  for (let layer = 0; layer < layout.numLayers; layer++) {
    const make = (isValue: number) => {
      const data = new Float32Array(batchSize * heads * length * headDim);
      for (let r = 0; r < batchSize; r++)
        for (let h = 0; h < heads; h++)
          for (let s = 0; s < length; s++)
            for (let d = 0; d < headDim; d++) data[((r * heads + h) * length + s) * headDim + d] = code(tag, layer, isValue, r, h, s, d);
      return data;
    };
    layers.push({ key: make(0), value: make(1) });
  }
  return { batchSize, length, layers };
}

function code(tag: number, layer: number, isValue: number, row: number, head: number, slot: number, d: number): number {
  return tag * 100000 + layer * 10000 + isValue * 5000 + row * 1000 + head * 100 + slot * 10 + d;
}

function at(layout: KvLayout, data: KvData, length: number, row: number, head: number, slot: number, d: number): number {
  return data[((row * layout.numKvHeads + head) * length + slot) * layout.headDim + d];
}

describe('gatherRows', () => {
  test('right-aligns each source with left padding of zeros, at exact element positions', () => {
    const a = tagged(LAYOUT, 1, 2, 5);
    const b = tagged(LAYOUT, 2, 1, 3);
    const { kv, padding } = gatherRows(LAYOUT, [
      { kv: a, row: 1, segments: [[0, 5]] },
      { kv: b, row: 0, segments: [[0, 3]] },
    ]);
    assert.deepEqual(padding, [0, 2]);
    assert.equal(kv.batchSize, 2);
    assert.equal(kv.length, 5);
    assert.equal(kv.layers.length, 2);
    for (let layer = 0; layer < 2; layer++) {
      for (const [isValue, name] of [[0, 'key'], [1, 'value']] as const) {
        const data = kv.layers[layer][name];
        assert.ok(data instanceof Float32Array, 'data instanceof Float32Array');
        assert.equal(data.length, 2 * 2 * 5 * 3);
        for (let h = 0; h < 2; h++)
          for (let s = 0; s < 5; s++)
            for (let d = 0; d < 3; d++) {
              assert.equal(at(LAYOUT, data, 5, 0, h, s, d), code(1, layer, isValue, 1, h, s, d));
              const expected = s < 2 ? 0 : code(2, layer, isValue, 0, h, s - 2, d);
              assert.equal(at(LAYOUT, data, 5, 1, h, s, d), expected, `layer ${layer} ${name} row 1 head ${h} slot ${s} dim ${d}`);
            }
      }
    }
    // One flat spot check independent of the helper: row 1, head 1, slot 4, dim 2 of layer 1's value.
    assert.equal(kv.layers[1].value[((1 * 2 + 1) * 5 + 4) * 3 + 2], code(2, 1, 1, 0, 1, 2, 2));
  });

  test('several segments of one row are concatenated in order', () => {
    const a = tagged(LAYOUT, 3, 1, 8);
    const segments: Array<[number, number]> = [[0, 2], [5, 8], [3, 4]];
    const { kv, padding } = gatherRows(LAYOUT, [{ kv: a, row: 0, segments }]);
    assert.equal(sourceLength({ kv: a, row: 0, segments }), 6);
    assert.deepEqual(padding, [0]);
    const slots = [0, 1, 5, 6, 7, 3];
    for (let h = 0; h < 2; h++)
      for (let s = 0; s < 6; s++)
        for (let d = 0; d < 3; d++) {
          assert.equal(at(LAYOUT, kv.layers[0].key, 6, 0, h, s, d), code(3, 0, 0, 0, h, slots[s], d));
          assert.equal(at(LAYOUT, kv.layers[1].value, 6, 0, h, s, d), code(3, 1, 1, 0, h, slots[s], d));
        }
  });

  test('a target length pads further; a source longer than the target is refused', () => {
    const a = tagged(LAYOUT, 1, 1, 3);
    const { kv, padding } = gatherRows(LAYOUT, [{ kv: a, row: 0, segments: [[0, 3]] }], 7);
    assert.deepEqual(padding, [4]);
    assert.equal(kv.length, 7);
    for (let d = 0; d < 3; d++) {
      assert.equal(at(LAYOUT, kv.layers[0].key, 7, 0, 1, 3, d), 0);
      assert.equal(at(LAYOUT, kv.layers[0].key, 7, 0, 1, 4, d), code(1, 0, 0, 0, 1, 0, d));
    }
    assert.throws(() => gatherRows(LAYOUT, [{ kv: a, row: 0, segments: [[0, 3]] }], 2), /row of 3 tokens does not fit a batch of length 2/);
  });

  test('empty sources give an empty batch', () => {
    const a = tagged(LAYOUT, 1, 1, 3);
    const { kv, padding } = gatherRows(LAYOUT, [{ kv: a, row: 0, segments: [] }]);
    assert.equal(kv.length, 0);
    assert.deepEqual(padding, [0]);
    assert.equal(kv.layers[0].key.length, 0);
  });

  test('the result is a copy: writing it leaves the source alone', () => {
    const a = tagged(LAYOUT, 1, 1, 4);
    const before = Float32Array.from(a.layers[0].key);
    const { kv } = gatherRows(LAYOUT, [{ kv: a, row: 0, segments: [[0, 4]] }]);
    (kv.layers[0].key as Float32Array).fill(-1);
    assert.deepEqual(a.layers[0].key, before);
  });

  test('float16 caches are copied bit for bit (including NaN payloads) and stay Uint16Array', () => {
    const layout: KvLayout = { ...LAYOUT, dtype: 'float16', bytesPerToken: LAYOUT.bytesPerToken / 2 };
    const length = 4;
    const make = (seed: number) => Uint16Array.from({ length: 2 * 2 * length * 3 }, (_, i) => (i * 2654435761 + seed) & 0xffff);
    const source: KvTensors = { batchSize: 2, length, layers: [{ key: make(1), value: make(2) }, { key: make(3), value: make(4) }] };
    source.layers[0].key[((1 * 2 + 0) * length + 3) * 3 + 1] = 0x7e01; // a NaN with a payload
    const { kv, padding } = gatherRows(layout, [
      { kv: source, row: 1, segments: [[1, 4]] },
      { kv: source, row: 0, segments: [[0, 4]] },
    ]);
    assert.deepEqual(padding, [1, 0]);
    for (const layer of kv.layers) {
      assert.ok(layer.key instanceof Uint16Array, 'layer.key instanceof Uint16Array');
      assert.ok(layer.value instanceof Uint16Array, 'layer.value instanceof Uint16Array');
    }
    for (let h = 0; h < 2; h++)
      for (let s = 0; s < 4; s++)
        for (let d = 0; d < 3; d++) {
          assert.equal(at(layout, kv.layers[0].key, 4, 0, h, s, d), s === 0 ? 0 : at(layout, source.layers[0].key, length, 1, h, s, d));
          assert.equal(at(layout, kv.layers[1].value, 4, 1, h, s, d), at(layout, source.layers[1].value, length, 0, h, s, d));
        }
    assert.equal(at(layout, kv.layers[0].key, 4, 0, 0, 3, 1), 0x7e01);
  });
});

describe('extractRow and prefixOf', () => {
  test('extractRow is the inverse of gatherRows for every row', () => {
    const sources = [tagged(LAYOUT, 1, 1, 2), tagged(LAYOUT, 2, 1, 6), tagged(LAYOUT, 3, 1, 4)];
    const { kv: batch, padding } = gatherRows(
      LAYOUT,
      sources.map((kv) => ({ kv, row: 0, segments: [[0, kv.length]] as Array<[number, number]> })),
    );
    assert.deepEqual(padding, [4, 0, 2]);
    for (let r = 0; r < sources.length; r++) {
      const row = extractRow(LAYOUT, batch, r, padding[r]);
      assert.equal(row.batchSize, 1);
      assert.equal(row.length, sources[r].length);
      for (let layer = 0; layer < 2; layer++) {
        assert.deepEqual(row.layers[layer].key, sources[r].layers[layer].key, `row ${r} layer ${layer} key`);
        assert.deepEqual(row.layers[layer].value, sources[r].layers[layer].value, `row ${r} layer ${layer} value`);
      }
    }
  });

  test('extractRow of a single unpadded row needs no copy', () => {
    const a = tagged(LAYOUT, 1, 1, 3);
    assert.equal(extractRow(LAYOUT, a, 0, 0), a);
  });

  test('prefixOf keeps the first slots of every head', () => {
    const a = tagged(LAYOUT, 4, 1, 6);
    const prefix = prefixOf(LAYOUT, a, 2);
    assert.equal(prefix.length, 2);
    assert.equal(prefix.batchSize, 1);
    for (let layer = 0; layer < 2; layer++)
      for (let h = 0; h < 2; h++)
        for (let s = 0; s < 2; s++)
          for (let d = 0; d < 3; d++) {
            assert.equal(at(LAYOUT, prefix.layers[layer].key, 2, 0, h, s, d), code(4, layer, 0, 0, h, s, d));
            assert.equal(at(LAYOUT, prefix.layers[layer].value, 2, 0, h, s, d), code(4, layer, 1, 0, h, s, d));
          }
    const whole = prefixOf(LAYOUT, a, 6);
    assert.deepEqual(whole.layers[1].key, a.layers[1].key);
    assert.equal(prefixOf(LAYOUT, a, 0).length, 0);
  });
});

/** A float32 view of a float32 as its bit pattern, for ulp distances. */
function ulpDistance(a: number, b: number): number {
  const view = new Float32Array([a, b]);
  const bits = new Int32Array(view.buffer);
  return Math.abs(bits[0] - bits[1]);
}

describe('rotaryInverseFrequencies', () => {
  test('equals Hugging Face float32 inv_freq = 1 / theta^(float32(2i) / dim), computed in float32', () => {
    for (const [theta, dim] of [[10000, 64], [10000, 16], [500000, 128], [1000000, 128], [10000, 6], [10000, 96]]) {
      const inv = rotaryInverseFrequencies(theta, dim);
      assert.ok(inv instanceof Float32Array, 'inv instanceof Float32Array');
      assert.equal(inv.length, dim / 2);
      for (let i = 0; i < dim / 2; i++) {
        const exponent = Math.fround(Math.fround(2 * i) / Math.fround(dim));
        const want = Math.fround(1 / Math.fround(Math.pow(Math.fround(theta), exponent)));
        assert.equal(inv[i], want, `theta ${theta} dim ${dim} i ${i}`);
      }
    }
  });

  test('hand-checked values and agreement with other float32 implementations within a few ulp', () => {
    const inv = rotaryInverseFrequencies(10000, 16);
    assert.equal(inv[0], 1);
    assert.equal(inv[4], Math.fround(0.01)); // 10000^(8/16) = 100
    assert.equal(inv[2], Math.fround(0.1)); // 10000^(4/16) = 10
    // numpy float32: 1 / (float32(10000) ** (arange(0, 64, 2).astype(float32) / float32(64))), as bit patterns.
    const numpy = [
      0x3f800000, 0x3f3ff911, 0x3f0ff59a, 0x3ed7e89b, 0x3ea1e89b, 0x3e72d425, 0x3e361887, 0x3e088d77, 0x3dcccccd, 0x3d99940d, 0x3d6655c2,
      0x3d2cba15, 0x3d0186e3, 0x3cc2434f, 0x3c91ad39, 0x3c5a7bf2, 0x3c23d70a, 0x3bf5b9b0, 0x3bb8449c, 0x3b8a2e77, 0x3b4f3e38, 0x3b1b690d,
      0x3ae91528, 0x3aaec98e, 0x3a83126f, 0x3a44948c, 0x3a136a16, 0x39dd1727, 0x39a5cb60, 0x3978a815, 0x393a7753, 0x390bd472,
    ];
    const ours = rotaryInverseFrequencies(10000, 64);
    const builder = ropeInvFreq(64, 10000);
    const numpyFloats = new Float32Array(Uint32Array.from(numpy).buffer);
    for (let i = 0; i < 32; i++) {
      // float32 pow implementations differ by an ulp; 1/x doubles that. More would be a wrong formula.
      assert.ok(ulpDistance(ours[i], numpyFloats[i]) <= 2, `i ${i}: ${ours[i]} vs numpy ${numpyFloats[i]}`);
      assert.ok(ulpDistance(ours[i], builder[i]) <= 2, `i ${i}: ${ours[i]} vs builder ${builder[i]}`);
    }
    // Partial rotary: the exponent is over the rotary dim, not the head dim.
    assert.equal(rotaryInverseFrequencies(10000, 32)[8], Math.fround(0.01));
  });
});

/** Reference RoPE (rotate_half) of a head vector at a position, in double. */
function rope(x: Float32Array | number[], position: number, inv: Float32Array, headDim: number): Float64Array {
  const half = inv.length;
  const out = Float64Array.from(x);
  for (let i = 0; i < half; i++) {
    const angle = position * inv[i];
    const [c, s] = [Math.cos(angle), Math.sin(angle)];
    out[i] = x[i] * c - x[i + half] * s;
    out[i + half] = x[i + half] * c + x[i] * s;
  }
  assert.equal(out.length, headDim);
  return out;
}

function randomKeys(count: number, seed: number): Float32Array {
  let state = seed >>> 0 || 1;
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = ((state >>> 0) / 2 ** 32) * 4 - 2;
  }
  return out;
}

describe('shiftRotaryKeys', () => {
  const layout: KvLayout = { numLayers: 1, numKvHeads: 2, headDim: 8, dtype: 'float32', bytesPerToken: 2 * 2 * 8 * 4 };
  const inv = rotaryInverseFrequencies(10000, 8);

  test('a key rotated at position p and shifted by delta equals the key rotated at p + delta', () => {
    const length = 6;
    const raw = randomKeys(2 * length * 8, 1);
    const key = new Float32Array(raw.length);
    const start = 100;
    for (let h = 0; h < 2; h++)
      for (let s = 0; s < length; s++) {
        const base = (h * length + s) * 8;
        key.set(rope(raw.subarray(base, base + 8), start + s, inv, 8), base);
      }
    shiftRotaryKeys(layout, key, length, 0, 0, length, -37, inv);
    for (let h = 0; h < 2; h++)
      for (let s = 0; s < length; s++) {
        const base = (h * length + s) * 8;
        const want = rope(raw.subarray(base, base + 8), start + s - 37, inv, 8);
        for (let d = 0; d < 8; d++) assert.ok(Math.abs(key[base + d] - want[d]) < 1e-5, `head ${h} slot ${s} dim ${d}: ${key[base + d]} vs ${want[d]}`);
      }
  });

  test('rotating by d1 then d2 equals rotating by d1 + d2; by 0 is the identity', () => {
    const length = 5;
    const original = randomKeys(2 * length * 8, 2);
    const twice = Float32Array.from(original);
    shiftRotaryKeys(layout, twice, length, 0, 0, length, 13, inv);
    shiftRotaryKeys(layout, twice, length, 0, 0, length, -50, inv);
    const once = Float32Array.from(original);
    shiftRotaryKeys(layout, once, length, 0, 0, length, -37, inv);
    let moved = 0;
    for (let i = 0; i < once.length; i++) {
      assert.ok(Math.abs(once[i] - twice[i]) < 1e-5, `element ${i}: ${once[i]} vs ${twice[i]}`);
      moved = Math.max(moved, Math.abs(once[i] - original[i]));
    }
    assert.ok(moved > 0.1, 'the shift changed the keys');
    const same = Float32Array.from(original);
    shiftRotaryKeys(layout, same, length, 0, 0, length, 0, inv);
    assert.deepEqual(same, original);
    // And back again: +d then -d restores the keys.
    const roundTrip = Float32Array.from(original);
    shiftRotaryKeys(layout, roundTrip, length, 0, 0, length, 1000, inv);
    shiftRotaryKeys(layout, roundTrip, length, 0, 0, length, -1000, inv);
    for (let i = 0; i < original.length; i++) assert.ok(Math.abs(roundTrip[i] - original[i]) < 1e-5, 'Math.abs(roundTrip[i] - original[i]) < 1e-5');
  });

  test('the rotation pairs x[i] with x[i + rotaryDim/2] in the rotate_half direction', () => {
    const one: KvLayout = { numLayers: 1, numKvHeads: 1, headDim: 4, dtype: 'float32', bytesPerToken: 32 };
    const freqs = Float32Array.of(Math.PI / 2, 0.5);
    const key = Float32Array.of(1, 0, 0, 0);
    shiftRotaryKeys(one, key, 1, 0, 0, 1, 1, freqs);
    // (x0, x2) = (1, 0) rotated by +90 degrees -> (cos, sin) = (0, 1).
    assert.ok(Math.abs(key[0]) < 1e-7, 'Math.abs(key[0]) < 1e-7');
    assert.ok(Math.abs(key[2] - 1) < 1e-7, 'Math.abs(key[2] - 1) < 1e-7');
    assert.equal(key[1], 0);
    assert.equal(key[3], 0);
  });

  test('only slots [start, end) of the given row change', () => {
    const batch = 3;
    const length = 7;
    const original = randomKeys(batch * 2 * length * 8, 3);
    const key = Float32Array.from(original);
    shiftRotaryKeys(layout, key, length, 1, 2, 5, 21, inv);
    for (let r = 0; r < batch; r++)
      for (let h = 0; h < 2; h++)
        for (let s = 0; s < length; s++) {
          const base = ((r * 2 + h) * length + s) * 8;
          const inside = r === 1 && s >= 2 && s < 5;
          let changed = false;
          for (let d = 0; d < 8; d++) if (key[base + d] !== original[base + d]) changed = true;
          assert.equal(changed, inside, `row ${r} head ${h} slot ${s}`);
          if (inside) {
            // It changed to the right thing: the rotation of that slot by 21 positions.
            const want = rope(original.subarray(base, base + 8), 21, inv, 8);
            for (let d = 0; d < 8; d++) assert.ok(Math.abs(key[base + d] - want[d]) < 1e-5, 'Math.abs(key[base + d] - want[d]) < 1e-5');
          }
        }
  });

  test('partial rotary: dimensions past the rotary dim are untouched', () => {
    const partial = rotaryInverseFrequencies(10000, 4); // rotaryDim 4 of headDim 8
    const original = randomKeys(2 * 3 * 8, 4);
    const key = Float32Array.from(original);
    shiftRotaryKeys(layout, key, 3, 0, 0, 3, 9, partial);
    for (let v = 0; v < 2 * 3; v++) {
      for (let d = 4; d < 8; d++) assert.equal(key[v * 8 + d], original[v * 8 + d]);
      const rotated = rope(Array.from(original.subarray(v * 8, v * 8 + 4)), 9, partial, 4);
      for (let d = 0; d < 4; d++) assert.ok(Math.abs(key[v * 8 + d] - rotated[d]) < 1e-5, 'Math.abs(key[v * 8 + d] - rotated[d]) < 1e-5');
    }
  });

  test('float16 keys: the result is the float32 result rounded to half precision', () => {
    const halfLayout: KvLayout = { ...layout, dtype: 'float16', bytesPerToken: layout.bytesPerToken / 2 };
    const length = 4;
    const values = randomKeys(2 * length * 8, 5);
    const half = Uint16Array.from(values, (v) => floatToHalf(v));
    const asFloat = Float32Array.from(half, (h) => halfToFloat(h));
    shiftRotaryKeys(halfLayout, half, length, 0, 1, 3, -12, inv);
    shiftRotaryKeys(layout, asFloat, length, 0, 1, 3, -12, inv);
    assert.ok(half instanceof Uint16Array, 'half instanceof Uint16Array');
    let changed = 0;
    for (let i = 0; i < half.length; i++) {
      const got = halfToFloat(half[i]);
      // Rounding the float32 result to half precision: within half a half-ulp (2^-11 relative), plus slack.
      assert.ok(Math.abs(got - asFloat[i]) <= Math.abs(asFloat[i]) * 2 ** -11 + 1e-6, `element ${i}: ${got} vs ${asFloat[i]}`);
      const slot = Math.floor(i / 8) % length;
      if (slot === 0 || slot === 3) assert.equal(half[i], floatToHalf(values[i]), 'outside the slot range nothing changes');
      else if (half[i] !== floatToHalf(values[i])) changed++;
    }
    assert.ok(changed > 20, `${changed} elements changed`);
  });
});

describe('dropAndShift', () => {
  test('removes slots after the sinks and rotates the kept keys back to contiguous positions; values only move', () => {
    const layout: KvLayout = { numLayers: 2, numKvHeads: 2, headDim: 8, dtype: 'float32', bytesPerToken: 2 * 2 * 2 * 8 * 4 };
    const inv = rotaryInverseFrequencies(10000, 8);
    const length = 12;
    const sinks = 2;
    const drop = 4;
    const raw: Float32Array[] = [];
    const kv: KvTensors = { batchSize: 1, length, layers: [] };
    for (let layer = 0; layer < 2; layer++) {
      const keysRaw = randomKeys(2 * length * 8, 10 + layer);
      raw.push(keysRaw);
      const key = new Float32Array(keysRaw.length);
      for (let v = 0; v < 2 * length; v++) key.set(rope(keysRaw.subarray(v * 8, v * 8 + 8), v % length, inv, 8), v * 8);
      kv.layers.push({ key, value: randomKeys(2 * length * 8, 20 + layer) });
    }
    const out = dropAndShift(layout, kv, sinks, drop, inv);
    assert.equal(out.length, length - drop);
    const kept = [0, 1, 6, 7, 8, 9, 10, 11];
    for (let layer = 0; layer < 2; layer++)
      for (let h = 0; h < 2; h++)
        for (let s = 0; s < kept.length; s++) {
          const from = (h * length + kept[s]) * 8;
          const to = (h * kept.length + s) * 8;
          const want = rope(raw[layer].subarray(from, from + 8), s, inv, 8);
          for (let d = 0; d < 8; d++) {
            assert.ok(Math.abs(out.layers[layer].key[to + d] - want[d]) < 1e-5, `layer ${layer} head ${h} slot ${s} dim ${d}`);
            assert.equal(out.layers[layer].value[to + d], kv.layers[layer].value[from + d]);
          }
        }
  });
});

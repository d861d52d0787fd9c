import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildModelBytes, buildModelFolder, ropeInvFreq, type BuildOptions, type BuiltModelInfo, type ResolvedOptions } from '../../tools/model-builder/index.ts';
import {
  argmax,
  emptyPast,
  greedyCached,
  logitsRow,
  maxAbsDiff,
  ort,
  positionsFromMask,
  step,
  toF32,
  type Past,
} from './helpers.ts';

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'warmkv-model-builder-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

interface Variant {
  name: string;
  opts: BuildOptions;
  /** tolerance on logits for cached vs uncached and batched vs alone */
  tol: number;
}

const VARIANTS: Variant[] = [
  { name: 'gpt2', opts: { family: 'gpt2' }, tol: 1e-4 },
  { name: 'llama GQA 4/2', opts: { family: 'llama' }, tol: 1e-4 },
  { name: 'llama MQA 4/1, padded vocab', opts: { family: 'llama', numKvHeads: 1, vocabSize: 700 }, tol: 1e-4 },
  { name: 'llama MHA 4/4', opts: { family: 'llama', numKvHeads: 4, hiddenSize: 32 }, tol: 1e-4 },
  { name: 'gpt2 kv fp16', opts: { family: 'gpt2', kvDtype: 'float16' }, tol: 2e-3 },
  { name: 'llama kv fp16 + logits fp16', opts: { family: 'llama', kvDtype: 'float16', logitsDtype: 'float16' }, tol: 2e-2 },
  { name: 'gpt2 no position_ids', opts: { family: 'gpt2', positionIds: false }, tol: 1e-4 },
  { name: 'llama no position_ids', opts: { family: 'llama', positionIds: false }, tol: 1e-4 },
  { name: 'llama merged', opts: { family: 'llama', layout: 'merged' }, tol: 1e-4 },
  { name: 'gpt2 merged + external data', opts: { family: 'gpt2', layout: 'merged', externalData: true }, tol: 1e-4 },
  { name: 'llama external data, 3 layers', opts: { family: 'llama', externalData: true, numLayers: 3 }, tol: 1e-4 },
];

const PAD = 656; // <|endoftext|>
const SEQ = [11, 300, 42, 7, 512, 99, 640, 3, 250, 17, 88, 401];

async function load(v: Variant, sub: string): Promise<{ info: BuiltModelInfo; s: ort.InferenceSession; o: ResolvedOptions }> {
  const info = await buildModelFolder(join(root, sub), v.opts);
  const s = await ort.InferenceSession.create(info.onnxPath);
  return { info, s, o: info.options };
}

/** Uncached: the whole sequence at once (past length 0). */
async function full(s: ort.InferenceSession, o: ResolvedOptions, ids: number[]) {
  return step(s, o, [ids], [ids.map(() => 1)], [ids.map((_, i) => i)], emptyPast(o, 1));
}

/** Cached: prefill `chunks[0]` tokens, then the following chunk sizes, feeding present back as past. */
async function chunked(s: ort.InferenceSession, o: ResolvedOptions, ids: number[], chunks: number[]): Promise<Float32Array> {
  const V = o.vocabSize;
  const out = new Float32Array(ids.length * V);
  let past: Past = emptyPast(o, 1);
  let pos = 0;
  for (const n of chunks) {
    const part = ids.slice(pos, pos + n);
    const r = await step(s, o, [part], [ids.slice(0, pos + n).map(() => 1)], [part.map((_, i) => pos + i)], past);
    assert.equal(r.present['past_key_values.0.key'].dims[2], pos + n, 'present has past + new positions');
    out.set(r.logits, pos * V);
    past = r.present;
    pos += n;
  }
  assert.equal(pos, ids.length);
  return out;
}

for (const v of VARIANTS) {
  describe(`model ${v.name}`, () => {
    let s: ort.InferenceSession;
    let o: ResolvedOptions;
    let info: BuiltModelInfo;
    before(async () => {
      ({ info, s, o } = await load(v, v.name.replace(/[^a-z0-9]+/gi, '_')));
    });

    test('folder contents and Optimum I/O metadata', async () => {
      const onnxName = o.layout === 'merged' ? 'decoder_model_merged.onnx' : 'model.onnx';
      const expectFiles = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', `onnx/${onnxName}`];
      if (v.opts.externalData) expectFiles.push(`onnx/${onnxName}_data`);
      assert.deepEqual(info.files.slice().sort(), expectFiles.sort());
      for (const f of expectFiles) assert.ok((await stat(join(info.dir, f))).size > 0, f);
      if (v.opts.externalData) {
        const onnxSize = (await stat(join(info.dir, 'onnx', onnxName))).size;
        const dataSize = (await stat(join(info.dir, 'onnx', `${onnxName}_data`))).size;
        assert.ok(onnxSize < 64 * 1024, `graph file small (${onnxSize})`);
        assert.ok(dataSize >= info.numParameters * 4, 'weights in the data file');
      }
      const cfg = JSON.parse(await readFile(join(info.dir, 'config.json'), 'utf8'));
      assert.equal(cfg.model_type, o.family);
      assert.equal(cfg.vocab_size, o.vocabSize);
      assert.ok(cfg.vocab_size >= info.tokenizerSize);
      if (o.family === 'llama') {
        assert.equal(cfg.num_key_value_heads, o.numKvHeads);
        assert.equal(cfg.head_dim, o.headDim);
      } else {
        assert.equal(cfg.n_embd, o.hiddenSize);
        assert.equal(cfg.n_positions, o.maxPositions);
      }
      const gen = JSON.parse(await readFile(join(info.dir, 'generation_config.json'), 'utf8'));
      assert.deepEqual(gen.eos_token_id, [info.specialTokenIds.endoftext, info.specialTokenIds.imEnd]);

      const kvT = o.kvDtype;
      const expectIn: [string, string, (string | number)[]][] = [
        ['input_ids', 'int64', ['batch_size', 'sequence_length']],
        ['attention_mask', 'int64', ['batch_size', 'total_sequence_length']],
      ];
      if (o.positionIds) expectIn.push(['position_ids', 'int64', ['batch_size', 'sequence_length']]);
      const expectOut: [string, string, (string | number)[]][] = [['logits', o.logitsDtype, ['batch_size', 'sequence_length', o.vocabSize]]];
      for (let i = 0; i < o.numLayers; i++) {
        for (const kind of ['key', 'value']) {
          expectIn.push([`past_key_values.${i}.${kind}`, kvT, ['batch_size', o.numKvHeads, 'past_sequence_length', o.headDim]]);
          expectOut.push([`present.${i}.${kind}`, kvT, ['batch_size', o.numKvHeads, 'total_sequence_length', o.headDim]]);
        }
      }
      if (o.layout === 'merged') expectIn.push(['use_cache_branch', 'bool', [1]]);
      const meta = (m: readonly ort.InferenceSession.ValueMetadata[]) =>
        m.map((x) => {
          assert.ok(x.isTensor);
          return [x.name, x.type, x.shape];
        });
      assert.deepEqual(meta(s.inputMetadata), expectIn);
      assert.deepEqual(meta(s.outputMetadata), expectOut);
    });

    test('cached equals uncached (past lengths 0, 3, 5, 7; multi-token chunks with past)', async () => {
      const ref = await full(s, o, SEQ);
      assert.ok(ref.logits.every(Number.isFinite));
      for (const chunks of [[3, 1, 1, 1, 1, 1, 1, 1, 1, 1], [7, 1, 1, 1, 1, 1], [5, 4, 1, 2]]) {
        const got = await chunked(s, o, SEQ, chunks);
        const d = maxAbsDiff(got, ref.logits);
        assert.ok(d <= v.tol, `chunks ${chunks}: max |diff| ${d} > ${v.tol}`);
      }
      // present of the full run equals the concatenated cache of a chunked run
      const a = await step(s, o, [SEQ.slice(0, 7)], [Array(7).fill(1)], [[0, 1, 2, 3, 4, 5, 6]], emptyPast(o, 1));
      const b = await step(s, o, [SEQ.slice(7)], [Array(SEQ.length).fill(1)], [[7, 8, 9, 10, 11]], a.present);
      for (const k of Object.keys(b.present)) {
        const d = maxAbsDiff(toF32(b.present[k]), toF32(ref.present[k]));
        assert.ok(d <= (o.kvDtype === 'float16' ? 2e-3 : 1e-5), `${k}: ${d}`);
      }
    });

    test('batch of 2 left-padded rows equals each row alone (prefill and decode)', async () => {
      const V = o.vocabSize;
      const A = SEQ.slice(0, 9);
      const B = [5, 600, 21, 64, 333];
      const padN = A.length - B.length;
      let mask = [A.map(() => 1), [...Array(padN).fill(0), ...B.map(() => 1)]];
      const ids = [A, [...Array(padN).fill(PAD), ...B]];
      let r = await step(s, o, ids, mask, positionsFromMask(mask, A.length), emptyPast(o, 2));
      assert.ok(r.logits.every(Number.isFinite), 'no NaN/inf, padded rows included');
      let ra = await full(s, o, A);
      let rb = await full(s, o, B);
      const S = A.length;
      for (let t = 0; t < A.length; t++) {
        const d = maxAbsDiff(logitsRow(r.logits, S, V, 0, t), logitsRow(ra.logits, S, V, 0, t));
        assert.ok(d <= v.tol, `row A pos ${t}: ${d}`);
      }
      for (let t = 0; t < B.length; t++) {
        const d = maxAbsDiff(logitsRow(r.logits, S, V, 1, padN + t), logitsRow(rb.logits, B.length, V, 0, t));
        assert.ok(d <= v.tol, `row B pos ${t}: ${d}`);
      }
      // decode 4 steps in the batch vs each row alone (both cached)
      let pa = ra.present;
      let pb = rb.present;
      const la = [...A];
      const lb = [...B];
      for (let t = 0; t < 4; t++) {
        const na = (t * 37 + 101) % 650;
        const nb = (t * 53 + 7) % 650;
        mask = mask.map((m) => [...m, 1]);
        r = await step(s, o, [[na], [nb]], mask, positionsFromMask(mask, 1), r.present);
        ra = await step(s, o, [[na]], [[...la, na].map(() => 1)], [[la.length]], pa);
        rb = await step(s, o, [[nb]], [[...lb, nb].map(() => 1)], [[lb.length]], pb);
        la.push(na);
        lb.push(nb);
        pa = ra.present;
        pb = rb.present;
        assert.ok(maxAbsDiff(logitsRow(r.logits, 1, V, 0, 0), ra.logits) <= v.tol, `decode ${t} row A`);
        assert.ok(maxAbsDiff(logitsRow(r.logits, 1, V, 1, 0), rb.logits) <= v.tol, `decode ${t} row B`);
      }
    });

    if (v.opts.layout === 'merged') {
      test('use_cache_branch true/false give the same outputs', async () => {
        const a = await step(s, o, [SEQ.slice(0, 4)], [Array(4).fill(1)], [[0, 1, 2, 3]], emptyPast(o, 1), false);
        const a2 = await step(s, o, [SEQ.slice(0, 4)], [Array(4).fill(1)], [[0, 1, 2, 3]], emptyPast(o, 1), true);
        assert.deepEqual(a.logits, a2.logits);
        const b = await step(s, o, [[SEQ[4]]], [Array(5).fill(1)], [[4]], a.present, true);
        const b2 = await step(s, o, [[SEQ[4]]], [Array(5).fill(1)], [[4]], a.present, false);
        assert.deepEqual(b.logits, b2.logits);
      });
    }

    if (v.opts.externalData) {
      test('external-data model computes the same as the inline model', async () => {
        const inline = buildModelBytes({ ...v.opts, externalData: false });
        const s2 = await ort.InferenceSession.create(inline.onnx);
        const x = await full(s, o, SEQ);
        const y = await full(s2, o, SEQ);
        assert.ok(maxAbsDiff(x.logits, y.logits) <= 1e-6);
      });
    }
  });
}

describe('liveliness and greedy decoding', () => {
  for (const family of ['gpt2', 'llama'] as const) {
    test(`${family}: logits are lively; 64-step greedy decode cached == uncached`, async () => {
      const { s, o } = await load({ name: family, opts: { family }, tol: 0 }, `greedy_${family}`);
      const V = o.vocabSize;
      const prompt = [40, 7, 301, 88, 5];
      const r = await full(s, o, prompt);
      for (let t = 0; t < prompt.length; t++) {
        const row = logitsRow(r.logits, prompt.length, V, 0, t);
        let mean = 0;
        for (const x of row) mean += x / V;
        let vr = 0;
        for (const x of row) vr += (x - mean) ** 2 / V;
        const std = Math.sqrt(vr);
        assert.ok(std > 1 && std < 4, `logit std ${std}`);
      }
      const steps = 64;
      const g = await greedyCached(s, o, prompt, steps);
      assert.ok(new Set(g.ids).size >= 10, `greedy output is not degenerate: ${g.ids.join(' ')}`);
      // uncached: recompute the whole sequence for every step
      const seq = [...prompt];
      for (let t = 0; t < steps; t++) {
        const u = await full(s, o, seq);
        const last = logitsRow(u.logits, seq.length, V, 0, seq.length - 1);
        assert.ok(maxAbsDiff(last, g.rows[t]) <= 1e-4, `step ${t}`);
        const next = argmax(last);
        assert.equal(next, g.ids[t], `greedy token at step ${t}`);
        seq.push(next);
      }
    });
  }
});

/** Reference RoPE computation in TypeScript for layer-0 keys. */
function referenceKey(m: ReturnType<typeof buildModelBytes>, token: number, pos: number): Float32Array[] {
  const o = m.options;
  const H = o.hiddenSize;
  const hd = o.headDim;
  const kvOut = o.numKvHeads * hd;
  const emb = m.weights.get('model.embed_tokens.weight')!.data.subarray(token * H, (token + 1) * H);
  const lnw = m.weights.get('model.layers.0.input_layernorm.weight')!.data;
  const wk = m.weights.get('model.layers.0.self_attn.k_proj.weight_t')!.data; // [H, kvh*hd]
  let ms = 0;
  for (const x of emb) ms += (x * x) / H;
  const xn = Array.from(emb, (x, i) => (x / Math.sqrt(ms + o.normEps)) * lnw[i]);
  const k = new Float64Array(kvOut);
  for (let i = 0; i < H; i++) for (let j = 0; j < kvOut; j++) k[j] += xn[i] * wk[i * kvOut + j];
  const invFreq = ropeInvFreq(hd, o.ropeTheta);
  const half = hd / 2;
  const heads: Float32Array[] = [];
  for (let h = 0; h < o.numKvHeads; h++) {
    const kh = k.subarray(h * hd, (h + 1) * hd);
    const out = new Float32Array(hd);
    for (let i = 0; i < half; i++) {
      const ang = Math.fround(pos * invFreq[i]);
      const c = Math.cos(ang);
      const s = Math.sin(ang);
      out[i] = kh[i] * c - kh[i + half] * s; // x*cos + rotate_half(x)*sin, rotate_half([x1,x2]) = [-x2, x1]
      out[i + half] = kh[i + half] * c + kh[i] * s;
    }
    heads.push(out);
  }
  return heads;
}

/** Rotates an already-RoPE'd key by a position delta (what a "shift cached keys" feature does). */
function shiftKey(key: Float32Array, delta: number, invFreq: Float32Array): Float32Array {
  const half = key.length / 2;
  const out = new Float32Array(key.length);
  for (let i = 0; i < half; i++) {
    const c = Math.cos(delta * invFreq[i]);
    const s = Math.sin(delta * invFreq[i]);
    out[i] = key[i] * c - key[i + half] * s;
    out[i + half] = key[i + half] * c + key[i] * s;
  }
  return out;
}

function presentKeyAt(t: ort.Tensor, o: ResolvedOptions, b: number, h: number, s: number): Float32Array {
  const [, kvh, T, hd] = t.dims;
  const off = ((b * kvh + h) * T + s) * hd;
  assert.equal(hd, o.headDim);
  return toF32(t).slice(off, off + hd);
}

describe('llama rotary layout (rotate_half)', () => {
  test('present.0.key equals RMSNorm -> k_proj -> rotate-half RoPE computed in TypeScript', async () => {
    const m = buildModelBytes({ family: 'llama', ropeTheta: 500 });
    const o = m.options;
    const s = await ort.InferenceSession.create(m.onnx);
    const toks = [17, 250, 640, 3, 99];
    const positions = [0, 1, 9, 57, 300];
    const r = await step(s, o, [toks], [toks.map(() => 1)], [positions], emptyPast(o, 1));
    const pk = r.present['past_key_values.0.key'];
    for (let t = 0; t < toks.length; t++) {
      const ref = referenceKey(m, toks[t], positions[t]);
      for (let h = 0; h < o.numKvHeads; h++) {
        const got = presentKeyAt(pk, o, 0, h, t);
        assert.ok(maxAbsDiff(got, ref[h]) < 1e-4, `token ${t} head ${h}: ${maxAbsDiff(got, ref[h])}`);
      }
    }
    // Shifting a cached key by delta equals computing it at pos + delta.
    const invFreq = ropeInvFreq(o.headDim, o.ropeTheta);
    const k9 = presentKeyAt(pk, o, 0, 1, 2); // token 640 at position 9
    const moved = shiftKey(k9, 14, invFreq);
    assert.ok(maxAbsDiff(moved, referenceKey(m, 640, 23)[1]) < 1e-4);
  });

  test('without position_ids the graph derives positions from a left-padded attention_mask', async () => {
    const m = buildModelBytes({ family: 'llama', positionIds: false });
    const o = m.options;
    const s = await ort.InferenceSession.create(m.onnx);
    const ids = [[PAD, PAD, 20, 30, 40]];
    const r = await step(s, o, ids, [[0, 0, 1, 1, 1]], [], emptyPast(o, 1));
    for (let t = 0; t < 3; t++) {
      const ref = referenceKey(m, ids[0][2 + t], t);
      for (let h = 0; h < o.numKvHeads; h++) assert.ok(maxAbsDiff(presentKeyAt(r.present['past_key_values.0.key'], o, 0, h, 2 + t), ref[h]) < 1e-4);
    }
    // next step with past: position 3
    const r2 = await step(s, o, [[50]], [[0, 0, 1, 1, 1, 1]], [], r.present);
    const ref = referenceKey(m, 50, 3);
    for (let h = 0; h < o.numKvHeads; h++) assert.ok(maxAbsDiff(presentKeyAt(r2.present['past_key_values.0.key'], o, 0, h, 5), ref[h]) < 1e-4);
  });
});

describe('determinism', () => {
  test('same options -> identical bytes; another seed -> different weights', async () => {
    for (const opts of [{ family: 'gpt2' }, { family: 'llama', kvDtype: 'float16', layout: 'merged' }] as BuildOptions[]) {
      const a = buildModelBytes(opts);
      const b = buildModelBytes({ ...opts });
      assert.ok(Buffer.from(a.onnx).equals(Buffer.from(b.onnx)));
      assert.equal(JSON.stringify(a.tokenizerJson), JSON.stringify(b.tokenizerJson));
      assert.equal(JSON.stringify(a.config), JSON.stringify(b.config));
      const c = buildModelBytes({ ...opts, seed: 2 });
      assert.ok(!Buffer.from(a.onnx).equals(Buffer.from(c.onnx)));
      assert.equal(a.onnx.byteLength, c.onnx.byteLength);
    }
    const d1 = join(root, 'det1');
    const d2 = join(root, 'det2');
    const opts: BuildOptions = { family: 'llama', externalData: true, seed: 7 };
    const i1 = await buildModelFolder(d1, opts);
    await buildModelFolder(d2, opts);
    for (const f of i1.files) assert.ok((await readFile(join(d1, f))).equals(await readFile(join(d2, f))), f);
  });

  test('options are validated', () => {
    assert.throws(() => buildModelBytes({ family: 'llama', numHeads: 4, numKvHeads: 3 }), /multiple/);
    assert.throws(() => buildModelBytes({ family: 'llama', vocabSize: 100 }), /smaller than the tokenizer/);
    assert.throws(() => buildModelBytes({ family: 'llama', hiddenSize: 60, numHeads: 4 }), /even/);
    assert.throws(() => buildModelBytes({ family: 'gpt2', numKvHeads: 2 }), /numKvHeads/);
  });
});

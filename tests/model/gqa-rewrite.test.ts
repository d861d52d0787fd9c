/**
 * Grouped attention over the unrepeated KV heads (src/model/gqa-rewrite.ts), through rewriteDecoder: on
 * builder llamas that repeat their KV heads the way transformers' repeat_kv exports do, the rewritten
 * graph has no repeat left and gives the original's logits and new rows (1e-4) over a prefill, a chunk
 * on top of it and a one-token step; graphs without a repeat (multi-head attention, the committed
 * default model, which groups its queries itself) are left as they are.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { rewriteDecoder } from '../../src/model/kv-rewrite.ts';
import { detectDecoderIo, withPatch, type DecoderIo } from '../../src/model/index.ts';
import type { ValueInfo } from '../../src/model/layout.ts';
import { buildModelBytes, type BuildOptions } from '../../tools/model-builder/index.ts';

const sessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1 };

async function sessionWithIo(bytes: Uint8Array): Promise<{ session: ort.InferenceSession; io: DecoderIo }> {
  const session = await ort.InferenceSession.create(bytes, sessionOptions);
  return { session, io: detectDecoderIo(session.inputMetadata as readonly ValueInfo[], session.outputMetadata as readonly ValueInfo[], {}) };
}

const opTypes = (bytes: Uint8Array) => onnxProto.onnx.ModelProto.decode(bytes).graph!.node!.map((n) => n.opType);

function maxDiff(a: ort.Tensor, b: ort.Tensor): number {
  const [x, y] = [a.data as Float32Array | Uint16Array, b.data as Float32Array | Uint16Array];
  assert.equal(x.length, y.length);
  if (x instanceof Uint16Array) return x.every((v, i) => v === y[i]) ? 0 : Number.POSITIVE_INFINITY;
  let max = 0;
  for (let i = 0; i < x.length; i++) max = Math.max(max, Math.abs(x[i] - (y[i] as number)));
  return max;
}

const small: Partial<BuildOptions> = { family: 'llama', hiddenSize: 64, numLayers: 2, numHeads: 8, maxPositions: 64, tokenizerMerges: 50 };

describe('grouped attention without repeating the KV heads', () => {
  for (const [label, options] of [
    ['8 query heads over 2 KV heads, float32 KV', { numKvHeads: 2 }],
    ['8 query heads over 1 KV head', { numKvHeads: 1 }],
    ['8 query heads over 4 KV heads, float16 KV', { numKvHeads: 4, kvDtype: 'float16' }],
  ] as const) {
    test(`${label}: no repeat left, the same logits and new rows as the original (1e-4)`, async () => {
      const built = buildModelBytes({ ...small, ...options } as BuildOptions);
      const original = await sessionWithIo(built.onnx);
      const { io } = original;
      const rewrite = rewriteDecoder(built.onnx, io.names, 8, io.kv.numKvHeads, false);
      if (!rewrite.ok) assert.fail(rewrite.reason);
      assert.equal(rewrite.groupedMatmuls, 2 * io.kv.numLayers, 'keys and values of every layer');
      assert.ok(rewrite.model);
      assert.equal(opTypes(rewrite.model).filter((op) => op === 'Expand').length, 0, 'no repeat of the KV left');
      const rewritten = await ort.InferenceSession.create(rewrite.model, sessionOptions);
      const batch = 2;
      const past: Record<string, ort.Tensor> = {};
      const emptyKv = () => (io.kv.dtype === 'float16' ? new Uint16Array(0) : new Float32Array(0));
      for (const name of [...io.names.pastKeys, ...io.names.pastValues]) past[name] = new ort.Tensor(io.kv.dtype, emptyKv(), [batch, io.kv.numKvHeads, 0, io.kv.headDim]);
      let length = 0;
      let seed = 11;
      const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % built.options.vocabSize;
      for (const seqLength of [5, 3, 1]) {
        const total = length + seqLength;
        const feeds: Record<string, ort.Tensor> = {
          ...past,
          [io.names.inputIds]: new ort.Tensor('int64', BigInt64Array.from({ length: batch * seqLength }, () => BigInt(next())), [batch, seqLength]),
          [io.names.attentionMask]: new ort.Tensor('int64', new BigInt64Array(batch * total).fill(1n), [batch, total]),
        };
        if (io.names.positionIds) feeds[io.names.positionIds] = new ort.Tensor('int64', BigInt64Array.from({ length: batch * seqLength }, (_, i) => BigInt(length + (i % seqLength))), [batch, seqLength]);
        const expected = await original.session.run(feeds);
        const got: ort.InferenceSession.OnnxValueMapType = await rewritten.run(feeds, [io.names.logits, ...rewrite.newKeys, ...rewrite.newValues]);
        assert.ok(maxDiff(got[io.names.logits], expected[io.names.logits]) < 1e-4, `logits after ${seqLength} new tokens`);
        for (let layer = 0; layer < io.kv.numLayers; layer++) {
          // The rows present.* appends (layer 0's are computed before any attention: exact).
          const present = expected[io.names.presentKeys[layer]];
          const rows: ort.Tensor = got[rewrite.newKeys[layer]];
          assert.deepEqual(rows.dims, [batch, io.kv.numKvHeads, seqLength, io.kv.headDim]);
          if (io.kv.dtype !== 'float32') continue;
          const [all, fresh] = [present.data as Float32Array, rows.data as Float32Array];
          const span = seqLength * io.kv.headDim;
          let diff = 0;
          for (let bh = 0; bh < batch * io.kv.numKvHeads; bh++) {
            const from = (bh * total + length) * io.kv.headDim;
            for (let i = 0; i < span; i++) diff = Math.max(diff, Math.abs(all[from + i] - fresh[bh * span + i]));
          }
          assert.ok(layer === 0 ? diff === 0 : diff < 1e-4, `layer ${layer} new keys differ by ${diff}`);
        }
        for (const [i, name] of io.names.pastKeys.entries()) past[name] = expected[io.names.presentKeys[i]];
        for (const [i, name] of io.names.pastValues.entries()) past[name] = expected[io.names.presentValues[i]];
        length = total;
      }
      await Promise.all([original.session.release(), rewritten.release()]);
    });
  }

  test('graphs without a repeat are left as they are: multi-head attention, and the committed default model', async () => {
    const mha = buildModelBytes({ ...small, numKvHeads: 8 } as BuildOptions);
    const mhaIo = (await sessionWithIo(mha.onnx)).io;
    const untouched = rewriteDecoder(mha.onnx, mhaIo.names, 8, 8, false);
    assert.ok(untouched.ok && untouched.groupedMatmuls === 0 && untouched.model === null);
    const brown = readFileSync('models/warmkv-brown/onnx/model.onnx');
    const config = JSON.parse(readFileSync('models/warmkv-brown/config.json', 'utf8')) as { num_attention_heads: number };
    const brownIo = (await sessionWithIo(brown)).io;
    const grouped = rewriteDecoder(brown, brownIo.names, config.num_attention_heads, brownIo.kv.numKvHeads, false);
    assert.ok(grouped.ok, 'rewritable for new rows');
    assert.equal(grouped.groupedMatmuls, 0, 'its export already reads the KV heads as they are');
    assert.equal(grouped.model, null);
    assert.ok((await ort.InferenceSession.create(withPatch(brown, grouped.patch), sessionOptions)).outputNames.includes(grouped.newKeys[0]));
  });
});

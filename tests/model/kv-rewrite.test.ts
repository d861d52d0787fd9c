import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { buildModelBytes, type BuildOptions } from '../../tools/model-builder/index.ts';
import { addNewRowOutputs, detectDecoderIo, emptyKv, loadModel, withPatch, type DecoderIo } from '../../src/model/index.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { LLAMA, testModelDir } from '../support/fixtures.ts';
import type { ValueInfo } from '../../src/model/layout.ts';

const onnx = onnxProto.onnx;
const sessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1 };

async function ioOf(bytes: Uint8Array): Promise<DecoderIo> {
  const session = await ort.InferenceSession.create(bytes, sessionOptions);
  try {
    return detectDecoderIo(session.inputMetadata as readonly ValueInfo[], session.outputMetadata as readonly ValueInfo[], {});
  } finally {
    await session.release();
  }
}

const kvTensor = (dtype: 'float32' | 'float16', dims: number[]) =>
  new ort.Tensor(dtype, dtype === 'float16' ? new Uint16Array(0) : new Float32Array(0), dims);

/**
 * Runs the original and the rewritten graph on the same feeds (a prefill, a chunk, one token, each on top
 * of the original's present) and checks: only the fetched outputs come back, logits are unchanged, and
 * new_rows.* equal the rows present.* appends, bit for bit.
 */
async function checkRewrite(bytes: Uint8Array, vocab: number): Promise<void> {
  const io = await ioOf(bytes);
  const rewrite = addNewRowOutputs(bytes, io.names);
  if (!rewrite.ok) assert.fail(rewrite.reason);
  const original = await ort.InferenceSession.create(bytes, sessionOptions);
  const rewritten = await ort.InferenceSession.create(withPatch(bytes, rewrite.patch), sessionOptions);
  const { names, kv } = io;
  const batch = 2;
  const past: Record<string, ort.Tensor> = {};
  for (const name of [...names.pastKeys, ...names.pastValues]) past[name] = kvTensor(kv.dtype, [batch, kv.numKvHeads, 0, kv.headDim]);
  let length = 0;
  let seed = 7;
  const nextToken = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % vocab;
  for (const seqLength of [5, 3, 1]) {
    const total = length + seqLength;
    const feeds: Record<string, ort.Tensor> = {
      ...past,
      [names.inputIds]: new ort.Tensor('int64', BigInt64Array.from({ length: batch * seqLength }, () => BigInt(nextToken())), [batch, seqLength]),
      [names.attentionMask]: new ort.Tensor('int64', new BigInt64Array(batch * total).fill(1n), [batch, total]),
    };
    if (names.positionIds) {
      feeds[names.positionIds] = new ort.Tensor('int64', BigInt64Array.from({ length: batch * seqLength }, (_, i) => BigInt(length + (i % seqLength))), [batch, seqLength]);
    }
    const full: ort.InferenceSession.OnnxValueMapType = await original.run(feeds);
    const fetches: string[] = [names.logits, ...rewrite.newKeys, ...rewrite.newValues];
    const lean: ort.InferenceSession.OnnxValueMapType = await rewritten.run(feeds, fetches);
    assert.deepEqual(Object.keys(lean).sort(), [...fetches].sort(), 'only logits and new rows come back');
    const a = full[names.logits].data as Float32Array;
    const b = lean[names.logits].data as Float32Array;
    assert.equal(a.length, b.length);
    let maxDiff = 0;
    for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
    assert.ok(maxDiff <= 1e-5, `logits differ by ${maxDiff}`);
    for (let layer = 0; layer < kv.numLayers; layer++) {
      const pairs: Array<[string, string]> = [
        [names.presentKeys[layer], rewrite.newKeys[layer]],
        [names.presentValues[layer], rewrite.newValues[layer]],
      ];
      for (const [presentName, rowsName] of pairs) {
        const present: ort.Tensor = full[presentName];
        const rows: ort.Tensor = lean[rowsName];
        assert.deepEqual(rows.dims, [batch, kv.numKvHeads, seqLength, kv.headDim], rowsName);
        assert.equal(rows.type, present.type, rowsName);
        const presentData = present.data as Float32Array | Uint16Array;
        const rowsData = rows.data as Float32Array | Uint16Array;
        for (let bh = 0; bh < batch * kv.numKvHeads; bh++) {
          const expected = presentData.subarray((bh * total + length) * kv.headDim, (bh * total + total) * kv.headDim);
          const got = rowsData.subarray(bh * seqLength * kv.headDim, (bh + 1) * seqLength * kv.headDim);
          assert.deepEqual(got, expected, `${rowsName}, batch*head ${bh}, rows ${length}..${total}`);
        }
        past[presentName.replace('present.', 'past_key_values.')] = present;
      }
    }
    length = total;
  }
  await original.release();
  await rewritten.release();
}

const small: Partial<BuildOptions> = { hiddenSize: 32, numLayers: 2, numHeads: 4, maxPositions: 64, tokenizerMerges: 50 };

describe('addNewRowOutputs on builder models', () => {
  for (const [label, options] of [
    ['llama, GQA (4 heads / 2 KV heads), float32 KV', { family: 'llama', numKvHeads: 2 }],
    ['llama, GQA (4 heads / 1 KV head), float16 KV and logits', { family: 'llama', numKvHeads: 1, kvDtype: 'float16', logitsDtype: 'float16' }],
    ['gpt2, float32 KV', { family: 'gpt2' }],
    ['gpt2, float16 KV, positions from the mask', { family: 'gpt2', kvDtype: 'float16', positionIds: false }],
  ] as const) {
    test(`${label}: new rows equal present's last rows, logits unchanged`, async () => {
      const m = buildModelBytes({ ...small, ...options } as BuildOptions);
      await checkRewrite(m.onnx, m.options.vocabSize);
    });
  }

  test('a Concat behind layout ops (Transpose, Identity) is found and the ops are applied to the new rows', async () => {
    const m = buildModelBytes({ ...small, family: 'llama' });
    const model = onnx.ModelProto.decode(m.onnx);
    const graph = model.graph!;
    const concat = graph.node!.find((n) => n.output?.[0] === 'present.0.key')!;
    // present = Transpose(Transpose(concat)) with perms that undo each other: same values, a two-op chain.
    concat.output = ['cat0'];
    const perm = { name: 'perm', type: onnx.AttributeProto.AttributeType.INTS, ints: [0, 2, 1, 3] };
    graph.node!.push(
      { name: 't0', opType: 'Transpose', input: ['cat0'], output: ['cat0_t'], attribute: [perm] },
      { name: 't1', opType: 'Transpose', input: ['cat0_t'], output: ['cat0_tt'], attribute: [perm] },
      { name: 'id', opType: 'Identity', input: ['cat0_tt'], output: ['present.0.key'] },
    );
    await checkRewrite(onnx.ModelProto.encode(model).finish(), m.options.vocabSize);
  });

  test('the patch appended to the bytes adds the nodes and outputs, as protobuf merges a repeated message field', async () => {
    const m = buildModelBytes({ ...small, family: 'llama' });
    const io = await ioOf(m.onnx);
    const rewrite = addNewRowOutputs(m.onnx, io.names);
    if (!rewrite.ok) assert.fail(rewrite.reason);
    // A few hundred bytes a layer, whatever the weights weigh: they are neither decoded into copies nor written again.
    assert.ok(rewrite.patch.length < 1024, `a ${rewrite.patch.length}-byte patch for two layers`);
    const original = await ort.InferenceSession.create(m.onnx, sessionOptions);
    const patched = await ort.InferenceSession.create(withPatch(m.onnx, rewrite.patch), sessionOptions);
    assert.deepEqual(patched.inputNames, original.inputNames);
    assert.deepEqual(patched.outputNames, [...original.outputNames, ...rewrite.newKeys.flatMap((key, i) => [key, rewrite.newValues[i]])]);
    await Promise.all([original.release(), patched.release()]);
  });

  test('the committed default model (a PyTorch export) is rewritable', async () => {
    const bytes = readFileSync('models/warmkv-brown/onnx/model.onnx');
    const config = JSON.parse(readFileSync('models/warmkv-brown/config.json', 'utf8')) as { vocab_size: number };
    await checkRewrite(bytes, config.vocab_size);
  });
});

describe('addNewRowOutputs refuses graphs without the Concat shape', () => {
  const names = { pastKeys: ['past_key_values.0.key'], pastValues: ['past_key_values.0.value'], presentKeys: ['present.0.key'], presentValues: ['present.0.value'] };

  test('a contrib attention op that writes present.* itself', () => {
    const vi = (name: string) => ({ name, type: { tensorType: { elemType: 1 } } });
    const model = onnx.ModelProto.create({
      irVersion: 8,
      opsetImport: [{ domain: '', version: 17 }, { domain: 'com.microsoft', version: 1 }],
      graph: {
        name: 'gqa',
        input: ['query', 'key', 'value', 'past_key_values.0.key', 'past_key_values.0.value'].map(vi),
        output: ['attn', 'present.0.key', 'present.0.value'].map(vi),
        node: [
          {
            name: 'layer0_gqa',
            opType: 'GroupQueryAttention',
            domain: 'com.microsoft',
            input: ['query', 'key', 'value', 'past_key_values.0.key', 'past_key_values.0.value'],
            output: ['attn', 'present.0.key', 'present.0.value'],
          },
        ],
      },
    });
    const result = addNewRowOutputs(onnx.ModelProto.encode(model).finish(), names);
    assert.equal(result.ok, false);
    assert.match(result.ok ? '' : result.reason, /present\.0\.key is produced by com\.microsoft\.GroupQueryAttention "layer0_gqa"/);
  });

  test('a Concat along another axis than the sequence', () => {
    const m = buildModelBytes({ ...small, family: 'llama', numLayers: 1 });
    const model = onnx.ModelProto.decode(m.onnx);
    const concat = model.graph!.node!.find((n) => n.output?.[0] === 'present.0.value')!;
    concat.attribute = [{ name: 'axis', type: onnx.AttributeProto.AttributeType.INT, i: 3 }];
    const result = addNewRowOutputs(onnx.ModelProto.encode(model).finish(), names);
    assert.equal(result.ok, false);
    assert.match(result.ok ? '' : result.reason, /present\.0\.value: Concat .* appends along axis 3 of present, not the sequence axis 2/);
  });

  test('a present output that is a copy of the past, with no new rows', () => {
    const m = buildModelBytes({ ...small, family: 'llama', numLayers: 1 });
    const model = onnx.ModelProto.decode(m.onnx);
    const concat = model.graph!.node!.find((n) => n.output?.[0] === 'present.0.key')!;
    concat.input = ['past_key_values.0.key', 'past_key_values.0.key'];
    const result = addNewRowOutputs(onnx.ModelProto.encode(model).finish(), names);
    assert.equal(result.ok, false);
    assert.match(result.ok ? '' : result.reason, /concatenates the past with itself/);
  });
});

describe('loading with new-row outputs', () => {
  test('a model whose weights are in an external file (model.onnx_data, every export over 2 GB) loads in place, with the same outputs as inline', async () => {
    const inline = await loadModel(await testModelDir(LLAMA), { logger: silentLogger, intraOpThreads: 1, newRowOutputs: true });
    const external = await loadModel(await testModelDir({ ...LLAMA, externalData: true }), { logger: silentLogger, intraOpThreads: 1, newRowOutputs: true });
    try {
      assert.ok(inline.decoder.io.newRows, 'inline weights: in place');
      assert.ok(external.decoder.io.newRows, 'external weights: in place too (onnxruntime is told the folder of the weights)');
      const step = {
        batchSize: 1,
        seqLength: 4,
        inputIds: BigInt64Array.of(5n, 9n, 2n, 7n),
        attentionMask: new BigInt64Array(4).fill(1n),
        positionIds: BigInt64Array.of(0n, 1n, 2n, 3n),
        past: emptyKv(inline.decoder.io.kv, 1),
        fetch: 'new-rows' as const,
      };
      const [a, b] = [await inline.decoder.run(step), await external.decoder.run(step)];
      assert.deepEqual(b.logits, a.logits);
      assert.deepEqual(b.present.layers, a.present.layers);
    } finally {
      await Promise.all([inline.decoder.dispose(), external.decoder.dispose()]);
    }
  });
});

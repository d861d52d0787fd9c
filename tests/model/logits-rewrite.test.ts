/**
 * The LM head cut to the last positions (src/model/logits-rewrite.ts): on builder llamas (an untied
 * head, float16 logits behind a Cast), a gpt2 (the head tied to the embedding through a Transpose) and
 * the committed default model (a torch export), a decoder loaded for in-place KV takes
 * `logitsToKeep`, and its logits for the last k positions equal the last k rows of the full logits, for
 * a chunk over a past and for a batch of two rows. Graphs whose head does not have the shape are left
 * as they are, with the reason.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import { keepLastLogits, LOGITS_TO_KEEP_INPUT } from '../../src/model/logits-rewrite.ts';
import { loadModel, type LoadedModel } from '../../src/model/index.ts';
import { emptyKv, type Decoder, type DecoderStep, type KvData } from '../../src/model/types.ts';
import { halfToFloat } from '../../src/lib/float16.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { randomTokens, testModel } from '../support/fixtures.ts';

const asFloat = (data: KvData) => (data instanceof Float32Array ? data : Float32Array.from(data, halfToFloat));

function step(decoder: Decoder, rows: number[][], pastLength: number, past = emptyKv(decoder.io.kv, rows.length), logitsToKeep?: number): DecoderStep {
  const seqLength = rows[0].length;
  return {
    batchSize: rows.length,
    seqLength,
    inputIds: BigInt64Array.from(rows.flat(), (t) => BigInt(t)),
    attentionMask: new BigInt64Array(rows.length * (pastLength + seqLength)).fill(1n),
    positionIds: BigInt64Array.from(rows.flatMap((row) => row.map((_, i) => BigInt(pastLength + i)))),
    past,
    logitsToKeep,
  };
}

/** Row r's last `keep` positions of full logits `// [rows, seqLength, vocab]`. */
function lastRows(full: Float32Array, rows: number, seqLength: number, vocab: number, keep: number): Float32Array {
  const out = new Float32Array(rows * keep * vocab);
  for (let r = 0; r < rows; r++) out.set(full.subarray((r * seqLength + seqLength - keep) * vocab, (r + 1) * seqLength * vocab), r * keep * vocab);
  return out;
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

async function checkCut(model: LoadedModel): Promise<void> {
  const decoder = model.decoder;
  assert.ok(decoder.io.logitsToKeep, 'the in-place decoder takes logitsToKeep');
  const prompt = [randomTokens(9, 1, model.vocabSize), randomTokens(9, 2, model.vocabSize)];
  // Over an empty past, two rows, and then a chunk over the prompt's cache.
  const full = await decoder.run(step(decoder, prompt, 0));
  assert.equal(full.logitPositions, 9, 'without logitsToKeep every position');
  for (const keep of [1, 3]) {
    const cut = await decoder.run(step(decoder, prompt, 0, undefined, keep));
    assert.equal(cut.logitPositions, keep);
    assert.ok(maxDiff(asFloat(cut.logits), lastRows(asFloat(full.logits), 2, 9, full.vocabSize, keep)) < 1e-5, `keep ${keep}`);
  }
  const chunk = [randomTokens(6, 3, model.vocabSize), randomTokens(6, 4, model.vocabSize)];
  const fullChunk = await decoder.run(step(decoder, chunk, 9, full.present));
  const cutChunk = await decoder.run(step(decoder, chunk, 9, full.present, 1));
  assert.equal(cutChunk.logitPositions, 1);
  assert.ok(maxDiff(asFloat(cutChunk.logits), lastRows(asFloat(fullChunk.logits), 2, 6, full.vocabSize, 1)) < 1e-5);
}

describe('the LM head cut to the last positions', () => {
  for (const [name, options] of [
    ['llama, untied head', { family: 'llama', seed: 7 }],
    ['llama, float16 logits and KV', { family: 'llama', seed: 7, logitsDtype: 'float16', kvDtype: 'float16' }],
    ['gpt2, head tied to the embedding', { family: 'gpt2', seed: 7 }],
  ] as const) {
    test(`${name}: the last k positions' logits equal the full logits' last k rows`, async () => {
      await checkCut(await testModel(options, true));
    });
  }

  test('the committed default model (a torch export) is cut the same way; a concat decoder is not rewritten', async () => {
    const brown = await loadModel('models/warmkv-brown', { logger: silentLogger, intraOpThreads: 1, newRowOutputs: true });
    await checkCut(brown);
    await brown.decoder.dispose();
    const concat = await testModel({ family: 'llama', seed: 7 }, false);
    assert.equal(concat.decoder.io.logitsToKeep, undefined);
  });

  test('a head whose input is flattened, or that multiplies by no constant, is left as it is', () => {
    const { TensorProto } = onnxProto.onnx;
    const weight = { name: 'w', dataType: TensorProto.DataType.FLOAT, dims: [4, 8], floatData: new Array(32).fill(0.5) };
    const graph = (nodes: onnxProto.onnx.INodeProto[]): onnxProto.onnx.IGraphProto => ({
      node: nodes,
      initializer: [weight, { name: 'shape', dataType: TensorProto.DataType.INT64, dims: [2], int64Data: [-1, 4] }],
      input: [{ name: 'x' }, { name: 'y' }],
      output: [{ name: 'logits' }],
    });
    const flattened = graph([
      { opType: 'Reshape', input: ['x', 'shape'], output: ['flat'] },
      { opType: 'MatMul', input: ['flat', 'w'], output: ['logits'] },
    ]);
    assert.match((keepLastLogits(flattened, 'logits') as { reason: string }).reason, /Reshape/);
    const noConstant = graph([{ opType: 'MatMul', input: ['x', 'y'], output: ['logits'] }]);
    assert.match((keepLastLogits(noConstant, 'logits') as { reason: string }).reason, /no MatMul by a constant/);
    const plain = graph([
      { opType: 'Identity', input: ['x'], output: ['h'] },
      { opType: 'MatMul', input: ['h', 'w'], output: ['z'] },
      { opType: 'Add', input: ['z', 'w'], output: ['logits'] },
    ]);
    assert.deepEqual(keepLastLogits(plain, 'logits'), { input: LOGITS_TO_KEEP_INPUT });
    assert.deepEqual(plain.node!.map((n) => n.opType), ['Identity', 'Neg', 'Slice', 'MatMul', 'Add']);
    assert.equal(plain.node![3].input![0], 'h/warmkv_last_positions');
  });
});

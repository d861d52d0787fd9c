import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { detectDecoderIo, UnsupportedModelError } from '../../src/model/index.ts';
import type { ValueInfo } from '../../src/model/layout.ts';

type Dim = number | string;

interface Spec {
  layers: number;
  kvHeads: Dim;
  headDim: Dim;
  kvType?: string;
  logitsType?: string;
  positionIds?: boolean;
  useCacheBranch?: boolean;
  extraInputs?: ValueInfo[];
}

const tensor = (name: string, type: string, shape: Dim[]): ValueInfo => ({ name, isTensor: true, type, shape });

/** Value metadata the way onnxruntime-node reports an Optimum "text-generation-with-past" export. */
function optimum(spec: Spec): { inputs: ValueInfo[]; outputs: ValueInfo[] } {
  const kvType = spec.kvType ?? 'float32';
  const inputs: ValueInfo[] = [tensor('input_ids', 'int64', ['batch_size', 'sequence_length']), tensor('attention_mask', 'int64', ['batch_size', 'total_sequence_length'])];
  if (spec.positionIds !== false) inputs.push(tensor('position_ids', 'int64', ['batch_size', 'sequence_length']));
  const outputs: ValueInfo[] = [tensor('logits', spec.logitsType ?? 'float32', ['batch_size', 'sequence_length', 32000])];
  for (let i = 0; i < spec.layers; i++) {
    for (const kind of ['key', 'value']) {
      inputs.push(tensor(`past_key_values.${i}.${kind}`, kvType, ['batch_size', spec.kvHeads, 'past_sequence_length', spec.headDim]));
      outputs.push(tensor(`present.${i}.${kind}`, kvType, ['batch_size', spec.kvHeads, 'total_sequence_length', spec.headDim]));
    }
  }
  if (spec.useCacheBranch) inputs.push(tensor('use_cache_branch', 'bool', [1]));
  inputs.push(...(spec.extraInputs ?? []));
  return { inputs, outputs };
}

function rejects(inputs: ValueInfo[], outputs: ValueInfo[], expected: RegExp[], hints = {}): void {
  assert.throws(
    () => detectDecoderIo(inputs, outputs, hints),
    (error: unknown) => {
      assert.ok(error instanceof UnsupportedModelError, `expected UnsupportedModelError, got ${String(error)}`);
      assert.equal(error.name, 'UnsupportedModelError');
      for (const pattern of expected) assert.match(error.message, pattern);
      // Every message ends with the I/O that was found, so an operator can see the export.
      assert.match(error.message, /Found: inputs \[input_ids|Found: inputs \[/);
      return true;
    },
  );
}

describe('detectDecoderIo: supported Optimum layouts', () => {
  test('llama-style GQA with position_ids (8 kv heads of 128, 32 layers, fp32)', () => {
    const { inputs, outputs } = optimum({ layers: 32, kvHeads: 8, headDim: 128 });
    const io = detectDecoderIo(inputs, outputs);
    assert.deepEqual(io.kv, { numLayers: 32, numKvHeads: 8, headDim: 128, dtype: 'float32', bytesPerToken: 2 * 32 * 8 * 128 * 4 });
    assert.equal(io.logitsDtype, 'float32');
    assert.equal(io.names.inputIds, 'input_ids');
    assert.equal(io.names.attentionMask, 'attention_mask');
    assert.equal(io.names.positionIds, 'position_ids');
    assert.equal(io.names.useCacheBranch, null);
    assert.equal(io.names.logits, 'logits');
    assert.equal(io.names.pastKeys.length, 32);
    assert.equal(io.names.pastKeys[17], 'past_key_values.17.key');
    assert.equal(io.names.pastValues[31], 'past_key_values.31.value');
    assert.equal(io.names.presentKeys[0], 'present.0.key');
    assert.equal(io.names.presentValues[5], 'present.5.value');
  });

  test('fp16 KV halves bytesPerToken; fp16 logits are reported separately', () => {
    const { inputs, outputs } = optimum({ layers: 2, kvHeads: 2, headDim: 16, kvType: 'float16', logitsType: 'float16' });
    const io = detectDecoderIo(inputs, outputs);
    assert.equal(io.kv.dtype, 'float16');
    assert.equal(io.kv.bytesPerToken, 2 * 2 * 2 * 16 * 2);
    assert.equal(io.logitsDtype, 'float16');
    const mixed = optimum({ layers: 2, kvHeads: 2, headDim: 16, kvType: 'float16', logitsType: 'float32' });
    assert.equal(detectDecoderIo(mixed.inputs, mixed.outputs).logitsDtype, 'float32');
  });

  test('no position_ids input (gpt2-style export)', () => {
    const { inputs, outputs } = optimum({ layers: 12, kvHeads: 12, headDim: 64, positionIds: false });
    const io = detectDecoderIo(inputs, outputs);
    assert.equal(io.names.positionIds, null);
    assert.equal(io.kv.bytesPerToken, 2 * 12 * 12 * 64 * 4);
  });

  test('merged decoder with use_cache_branch', () => {
    const { inputs, outputs } = optimum({ layers: 2, kvHeads: 4, headDim: 32, useCacheBranch: true });
    const io = detectDecoderIo(inputs, outputs);
    assert.equal(io.names.useCacheBranch, 'use_cache_branch');
    assert.equal(io.kv.numLayers, 2);
  });

  test('inputs in any order: layers are sorted by their number, not by metadata order', () => {
    const { inputs, outputs } = optimum({ layers: 12, kvHeads: 2, headDim: 8 });
    const io = detectDecoderIo([...inputs].reverse(), [...outputs].reverse());
    assert.deepEqual(io.names.pastKeys, Array.from({ length: 12 }, (_, i) => `past_key_values.${i}.key`));
    assert.deepEqual(io.names.presentValues, Array.from({ length: 12 }, (_, i) => `present.${i}.value`));
  });

  test('symbolic kv-head and head-size dims are taken from config hints', () => {
    const { inputs, outputs } = optimum({ layers: 4, kvHeads: 'num_kv_heads', headDim: 'head_dim' });
    const io = detectDecoderIo(inputs, outputs, { numKvHeads: 3, headDim: 40 });
    assert.equal(io.kv.numKvHeads, 3);
    assert.equal(io.kv.headDim, 40);
    assert.equal(io.kv.bytesPerToken, 2 * 4 * 3 * 40 * 4);
  });

  test('numeric dims in the model win over config hints', () => {
    const { inputs, outputs } = optimum({ layers: 2, kvHeads: 2, headDim: 64 });
    const io = detectDecoderIo(inputs, outputs, { numKvHeads: 16, headDim: 8 });
    assert.equal(io.kv.numKvHeads, 2);
    assert.equal(io.kv.headDim, 64);
  });

  test('an unnamed dynamic dim (onnxruntime-node reports it as "") counts as symbolic', () => {
    const { inputs, outputs } = optimum({ layers: 1, kvHeads: '', headDim: 16 });
    assert.equal(detectDecoderIo(inputs, outputs, { numKvHeads: 5 }).kv.numKvHeads, 5);
  });
});

describe('detectDecoderIo: unsupported models name what was found', () => {
  const base = () => optimum({ layers: 2, kvHeads: 2, headDim: 16 });

  test('missing input_ids', () => {
    const { inputs, outputs } = base();
    rejects(
      inputs.filter((v) => v.name !== 'input_ids'),
      outputs,
      [/no "input_ids" input/, /attention_mask:int64/],
    );
  });

  test('missing attention_mask', () => {
    const { inputs, outputs } = base();
    rejects(inputs.filter((v) => v.name !== 'attention_mask'), outputs, [/no "attention_mask" input/]);
  });

  test('an unknown extra input such as token_type_ids', () => {
    const { inputs, outputs } = optimum({ layers: 2, kvHeads: 2, headDim: 16, extraInputs: [tensor('token_type_ids', 'int64', ['batch_size', 'sequence_length'])] });
    rejects(inputs, outputs, [/unsupported model inputs token_type_ids/, /token_type_ids:int64\[batch_size,sequence_length\]/]);
  });

  test('no logits output', () => {
    const { inputs, outputs } = base();
    rejects(inputs, outputs.filter((v) => v.name !== 'logits'), [/no "logits" output/]);
  });

  test('exported without past (no past_key_values inputs)', () => {
    const { inputs, outputs } = base();
    rejects(
      inputs.filter((v) => !v.name.startsWith('past_key_values')),
      outputs.filter((v) => !v.name.startsWith('present')),
      [/no past_key_values/, /with past/],
    );
  });

  test('past inputs but no present outputs', () => {
    const { inputs, outputs } = base();
    rejects(inputs, outputs.filter((v) => !v.name.startsWith('present')), [/2 past layers but 0 present layers/, /past_key_values\.1\.value/]);
  });

  test('mismatched layer counts between past and present', () => {
    const { inputs } = base();
    const { outputs } = optimum({ layers: 3, kvHeads: 2, headDim: 16 });
    rejects(inputs, outputs, [/2 past layers but 3 present layers/]);
  });

  test('a past layer with a key but no value', () => {
    const { inputs, outputs } = base();
    rejects(inputs.filter((v) => v.name !== 'past_key_values.1.value'), outputs, [/past_key_values for layer 1 is incomplete/]);
  });

  test('layers not numbered from 0 without gaps', () => {
    const { inputs, outputs } = base();
    const renamed = inputs.map((v) => (v.name.startsWith('past_key_values.1.') ? { ...v, name: v.name.replace('.1.', '.2.') } : v));
    rejects(renamed, outputs, [/for layer 1 is incomplete/, /past_key_values\.2\.key/]);
  });

  test('int8 KV dtype', () => {
    const { inputs, outputs } = optimum({ layers: 2, kvHeads: 2, headDim: 16, kvType: 'int8' });
    rejects(inputs, outputs, [/past_key_values\.0\.key has dtype int8/, /only float32 and float16/]);
  });

  test('bfloat16 logits', () => {
    const { inputs, outputs } = optimum({ layers: 2, kvHeads: 2, headDim: 16, logitsType: 'bfloat16' });
    rejects(inputs, outputs, [/logits has dtype bfloat16/]);
  });

  test('rank-3 past tensors', () => {
    const { inputs, outputs } = base();
    const rank3 = inputs.map((v) => (v.name.startsWith('past_key_values') ? { ...v, shape: ['batch_size', 'past_sequence_length', 32] } : v));
    rejects(rank3, outputs, [/past_key_values\.0\.key has rank 3/, /expected \[batch, kv_heads, past_sequence_length, head_dim\]/]);
  });

  test('mixed KV dtypes across layers', () => {
    const { inputs, outputs } = base();
    const mixed = inputs.map((v) => (v.name === 'past_key_values.1.value' ? { ...v, type: 'float16' } : v));
    rejects(mixed, outputs, [/past_key_values\.1\.value has dtype float16 but past_key_values\.0\.key has float32/]);
  });

  test('present dtype differing from past', () => {
    const { inputs, outputs } = base();
    const mixed = outputs.map((v) => (v.name === 'present.0.key' ? { ...v, type: 'float16' } : v));
    rejects(inputs, mixed, [/present\.0\.key has dtype float16/]);
  });

  test('a layer whose head size differs from layer 0', () => {
    const { inputs, outputs } = base();
    const odd = outputs.map((v) => (v.name === 'present.1.value' ? { ...v, shape: ['batch_size', 2, 'total_sequence_length', 24] } : v));
    rejects(inputs, odd, [/present\.1\.value has shape \[batch_size,2,total_sequence_length,24\], expected \[batch, 2, seq, 16\]/]);
  });

  test('symbolic dims without config hints', () => {
    const { inputs, outputs } = optimum({ layers: 2, kvHeads: 'kv_heads', headDim: 'head_size' });
    rejects(inputs, outputs, [/cannot tell KV heads and head size/, /\[batch_size,kv_heads,past_sequence_length,head_size\]/]);
    rejects(inputs, outputs, [/cannot tell KV heads/], { numKvHeads: 2 });
  });
});

/** Value metadata of ONNX Runtime's GPT-2 exporter: one past_N / present_N [2, batch, heads, seq, head] per layer. */
function stackedGpt2(layers: number, heads: Dim, head: Dim, maskType = 'float32'): { inputs: ValueInfo[]; outputs: ValueInfo[] } {
  const inputs: ValueInfo[] = [
    tensor('input_ids', 'int64', ['batch_size', 'seq_len']),
    tensor('position_ids', 'int64', ['batch_size', 'seq_len']),
    tensor('attention_mask', maskType, ['batch_size', 'total_seq_len']),
  ];
  const outputs: ValueInfo[] = [tensor('logits', 'float32', ['batch_size', 'seq_len', 50257])];
  for (let i = 0; i < layers; i++) {
    inputs.push(tensor(`past_${i}`, 'float32', [2, 'batch_size', heads, 'past_seq_len', head]));
    outputs.push(tensor(`present_${i}`, 'float32', [2, 'batch_size', heads, 'total_seq_len', head]));
  }
  return { inputs, outputs };
}

describe('detectDecoderIo: stacked past_N (ONNX Runtime GPT-2 exporter)', () => {
  test('12 layers of 12 heads of 64, float32 mask', () => {
    const { inputs, outputs } = stackedGpt2(12, 12, 64);
    const io = detectDecoderIo(inputs, outputs);
    assert.equal(io.names.kvPacking, 'stacked');
    assert.deepEqual(io.kv, { numLayers: 12, numKvHeads: 12, headDim: 64, dtype: 'float32', bytesPerToken: 2 * 12 * 12 * 64 * 4 });
    assert.deepEqual(io.names.pastKeys, io.names.pastValues);
    assert.equal(io.names.pastKeys[11], 'past_11');
    assert.equal(io.names.presentValues[0], 'present_0');
    assert.deepEqual(io.inputTypes, { inputIds: 'int64', attentionMask: 'float32', positionIds: 'int64' });
    assert.equal(detectDecoderIo(...Object.values(stackedGpt2(2, 4, 16, 'int32')) as [ValueInfo[], ValueInfo[]]).inputTypes.attentionMask, 'int32');
  });

  test('a leading axis other than 2, a wrong rank, a bool mask or a missing present are refused', () => {
    const { inputs, outputs } = stackedGpt2(2, 4, 16);
    rejects(inputs.map((v) => (v.name === 'past_0' ? { ...v, shape: [3, 'batch_size', 4, 'past_seq_len', 16] } : v)), outputs, [/past_0 has rank 5/, /expected \[2, batch, kv_heads/]);
    rejects(inputs.map((v) => (v.name === 'past_1' ? { ...v, shape: ['batch_size', 4, 'past_seq_len', 16] } : v)), outputs, [/past_1 has shape/, /expected \[2, batch, 4, seq, 16\]/]);
    rejects(stackedGpt2(2, 4, 16, 'bool').inputs, outputs, [/attention_mask has dtype bool/]);
    rejects(inputs, outputs.filter((v) => v.name !== 'present_1'), [/2 past layers but 1 present layers/]);
  });
});

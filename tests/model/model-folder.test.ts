import assert from 'node:assert/strict';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { ModelFolderError, readModelFolder } from '../../src/model/index.ts';
import { GPT2, LLAMA, testModelDir } from '../support/fixtures.ts';

const root = mkdtempSync(join(tmpdir(), 'warmkv-model-folder-'));
after(() => rmSync(root, { recursive: true, force: true }));
let counter = 0;

interface FolderSpec {
  config?: Record<string, unknown> | string | null;
  generationConfig?: Record<string, unknown>;
  tokenizer?: Record<string, unknown> | null;
  tokenizerConfig?: Record<string, unknown>;
  onnx?: string[];
}

/** A hand-made model folder: the reader never parses the ONNX file, so a few bytes stand in for it. */
function folder(spec: FolderSpec = {}): string {
  const dir = join(root, `m${counter++}`);
  mkdirSync(join(dir, 'onnx'), { recursive: true });
  const config = spec.config === undefined ? { model_type: 'llama', hidden_size: 64, num_attention_heads: 4 } : spec.config;
  if (config !== null) writeFileSync(join(dir, 'config.json'), typeof config === 'string' ? config : JSON.stringify(config));
  if (spec.generationConfig) writeFileSync(join(dir, 'generation_config.json'), JSON.stringify(spec.generationConfig));
  if (spec.tokenizer !== null) writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(spec.tokenizer ?? { version: '1.0' }));
  if (spec.tokenizerConfig) writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(spec.tokenizerConfig));
  for (const file of spec.onnx ?? ['onnx/model.onnx']) writeFileSync(join(dir, file), `fake onnx ${file}`);
  return dir;
}

function folderError(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof ModelFolderError, `expected ModelFolderError, got ${String(error)}`);
    assert.equal(error.name, 'ModelFolderError');
    assert.match(error.message, pattern);
    return true;
  });
}

describe('readModelFolder on builder folders', () => {
  test('llama: ids, hints, positions, eos from generation_config and config', async () => {
    const dir = await testModelDir(LLAMA);
    const f = readModelFolder(dir);
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    assert.equal(f.id, basename(dir));
    assert.equal(f.onnxPath, join(dir, 'onnx', 'model.onnx'));
    assert.equal(f.modelType, 'llama');
    assert.equal(f.vocabSize, config.vocab_size);
    assert.equal(f.maxPositions, 1024);
    assert.equal(f.numKvHeadsHint, 2);
    assert.equal(f.headDimHint, 16);
    assert.deepEqual(f.positionEncoding, { kind: 'rotary', theta: 10000, rotaryDim: 16, style: 'rotate_half' });
    // generation_config: eos [<|endoftext|>, <|im_end|>]; config: eos <|endoftext|> (deduplicated).
    assert.deepEqual(f.eosTokenIds, [656, 658]);
    assert.equal(f.bosTokenId, 656);
    // do_sample is false: no sampling defaults.
    assert.equal(f.generationDefaults.temperature, undefined);
    assert.equal(f.generationDefaults.topP, undefined);
    assert.equal(typeof f.tokenizerJson.model, 'object');
    assert.equal(typeof f.tokenizerConfig.chat_template, 'string');
    assert.match(f.modelFingerprint, /^[0-9a-f]{32}$/);
    assert.match(f.tokenizerFingerprint, /^[0-9a-f]{32}$/);
    assert.equal(readModelFolder(dir, 'my-model').id, 'my-model');
  });

  test('gpt2: learned positions of n_positions, kv-head hint from n_head', async () => {
    const dir = await testModelDir(GPT2);
    const f = readModelFolder(dir);
    assert.equal(f.modelType, 'gpt2');
    assert.deepEqual(f.positionEncoding, { kind: 'learned', maxPositions: 1024 });
    assert.equal(f.numKvHeadsHint, 4);
    assert.equal(f.headDimHint, 16);
  });

  test('merged layout: onnx/decoder_model_merged.onnx is found', async () => {
    const dir = await testModelDir({ ...LLAMA, layout: 'merged' });
    assert.equal(readModelFolder(dir).onnxPath, join(dir, 'onnx', 'decoder_model_merged.onnx'));
  });

  test('the same model in two folders has the same fingerprints (snapshots are portable)', async () => {
    const dir = await testModelDir(LLAMA);
    const copy = join(root, `copy${counter++}`);
    cpSync(dir, copy, { recursive: true });
    const a = readModelFolder(dir);
    const b = readModelFolder(copy);
    assert.equal(b.modelFingerprint, a.modelFingerprint);
    assert.equal(b.tokenizerFingerprint, a.tokenizerFingerprint);
  });

  test('the model fingerprint changes when the ONNX bytes change, the tokenizer one does not', async () => {
    const dir = await testModelDir(LLAMA);
    const copy = join(root, `copy${counter++}`);
    cpSync(dir, copy, { recursive: true });
    const original = readModelFolder(copy);
    const onnxPath = join(copy, 'onnx', 'model.onnx');
    const bytes = readFileSync(onnxPath);
    // Flip one byte in the middle of the weights (same size).
    bytes[bytes.length >> 1] ^= 0xff;
    writeFileSync(onnxPath, bytes);
    const changed = readModelFolder(copy);
    assert.notEqual(changed.modelFingerprint, original.modelFingerprint);
    assert.equal(changed.tokenizerFingerprint, original.tokenizerFingerprint);
  });

  test('the fingerprints follow config and tokenizer edits', async () => {
    const dir = await testModelDir(LLAMA);
    const copy = join(root, `copy${counter++}`);
    cpSync(dir, copy, { recursive: true });
    const original = readModelFolder(copy);
    const config = JSON.parse(readFileSync(join(copy, 'config.json'), 'utf8'));
    writeFileSync(join(copy, 'config.json'), JSON.stringify({ ...config, rms_norm_eps: 1e-5 }));
    const configChanged = readModelFolder(copy);
    assert.notEqual(configChanged.modelFingerprint, original.modelFingerprint);
    assert.equal(configChanged.tokenizerFingerprint, original.tokenizerFingerprint);
    const tokenizerConfig = JSON.parse(readFileSync(join(copy, 'tokenizer_config.json'), 'utf8'));
    writeFileSync(join(copy, 'tokenizer_config.json'), JSON.stringify({ ...tokenizerConfig, chat_template: '{{ messages }}' }));
    const tokenizerChanged = readModelFolder(copy);
    assert.notEqual(tokenizerChanged.tokenizerFingerprint, original.tokenizerFingerprint);
    assert.equal(tokenizerChanged.modelFingerprint, configChanged.modelFingerprint);
  });

  test(
    'the model fingerprint changes when external weight data (onnx/model.onnx_data) changes',
    async () => {
      const dir = await testModelDir({ ...LLAMA, externalData: true });
      const copy = join(root, `copy${counter++}`);
      cpSync(dir, copy, { recursive: true });
      const original = readModelFolder(copy);
      const dataPath = join(copy, 'onnx', 'model.onnx_data');
      const data = readFileSync(dataPath);
      // Same-size re-export with different weights (a fine-tune): scale every float by 2.
      const floats = new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4);
      for (let i = 0; i < floats.length; i++) floats[i] *= 2;
      writeFileSync(dataPath, data);
      const changed = readModelFolder(copy);
      assert.notEqual(changed.modelFingerprint, original.modelFingerprint, 'different weights, same fingerprint');
    },
  );
});

describe('readModelFolder on hand-made folders', () => {
  test('ONNX discovery order: onnx/model.onnx, model.onnx, onnx/decoder_model_merged.onnx, decoder_model_merged.onnx', () => {
    const candidates = ['onnx/model.onnx', 'model.onnx', 'onnx/decoder_model_merged.onnx', 'decoder_model_merged.onnx'];
    const dir = folder({ onnx: [...candidates].reverse() });
    for (const expected of candidates) {
      assert.equal(readModelFolder(dir).onnxPath, join(dir, expected));
      unlinkSync(join(dir, expected));
    }
    folderError(() => readModelFolder(dir), /no ONNX model in .*looked for onnx\/model\.onnx, model\.onnx, onnx\/decoder_model_merged\.onnx/);
  });

  test('a root model.onnx is preferred to onnx/decoder_model_merged.onnx', () => {
    const dir = folder({ onnx: ['onnx/decoder_model_merged.onnx', 'model.onnx'] });
    assert.equal(readModelFolder(dir).onnxPath, join(dir, 'model.onnx'));
  });

  test('missing or broken files give a ModelFolderError naming the file', () => {
    folderError(() => readModelFolder(folder({ config: null })), /missing .*config\.json/);
    folderError(() => readModelFolder(folder({ tokenizer: null })), /missing .*tokenizer\.json/);
    folderError(() => readModelFolder(folder({ config: '{ not json' })), /cannot parse .*config\.json/);
    folderError(() => readModelFolder(join(root, 'does-not-exist')), /does not exist/);
    const file = join(root, `file${counter++}`);
    writeFileSync(file, 'x');
    folderError(() => readModelFolder(file), /does not exist/);
  });

  test('optional files may be missing: no generation_config, no tokenizer_config', () => {
    const f = readModelFolder(folder({ config: { model_type: 'llama', hidden_size: 64, num_attention_heads: 4, eos_token_id: 2, bos_token_id: 1 } }));
    assert.deepEqual(f.eosTokenIds, [2]);
    assert.equal(f.bosTokenId, 1);
    assert.deepEqual(f.tokenizerConfig, {});
    assert.equal(f.vocabSize, null);
    assert.equal(f.maxPositions, null);
  });

  test('eos ids: generation_config first, then config, without duplicates; bos from generation_config first', () => {
    const f = readModelFolder(
      folder({
        config: { model_type: 'llama', hidden_size: 64, num_attention_heads: 4, eos_token_id: [7, 3], bos_token_id: 9 },
        generationConfig: { eos_token_id: [3, 5], bos_token_id: 1 },
      }),
    );
    assert.deepEqual(f.eosTokenIds, [3, 5, 7]);
    assert.equal(f.bosTokenId, 1);
    const none = readModelFolder(folder({ config: { model_type: 'llama' }, generationConfig: { eos_token_id: null } }));
    assert.deepEqual(none.eosTokenIds, []);
    assert.equal(none.bosTokenId, null);
  });

  test('sampling defaults are read only when generation_config says do_sample', () => {
    const sampling = readModelFolder(
      folder({ generationConfig: { do_sample: true, temperature: 0.6, top_p: 0.9, top_k: 20, min_p: 0.05, repetition_penalty: 1.1 } }),
    );
    assert.deepEqual(sampling.generationDefaults, { temperature: 0.6, topP: 0.9, topK: 20, minP: 0.05, repetitionPenalty: 1.1 });
    const greedy = readModelFolder(folder({ generationConfig: { do_sample: false, temperature: 0.6, repetition_penalty: 1.2 } }));
    assert.equal(greedy.generationDefaults.temperature, undefined);
    assert.equal(greedy.generationDefaults.repetitionPenalty, 1.2);
  });

  test('llama: rotary rotate_half with rope_theta, head_dim and partial_rotary_factor', () => {
    const f = readModelFolder(
      folder({ config: { model_type: 'llama', hidden_size: 4096, num_attention_heads: 32, num_key_value_heads: 8, rope_theta: 500000, max_position_embeddings: 8192 } }),
    );
    assert.deepEqual(f.positionEncoding, { kind: 'rotary', theta: 500000, rotaryDim: 128, style: 'rotate_half' });
    assert.equal(f.numKvHeadsHint, 8);
    assert.equal(f.headDimHint, 128);
    assert.equal(f.maxPositions, 8192);
    const partial = readModelFolder(
      folder({ config: { model_type: 'phi3', hidden_size: 256, num_attention_heads: 4, partial_rotary_factor: 0.5, rope_theta: 10000 } }),
    );
    assert.deepEqual(partial.positionEncoding, { kind: 'rotary', theta: 10000, rotaryDim: 32, style: 'rotate_half' });
    const explicitHeadDim = readModelFolder(folder({ config: { model_type: 'qwen3', hidden_size: 1024, num_attention_heads: 16, head_dim: 128 } }));
    assert.deepEqual(explicitHeadDim.positionEncoding, { kind: 'rotary', theta: 10000, rotaryDim: 128, style: 'rotate_half' });
    assert.equal(explicitHeadDim.numKvHeadsHint, 16, 'kv heads default to the attention heads');
  });

  test('gpt_neox: rotary_pct and rotary_emb_base', () => {
    const f = readModelFolder(folder({ config: { model_type: 'gpt_neox', hidden_size: 512, num_attention_heads: 8, rotary_pct: 0.25, rotary_emb_base: 10000 } }));
    assert.deepEqual(f.positionEncoding, { kind: 'rotary', theta: 10000, rotaryDim: 16, style: 'rotate_half' });
  });

  test('gpt2: learned positions; without a table size the folder is refused', () => {
    const f = readModelFolder(folder({ config: { model_type: 'gpt2', n_embd: 768, n_head: 12, n_positions: 1024 } }));
    assert.deepEqual(f.positionEncoding, { kind: 'learned', maxPositions: 1024 });
    folderError(() => readModelFolder(folder({ config: { model_type: 'gpt2', n_embd: 768, n_head: 12 } })), /gpt2 model declares no position table size/);
  });

  test('rope_scaling set -> rotary-unknown (null counts as unset)', () => {
    const scaled = readModelFolder(
      folder({ config: { model_type: 'llama', hidden_size: 64, num_attention_heads: 4, rope_scaling: { rope_type: 'llama3', factor: 8 } } }),
    );
    assert.equal(scaled.positionEncoding.kind, 'rotary-unknown');
    assert.match((scaled.positionEncoding as { reason: string }).reason, /rope_scaling/);
    const unscaled = readModelFolder(folder({ config: { model_type: 'llama', hidden_size: 64, num_attention_heads: 4, rope_scaling: null } }));
    assert.equal(unscaled.positionEncoding.kind, 'rotary');
  });

  test('unknown or missing model_type -> rotary-unknown naming the type', () => {
    const unknown = readModelFolder(folder({ config: { model_type: 'mamba', hidden_size: 64, num_attention_heads: 4 } }));
    assert.equal(unknown.positionEncoding.kind, 'rotary-unknown');
    assert.match((unknown.positionEncoding as { reason: string }).reason, /mamba/);
    const missing = readModelFolder(folder({ config: { hidden_size: 64, num_attention_heads: 4 } }));
    assert.equal(missing.modelType, 'unknown');
    assert.equal(missing.positionEncoding.kind, 'rotary-unknown');
  });

  test('rotary models whose head size is unknown or whose rotary dim is odd -> rotary-unknown', () => {
    const noHead = readModelFolder(folder({ config: { model_type: 'llama' } }));
    assert.deepEqual(noHead.positionEncoding, { kind: 'rotary-unknown', reason: 'head size unknown' });
    const odd = readModelFolder(folder({ config: { model_type: 'llama', head_dim: 10, partial_rotary_factor: 0.5 } }));
    assert.equal(odd.positionEncoding.kind, 'rotary-unknown');
    assert.match((odd.positionEncoding as { reason: string }).reason, /rotary dimension 5/);
  });

  test('the fingerprint of a hand-made folder changes with its ONNX bytes and file name', () => {
    const dir = folder();
    const a = readModelFolder(dir).modelFingerprint;
    writeFileSync(join(dir, 'onnx', 'model.onnx'), 'fake onnx onnx/model.onnY');
    const b = readModelFolder(dir).modelFingerprint;
    assert.notEqual(b, a);
    writeFileSync(join(dir, 'onnx', 'model.onnx'), 'fake onnx onnx/model.onnx');
    assert.equal(readModelFolder(dir).modelFingerprint, a);
  });
});

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseCliArgs } from '../../tools/model-builder/cli.ts';

describe('model-builder CLI', () => {
  test('parses options', () => {
    const { out, options } = parseCliArgs(
      '--family llama --out /tmp/m --hidden 256 --layers 4 --heads 8 --kv-heads 2 --vocab 4096 --kv-dtype float16 --no-position-ids --layout merged --external-data --no-chat-template --seed 9'.split(' '),
    );
    assert.equal(out, '/tmp/m');
    assert.deepEqual(options, {
      family: 'llama',
      seed: 9,
      vocabSize: 4096,
      hiddenSize: 256,
      numLayers: 4,
      numHeads: 8,
      numKvHeads: 2,
      kvDtype: 'float16',
      positionIds: false,
      layout: 'merged',
      externalData: true,
      chatTemplate: null,
    });
  });
  test('parses export variants: stacked KV, a float mask, repeated quirks', () => {
    const { options } = parseCliArgs('--family gpt2 --out /tmp/g --stacked-kv --float-mask --quirk no-multi-token-past --quirk no-batch'.split(' '));
    assert.deepEqual(options, { family: 'gpt2', kvPacking: 'stacked', maskDtype: 'float32', quirks: ['no-multi-token-past', 'no-batch'] });
    assert.throws(() => parseCliArgs('--family gpt2 --out /tmp/g --quirk slow'.split(' ')), /--quirk: one of no-multi-token-past/);
  });
  test('rejects bad input', () => {
    assert.throws(() => parseCliArgs(['--out', '/tmp/x']));
    assert.throws(() => parseCliArgs(['--family', 'gpt2']));
    assert.throws(() => parseCliArgs(['--family', 'gpt2', '--out', '/tmp/x', '--kv-dtype', 'int8']));
    assert.throws(() => parseCliArgs(['--family', 'gpt2', '--out', '/tmp/x', '--bogus']));
  });
});

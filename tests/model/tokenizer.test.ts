import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DEFAULT_CHAT_TEMPLATE } from '../../tools/model-builder/index.ts';
import { readModelFolder, TextTokenizer } from '../../src/model/index.ts';
import { LLAMA, testModelDir } from '../support/fixtures.ts';

async function builderTokenizer(options = LLAMA): Promise<TextTokenizer> {
  const folder = readModelFolder(await testModelDir(options));
  return new TextTokenizer(folder.tokenizerJson, folder.tokenizerConfig);
}

describe('TextTokenizer on a builder folder', () => {
  test('special ids, size, bos/eos tokens and chat template', async () => {
    const tokenizer = await builderTokenizer();
    assert.equal(tokenizer.size, 659, '256 bytes + 400 merges + 3 specials');
    assert.deepEqual([...tokenizer.specialTokenIds].sort((a, b) => a - b), [656, 657, 658]);
    assert.equal(tokenizer.tokenToId('<|endoftext|>'), 656);
    assert.equal(tokenizer.tokenToId('<|im_start|>'), 657);
    assert.equal(tokenizer.tokenToId('<|im_end|>'), 658);
    assert.equal(tokenizer.tokenToId('definitely-not-a-token'), undefined);
    assert.equal(tokenizer.bosToken, '<|endoftext|>');
    assert.equal(tokenizer.eosToken, '<|endoftext|>');
    assert.equal(tokenizer.chatTemplate, DEFAULT_CHAT_TEMPLATE);
  });

  test('a padded vocabulary does not change the tokenizer size', async () => {
    const tokenizer = await builderTokenizer({ ...LLAMA, vocabSize: 700 });
    assert.equal(tokenizer.size, 659);
  });

  test('no chat template -> null; a named template list -> the "default" one', async () => {
    const folder = readModelFolder(await testModelDir({ ...LLAMA, chatTemplate: null }));
    assert.equal(new TextTokenizer(folder.tokenizerJson, folder.tokenizerConfig).chatTemplate, null);
    const named = new TextTokenizer(folder.tokenizerJson, {
      ...folder.tokenizerConfig,
      chat_template: [
        { name: 'tool_use', template: 'TOOLS' },
        { name: 'default', template: 'DEFAULT' },
      ],
    });
    assert.equal(named.chatTemplate, 'DEFAULT');
    const object = new TextTokenizer(folder.tokenizerJson, { ...folder.tokenizerConfig, bos_token: { content: '<s>', special: true } });
    assert.equal(object.bosToken, '<s>');
  });

  test('encode/decode round trip on ASCII, accents, CJK, emoji and whitespace', async () => {
    const tokenizer = await builderTokenizer();
    for (const text of ['The quick brown fox.', 'café naïve résumé', '日本語のテキスト', 'emoji 😀👍🏽👨‍👩‍👧 done', '  two  spaces\n\ttab']) {
      const ids = tokenizer.encode(text);
      assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < tokenizer.size), 'ids.every((id) => Number.isInteger(id) && id >= 0 && id <...');
      assert.equal(tokenizer.decode(ids), text, JSON.stringify(text));
    }
    // Merges make common English shorter than its bytes.
    assert.ok(tokenizer.encode('the and of the').length < 'the and of the'.length, 'tokenizer.encode(\'the and of the\').length < \'the and of t...');
  });

  test('the empty string encodes to no ids, and no ids decode to the empty string', async () => {
    const tokenizer = await builderTokenizer();
    assert.deepEqual(tokenizer.encode(''), []);
    assert.equal(tokenizer.decode([]), '');
  });

  test('special tokens in text are single ids; skipSpecialTokens drops them from decode', async () => {
    const tokenizer = await builderTokenizer();
    const ids = tokenizer.encode('<|im_start|>user\nhi<|im_end|>');
    assert.equal(ids[0], 657);
    assert.equal(ids[ids.length - 1], 658);
    assert.equal(ids.filter((id) => tokenizer.specialTokenIds.has(id)).length, 2);
    assert.equal(tokenizer.decode(ids), 'user\nhi');
    assert.equal(tokenizer.decode(ids, true), 'user\nhi');
    assert.equal(tokenizer.decode(ids, false), '<|im_start|>user\nhi<|im_end|>');
    // The builder tokenizer adds no BOS/EOS by itself.
    assert.deepEqual(tokenizer.encode('hi', true), tokenizer.encode('hi', false));
  });

  test('decoding half of a multi-byte character gives U+FFFD', async () => {
    const tokenizer = await builderTokenizer();
    // Single byte-symbol tokens: find the ids of the bytes of "é" (0xC3 0xA9) by encoding it alone.
    const ids = tokenizer.encode('é');
    assert.ok(ids.length >= 1, 'ids.length >= 1');
    if (ids.length === 2) {
      assert.equal(tokenizer.decode([ids[0]]), '\uFFFD');
      assert.equal(tokenizer.decode(ids), 'é');
    }
    const cjk = tokenizer.encode('語');
    assert.equal(tokenizer.decode(cjk.slice(0, -1)).endsWith('\uFFFD'), true);
  });
});

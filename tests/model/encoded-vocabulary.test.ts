/** The vocabulary handed to the grammar engine must name exactly the bytes each token decodes to. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { TextTokenizer } from '../../src/model/tokenizer.ts';
import { GPT2, LLAMA, testModel } from '../support/fixtures.ts';

/** GPT-2's byte-to-character alphabet, inverted: the byte each character of a byte-level token stands for. */
function byteLevelDecoder(): Map<string, number> {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const char = printable.includes(b) ? b : 256 + extra++;
    map.set(String.fromCodePoint(char), b);
  }
  return map;
}

function checkRoundTrip(tokenizer: TextTokenizer): void {
  const vocabulary = tokenizer.encodedVocabulary();
  assert.equal(vocabulary.vocabType, 'byte_level');
  assert.equal(vocabulary.encodedTokens.length, tokenizer.size);
  const alphabet = byteLevelDecoder();
  let checked = 0;
  for (let id = 0; id < tokenizer.size; id++) {
    const token = vocabulary.encodedTokens[id];
    assert.notEqual(token, '', `id ${id} has no token`);
    if (tokenizer.specialTokenIds.has(id)) {
      assert.equal(tokenizer.decode([id], false), token);
      continue;
    }
    const bytes = Buffer.from([...token].map((c) => {
      const b = alphabet.get(c);
      assert.notEqual(b, undefined, `id ${id}: ${JSON.stringify(token)} is not in the byte-level alphabet`);
      return b!;
    }));
    // Partial UTF-8 decodes lossily in both, the same way.
    assert.equal(tokenizer.decode([id], false), new TextDecoder().decode(bytes), `id ${id}`);
    assert.equal(tokenizer.tokenToId(token), id);
    checked++;
  }
  assert.ok(checked > 200);
}

test('every token of both builder families maps to its exact bytes', async () => {
  for (const family of [LLAMA, GPT2]) checkRoundTrip((await testModel(family)).tokenizer);
});

test('every token of the committed model maps to its exact bytes', () => {
  const dir = new URL('../../models/warmkv-brown/', import.meta.url);
  const tokenizer = new TextTokenizer(JSON.parse(readFileSync(new URL('tokenizer.json', dir), 'utf8')), JSON.parse(readFileSync(new URL('tokenizer_config.json', dir), 'utf8')));
  checkRoundTrip(tokenizer);
});

test('a sentencepiece tokenizer with byte fallback is read as byte_fallback with a prepended space', () => {
  const tokenizer = new TextTokenizer(
    {
      version: '1.0',
      added_tokens: [{ id: 0, content: '</s>', special: true, single_word: false, lstrip: false, rstrip: false, normalized: false }],
      normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
      pre_tokenizer: null,
      post_processor: null,
      decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
      model: { type: 'BPE', byte_fallback: true, vocab: { '</s>': 0, '<0x0A>': 1, '▁a': 2, a: 3 }, merges: [] },
    },
    {},
  );
  const vocabulary = tokenizer.encodedVocabulary();
  assert.deepEqual(vocabulary, { encodedTokens: ['</s>', '<0x0A>', '▁a', 'a'], vocabType: 'byte_fallback', prependSpace: true });
});

import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { IncrementalDetokenizer, type TokenDecoder } from '../../src/engine/detokenizer.ts';
import { readModelFolder, TextTokenizer } from '../../src/model/index.ts';
import { LLAMA, testModelDir } from '../support/fixtures.ts';

let tokenizer: TextTokenizer;
before(async () => {
  const folder = readModelFolder(await testModelDir(LLAMA));
  tokenizer = new TextTokenizer(folder.tokenizerJson, folder.tokenizerConfig);
});

const TEXTS = [
  'Hello, world! The quick brown fox.',
  'café crème brûlée, naïve façade — ½ × ø',
  '日本語のテキストと中文字符，한국어도.',
  'emoji: 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷 party 🎉🎉',
  'mixed: Ωλφα Кириллица عربى עברית 東京 🚀 done\n\tnext line',
  '  leading spaces and trailing  ',
];

function stream(detokenizer: IncrementalDetokenizer, ids: readonly number[]): { deltas: string[]; final: string } {
  const deltas = ids.map((id) => detokenizer.push(id));
  return { deltas, final: detokenizer.flush() };
}

describe('IncrementalDetokenizer with the builder tokenizer', () => {
  test('the builder splits emoji and CJK characters across tokens (so the tests below exercise held bytes)', () => {
    let partial = 0;
    for (const text of TEXTS) {
      const ids = tokenizer.encode(text);
      for (let i = 1; i < ids.length; i++) if (tokenizer.decode(ids.slice(0, i)).endsWith('\uFFFD')) partial++;
    }
    assert.ok(partial > 10, `${partial} token prefixes end inside a character`);
  });

  test('streaming one token at a time: push() deltas + flush() equal decode(all), with no U+FFFD in any delta', () => {
    const prompt = tokenizer.encode('Prompt: translate this.');
    for (const text of TEXTS) {
      const ids = tokenizer.encode(text);
      const { deltas, final } = stream(new IncrementalDetokenizer(tokenizer, prompt), ids);
      assert.equal(deltas.join('') + final, tokenizer.decode(ids), JSON.stringify(text));
      assert.equal(deltas.join('') + final, text);
      for (const delta of deltas) assert.ok(!delta.includes('\uFFFD'), `delta ${JSON.stringify(delta)} of ${JSON.stringify(text)}`);
      assert.equal(final, '', 'valid text leaves nothing held at the end');
    }
  });

  test('each delta is emitted as soon as its characters are complete', () => {
    const prompt = tokenizer.encode('x');
    const text = '東京 🎉 ok';
    const ids = tokenizer.encode(text);
    const detokenizer = new IncrementalDetokenizer(tokenizer, prompt);
    let emitted = '';
    for (let i = 0; i < ids.length; i++) {
      emitted += detokenizer.push(ids[i]);
      const decoded = tokenizer.decode(ids.slice(0, i + 1));
      // Everything up to the last complete character is out.
      const complete = decoded.endsWith('\uFFFD') ? decoded.replace(/\uFFFD+$/, '') : decoded;
      assert.equal(emitted, complete, `after token ${i}`);
    }
  });

  test('a stream that ends inside a character releases the bytes at flush (as U+FFFD)', () => {
    const ids = tokenizer.encode('ab🎉');
    const cut = ids.slice(0, -1);
    assert.ok(tokenizer.decode(cut).endsWith('\uFFFD'), 'the cut ends inside the emoji');
    const { deltas, final } = stream(new IncrementalDetokenizer(tokenizer, tokenizer.encode('x')), cut);
    assert.equal(deltas.join(''), 'ab');
    assert.equal(deltas.join('') + final, tokenizer.decode(cut));
    assert.match(final, /\uFFFD$/);
  });

  test('special tokens are skipped in the stream and the text around them is intact', () => {
    const ids = [...tokenizer.encode('Hi 😀'), 658, ...tokenizer.encode(' there')];
    const { deltas, final } = stream(new IncrementalDetokenizer(tokenizer, tokenizer.encode('x')), ids);
    assert.equal(deltas.join('') + final, 'Hi 😀 there');
  });

  test('a prompt ending mid-character as context does not leak into the output', () => {
    const promptIds = tokenizer.encode('東京');
    const context = promptIds.slice(0, -1); // ends inside the last character
    const ids = tokenizer.encode(' and more');
    const { deltas, final } = stream(new IncrementalDetokenizer(tokenizer, context), ids);
    const out = deltas.join('') + final;
    // The output is what the new tokens add to the context's decoding.
    assert.equal(tokenizer.decode([...context, ...ids]).endsWith(out), true, JSON.stringify(out));
    assert.match(out, / and more$/);
  });

  test(
    'without a prompt context, streaming still works with the real tokenizer',
    () => {
      const ids = tokenizer.encode('plain 😀 text');
      const { deltas, final } = stream(new IncrementalDetokenizer(tokenizer), ids);
      assert.equal(deltas.join('') + final, 'plain 😀 text');
    },
  );
});

/**
 * A SentencePiece-like decoder: "▁" marks a space, and the decoded text drops one leading space
 * (as the Metaspace decoder does), so a word's leading space only shows after some context.
 */
class MetaspaceDecoder implements TokenDecoder {
  constructor(private readonly pieces: string[]) {}
  decode(ids: readonly number[]): string {
    const text = ids.map((id) => this.pieces[id]).join('').replaceAll('▁', ' ');
    return text.startsWith(' ') ? text.slice(1) : text;
  }
}

describe('IncrementalDetokenizer context and leading spaces', () => {
  const pieces = ['▁Hello', '▁world', ',', '▁how', '▁are', '▁you', '?'];
  const decoder = new MetaspaceDecoder(pieces);

  test('with the prompt as context, the first output word keeps its leading space', () => {
    const prompt = [0]; // "Hello"
    const { deltas, final } = stream(new IncrementalDetokenizer(decoder, prompt), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(deltas, [' world', ',', ' how', ' are', ' you', '?']);
    assert.equal(final, '');
    assert.equal(deltas.join(''), decoder.decode([0, 1, 2, 3, 4, 5, 6]).slice('Hello'.length));
  });

  test('without context the first word loses its space (the start of a text), later words keep theirs', () => {
    const { deltas } = stream(new IncrementalDetokenizer(decoder), [1, 3]);
    assert.deepEqual(deltas, ['world', ' how']);
  });

  test('only the last few prompt tokens are used as context', () => {
    const calls: number[][] = [];
    const spy: TokenDecoder = {
      decode: (ids) => {
        calls.push([...ids]);
        return decoder.decode(ids);
      },
    };
    const longPrompt = [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5];
    const detokenizer = new IncrementalDetokenizer(spy, longPrompt);
    assert.equal(detokenizer.push(6), '?');
    assert.ok(calls.every((ids) => ids.length <= 6), `decoded windows: ${calls.map((c) => c.length).join(',')}`);
    // Later pushes decode a short window, not the whole history.
    for (let i = 0; i < 50; i++) detokenizer.push(i % 7);
    assert.ok(calls.slice(-2).every((ids) => ids.length <= 3), `last windows: ${calls.slice(-2).map((c) => c.length).join(',')}`);
  });
});

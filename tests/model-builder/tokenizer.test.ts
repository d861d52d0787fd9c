import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';
import { buildModelFolder, type BuiltModelInfo } from '../../tools/model-builder/index.ts';
import { mulberry32 } from '../../tools/model-builder/rng.ts';

let root: string;
let info: BuiltModelInfo;
let tok: Tokenizer;
let tokJson: Record<string, any>;
let tokCfg: Record<string, any>;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'warmkv-tokenizer-'));
  info = await buildModelFolder(join(root, 'm'), { family: 'llama', vocabSize: 800 });
  tokJson = JSON.parse(await readFile(join(info.dir, 'tokenizer.json'), 'utf8'));
  tokCfg = JSON.parse(await readFile(join(info.dir, 'tokenizer_config.json'), 'utf8'));
  tok = new Tokenizer(tokJson, tokCfg);
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Random strings mixing ASCII, Latin-1 accents, combining marks, CJK, emoji (astral + ZWJ), whitespace. */
function randomText(seed: number, n: number): string {
  const u = mulberry32(seed);
  const pools = [
    'abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ 0123456789 .,;:!?\'"()-_/\\@#$%^&*',
    'éèêëàâäôöûüçñßøåæœÉÀÇ',
    '\u0301\u0308\u0327',
    '日本語中文字漢字한국어テキスト',
    '😀👍🏽👨‍👩‍👧🎉🚀❤️🇫🇷',
    ' \t\n\r  \n\n',
    'Ωλφαβγδ Кириллица عربى עברית',
  ];
  let s = '';
  for (let i = 0; i < n; i++) {
    const pool = Array.from(pools[Math.floor(u() * pools.length)]);
    s += pool[Math.floor(u() * pool.length)];
  }
  return s;
}

describe('tokenizer', () => {
  test('byte-level BPE layout: 256 byte symbols, learned merges, three specials', () => {
    assert.equal(tokJson.model.type, 'BPE');
    assert.equal(tokJson.pre_tokenizer.type, 'ByteLevel');
    assert.equal(tokJson.pre_tokenizer.add_prefix_space, false);
    assert.equal(tokJson.pre_tokenizer.use_regex, true);
    assert.equal(tokJson.decoder.type, 'ByteLevel');
    assert.ok(tokJson.model.merges.length >= 300, 'a few hundred merges');
    const ids = Object.values(tokJson.model.vocab as Record<string, number>).sort((a, b) => a - b);
    assert.deepEqual(ids, Array.from({ length: ids.length }, (_, i) => i), 'ids are 0..n-1 without gaps');
    assert.equal(ids.length, info.tokenizerSize);
    assert.deepEqual(
      tokJson.added_tokens.map((t: { content: string; id: number; special: boolean }) => [t.content, t.id, t.special]),
      [
        ['<|endoftext|>', info.specialTokenIds.endoftext, true],
        ['<|im_start|>', info.specialTokenIds.imStart, true],
        ['<|im_end|>', info.specialTokenIds.imEnd, true],
      ],
    );
    assert.equal(info.vocabSize, 800);
    assert.ok(info.tokenizerSize < 800);
  });

  test('tokenizer_config, special_tokens_map and generation_config', async () => {
    for (const k of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) assert.equal(tokCfg[k], '<|endoftext|>');
    assert.equal(tokCfg.model_max_length, 1024);
    assert.equal(typeof tokCfg.tokenizer_class, 'string');
    assert.equal(tokCfg.clean_up_tokenization_spaces, false);
    const stm = JSON.parse(await readFile(join(info.dir, 'special_tokens_map.json'), 'utf8'));
    assert.equal(stm.eos_token, '<|endoftext|>');
    const gen = JSON.parse(await readFile(join(info.dir, 'generation_config.json'), 'utf8'));
    assert.equal(gen.bos_token_id, info.specialTokenIds.endoftext);
    assert.deepEqual(gen.eos_token_id, [info.specialTokenIds.endoftext, info.specialTokenIds.imEnd]);
    assert.equal(gen.do_sample, false);
    const noTpl = await buildModelFolder(join(root, 'notpl'), { family: 'gpt2', chatTemplate: null });
    const cfg2 = JSON.parse(await readFile(join(noTpl.dir, 'tokenizer_config.json'), 'utf8'));
    assert.equal('chat_template' in cfg2, false);
    assert.equal(cfg2.tokenizer_class, 'GPT2Tokenizer');
  });

  test('round trips fixed and random text (multi-byte UTF-8)', () => {
    const fixed = [
      'Hello world! The model keeps the cache warm.',
      'héllo wörld, ça va? naïve façade Ångström',
      '日本語のテキストと中文',
      'emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷',
      '  leading and trailing spaces  ',
      'tabs\tand\nnewlines\r\n\n',
      "it's we're they've I'm you'll he'd",
      '<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n',
      'numbers 3.14159 2025-06-06 1,000,000',
      '',
    ];
    for (const s of fixed) {
      if (s === '') {
        assert.deepEqual(tok.encode(s).ids, []);
        continue;
      }
      assert.equal(tok.decode(tok.encode(s).ids), s, JSON.stringify(s));
    }
    for (let seed = 1; seed <= 200; seed++) {
      const s = randomText(seed, 1 + (seed % 40));
      const ids = tok.encode(s).ids;
      assert.ok(ids.every((i: number) => i >= 0 && i < info.tokenizerSize));
      assert.equal(tok.decode(ids), s, `seed ${seed}: ${JSON.stringify(s)}`);
    }
  });

  test('merges compress English; special tokens are single ids', () => {
    const text = 'The user asks a question, and the assistant answers with the next token.';
    const ids = tok.encode(text).ids;
    assert.ok(ids.length < new TextEncoder().encode(text).length / 2.5, `${ids.length} tokens`);
    assert.deepEqual(tok.encode('<|im_start|>').ids, [info.specialTokenIds.imStart]);
    assert.deepEqual(tok.encode('<|im_end|>').ids, [info.specialTokenIds.imEnd]);
    assert.deepEqual(tok.encode('<|endoftext|>').ids, [info.specialTokenIds.endoftext]);
    assert.equal(tok.decode([info.specialTokenIds.imEnd], { skip_special_tokens: true }), '');
  });

  test('partial multi-byte sequences decode to U+FFFD; padded vocab ids decode to nothing', () => {
    const ids = tok.encode('😀').ids;
    assert.ok(ids.length > 1, 'emoji is split into byte tokens');
    assert.equal(tok.decode(ids.slice(0, 1)), '\uFFFD');
    assert.equal(tok.decode(ids), '😀');
    assert.equal(tok.decode([info.tokenizerSize + 5]), '');
  });

  test('default chat template (ChatML) renders with @huggingface/jinja', () => {
    const out = new Template(tokCfg.chat_template).render({
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi!' },
      ],
      add_generation_prompt: true,
    });
    assert.equal(out, '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n');
    const ids = tok.encode(out).ids;
    assert.equal(ids[0], info.specialTokenIds.imStart);
    assert.equal(tok.decode(ids), out);
  });
});

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildModelBytes, buildModelFolder, type BuildOptions, type ResolvedOptions } from '../../tools/model-builder/index.ts';
import { emptyPast, logitsRow, maxAbsDiff, ort, step } from './helpers.ts';

let root: string;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'warmkv-quirks-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function open(name: string, options: BuildOptions): Promise<{ session: ort.InferenceSession; o: ResolvedOptions }> {
  const info = await buildModelFolder(join(root, name), options);
  const session = await ort.InferenceSession.create(info.onnxPath, { intraOpNumThreads: 1 });
  return { session, o: info.options };
}

const PROMPT = [5, 17, 42, 9, 77, 31];
const ones = (n: number) => Array.from({ length: n }, () => 1);
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

describe('export quirks (bare onnxruntime)', () => {
  test('no-multi-token-past: one-shot and one-token steps work and are exact; a multi-token step over a past fails in Expand', async () => {
    const plain = await open('plain', { family: 'llama', kvDtype: 'float16' });
    const quirky = await open('mtp', { family: 'llama', kvDtype: 'float16', quirks: ['no-multi-token-past'] });
    const V = plain.o.vocabSize;
    const full = await step(plain.session, plain.o, [PROMPT], [ones(6)], [range(0, 6)], emptyPast(plain.o, 1));
    const oneShot = await step(quirky.session, quirky.o, [PROMPT], [ones(6)], [range(0, 6)], emptyPast(quirky.o, 1));
    assert.ok(maxAbsDiff(full.logits, oneShot.logits) < 1e-5, 'empty past: same as the plain graph');
    // One token at a time over a growing past: exact.
    let r = await step(quirky.session, quirky.o, [PROMPT.slice(0, 4)], [ones(4)], [range(0, 4)], emptyPast(quirky.o, 1));
    for (let i = 4; i < 6; i++) r = await step(quirky.session, quirky.o, [[PROMPT[i]]], [ones(i + 1)], [[i]], r.present);
    assert.ok(maxAbsDiff(logitsRow(r.logits, 1, V, 0, 0), logitsRow(full.logits, 6, V, 0, 5)) < 2e-3);
    // Two tokens over a past of four: the export's mask subgraph cannot do it.
    const first = await step(quirky.session, quirky.o, [PROMPT.slice(0, 4)], [ones(4)], [range(0, 4)], emptyPast(quirky.o, 1));
    await assert.rejects(step(quirky.session, quirky.o, [PROMPT.slice(4)], [ones(6)], [range(4, 6)], first.present), /expand/i);
    // The plain graph can.
    const p1 = await step(plain.session, plain.o, [PROMPT.slice(0, 4)], [ones(4)], [range(0, 4)], emptyPast(plain.o, 1));
    await step(plain.session, plain.o, [PROMPT.slice(4)], [ones(6)], [range(4, 6)], p1.present);
    await Promise.all([plain.session.release(), quirky.session.release()]);
  });

  test('no-batch: batch 1 works, batch 2 fails', async () => {
    const { session, o } = await open('nobatch', { family: 'llama', quirks: ['no-batch'] });
    await step(session, o, [PROMPT], [ones(6)], [range(0, 6)], emptyPast(o, 1));
    await assert.rejects(step(session, o, [PROMPT, PROMPT], [ones(6), ones(6)], [range(0, 6), range(0, 6)], emptyPast(o, 2)));
    await session.release();
  });

  test('right-padding-only: a left-padded row runs but gives other logits than the same row alone', async () => {
    const { session, o } = await open('rpad', { family: 'llama', quirks: ['right-padding-only'] });
    const V = o.vocabSize;
    const alone = await step(session, o, [PROMPT.slice(2)], [ones(4)], [range(0, 4)], emptyPast(o, 1));
    const padded = await step(session, o, [[0, 0, ...PROMPT.slice(2)]], [[0, 0, 1, 1, 1, 1]], [[0, 0, 0, 1, 2, 3]], emptyPast(o, 1));
    assert.ok(maxAbsDiff(logitsRow(alone.logits, 4, V, 0, 3), logitsRow(padded.logits, 6, V, 0, 5)) > 1e-2);
    await session.release();
  });

  test('quirks are validated and recorded in config.json', () => {
    assert.throws(() => buildModelBytes({ family: 'llama', quirks: ['nope' as never] }), /unknown quirk/);
    const m = buildModelBytes({ family: 'gpt2', quirks: ['no-batch', 'no-batch'] });
    assert.deepEqual((m.config.warmkv_test_model as { export_quirks: string[] }).export_quirks, ['no-batch']);
  });
});

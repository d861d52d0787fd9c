import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { Logger } from '../../src/lib/logger.ts';
import { OnnxDecoder } from '../../src/model/index.ts';
import { calibrateThreads, probeStep, threadCandidates } from '../../src/model/thread-calibration.ts';
import { GPT2, LLAMA, testModelDir } from '../support/fixtures.ts';
import { wrapDecoder } from '../support/test-decoder.ts';

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

/** Opens the real test model once per call; a decoder "at N threads" sleeps `delays[N]` ms per decode step. */
async function opener(delays: Record<number, number>) {
  const path = join(await testModelDir(LLAMA), 'onnx', 'model.onnx');
  const opened: number[] = [];
  const disposed: number[] = [];
  const open = async (threads: number) => {
    opened.push(threads);
    const inner = await OnnxDecoder.load(path, {}, { executionProvider: 'cpu', fallbackToCpu: false, intraOpThreads: 1, logger: quiet });
    const decoder = wrapDecoder(inner, { decodeDelayMs: delays[threads] });
    const dispose = decoder.dispose.bind(decoder);
    decoder.dispose = async () => {
      disposed.push(threads);
      await dispose();
    };
    return decoder;
  };
  return { open, opened, disposed };
}

describe('intra-op thread calibration', () => {
  test('candidates double from 1 up to the cores, ending at the core count', () => {
    assert.deepEqual(threadCandidates(1), [1]);
    assert.deepEqual(threadCandidates(2), [1, 2]);
    assert.deepEqual(threadCandidates(6), [1, 2, 4, 6]);
    assert.deepEqual(threadCandidates(8), [1, 2, 4, 8]);
  });

  test('keeps the fastest count, stops climbing at the first doubling that does not pay, and releases the rest', async () => {
    const { open, opened, disposed } = await opener({ 1: 40, 2: 6, 4: 30, 8: 1 });
    const choice = await calibrateThreads(open, 8);
    try {
      assert.equal(choice.threads, 2);
      assert.deepEqual(opened, [1, 2, 4], 'eight threads are never tried once four lost');
      assert.deepEqual(disposed.sort(), [1, 4]);
      assert.ok(choice.stepMs[1] > choice.stepMs[2], JSON.stringify(choice.stepMs));
      // The kept decoder still computes.
      const out = await choice.decoder.run(probeStep(choice.decoder.io.kv, 3));
      assert.ok(Array.from(out.logits).every(Number.isFinite));
    } finally {
      await choice.decoder.dispose();
    }
  });

  test('a slower doubling keeps one thread and tries no more', async () => {
    const { open, opened, disposed } = await opener({ 1: 6, 2: 40, 4: 1 });
    const choice = await calibrateThreads(open, 4);
    try {
      assert.equal(choice.threads, 1);
      assert.deepEqual(opened, [1, 2]);
      assert.deepEqual(disposed, [2]);
    } finally {
      await choice.decoder.dispose();
    }
  });

  test('one core: no calibration, no probe steps', async () => {
    const { open, opened } = await opener({ 1: 0 });
    const choice = await calibrateThreads(open, 1);
    try {
      assert.equal(choice.threads, 1);
      assert.deepEqual(opened, [1]);
      assert.deepEqual(choice.stepMs, {});
    } finally {
      await choice.decoder.dispose();
    }
  });

  test('OnnxDecoder.load without intraOpThreads calibrates and logs the choice; with it, uses it as given', { skip: availableParallelism() < 2 ? 'needs 2 cores' : false }, async () => {
    const path = join(await testModelDir(GPT2), 'onnx', 'model.onnx');
    const logs: Array<{ fields: Record<string, unknown>; message: string }> = [];
    const logger: Logger = { ...quiet, info: (fields, message) => logs.push({ fields, message }), child: () => logger };
    const calibrated = await OnnxDecoder.load(path, {}, { executionProvider: 'cpu', fallbackToCpu: false, logger });
    try {
      const loaded = logs.find((l) => l.message === 'decoder loaded')!;
      assert.equal(loaded.fields.threadsCalibrated, true);
      assert.equal(loaded.fields.threads, calibrated.intraOpThreads);
      assert.ok(threadCandidates(availableParallelism()).includes(calibrated.intraOpThreads));
      const stepMs = loaded.fields.calibrationStepMs as Record<string, number>;
      assert.ok(Object.keys(stepMs).length >= 1 && Object.values(stepMs).every((ms) => ms > 0), JSON.stringify(stepMs));
    } finally {
      await calibrated.dispose();
    }
    logs.length = 0;
    const fixed = await OnnxDecoder.load(path, {}, { executionProvider: 'cpu', fallbackToCpu: false, intraOpThreads: 3, logger });
    try {
      assert.equal(fixed.intraOpThreads, 3);
      const loaded = logs.find((l) => l.message === 'decoder loaded')!;
      assert.equal(loaded.fields.threads, 3);
      assert.equal(loaded.fields.threadsCalibrated, undefined);
    } finally {
      await fixed.dispose();
    }
  });
});

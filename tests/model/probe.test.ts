import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Logger } from '../../src/lib/logger.ts';
import { loadModel, probeCapabilities, UnsupportedModelError } from '../../src/model/index.ts';
import type { BuildOptions } from '../../tools/model-builder/index.ts';
import { testModel, testModelDir } from '../support/fixtures.ts';
import { wrapDecoder } from '../support/test-decoder.ts';

const GENAI_LIKE: BuildOptions = { family: 'llama', seed: 7, kvDtype: 'float16', externalData: true, quirks: ['no-multi-token-past'] };

function recordingLogger(lines: Array<{ fields: Record<string, unknown>; message: string }>): Logger {
  const logger: Logger = {
    debug: () => {},
    info: (fields, message) => lines.push({ fields, message }),
    warn: () => {},
    error: () => {},
    child: () => logger,
  };
  return logger;
}

describe('capability probe at load', () => {
  test('a plain builder model can do everything', async () => {
    const model = await testModel({ family: 'llama', seed: 7 });
    assert.deepEqual(model.capabilities, { multiTokenOverPast: true, batched: true, leftPadding: true });
    const gpt2 = await testModel({ family: 'gpt2', seed: 7, kvDtype: 'float16', logitsDtype: 'float16' });
    assert.deepEqual(gpt2.capabilities, { multiTokenOverPast: true, batched: true, leftPadding: true });
  });

  test('each export quirk shows as exactly its capability, with a reason', async () => {
    const cases: Array<[BuildOptions['quirks'], keyof typeof expected, RegExp]> = [
      [['no-multi-token-past'], 'multiTokenOverPast', /expand/i],
      [['no-batch'], 'batched', /Non-zero status code/],
      [['right-padding-only'], 'leftPadding', /logits differ/],
    ];
    const expected = { multiTokenOverPast: true, batched: true, leftPadding: true };
    for (const [quirks, capability, reason] of cases) {
      const model = await testModel({ family: 'llama', seed: 7, quirks });
      assert.deepEqual(model.capabilities, { ...expected, [capability]: false }, String(quirks));
      const report = await probeCapabilities(model.decoder);
      assert.deepEqual(Object.keys(report.reasons), [capability]);
      assert.match(report.reasons[capability]!, reason);
    }
  });

  test('the load logs one info line with the booleans and the probe time', async () => {
    const lines: Array<{ fields: Record<string, unknown>; message: string }> = [];
    const model = await loadModel(await testModelDir(GENAI_LIKE), { logger: recordingLogger(lines), intraOpThreads: 1 });
    try {
      const probed = lines.filter((l) => l.message === 'model capabilities probed');
      assert.equal(probed.length, 1);
      const { fields } = probed[0];
      assert.equal(fields.multiTokenOverPast, false);
      assert.equal(fields.batched, true);
      assert.equal(fields.leftPadding, true);
      assert.equal(typeof fields.probeMs, 'number');
      assert.match((fields.reasons as Record<string, string>).multiTokenOverPast, /invalid expand shape/);
    } finally {
      await model.decoder.dispose();
    }
  });

  test('a model that cannot run a prompt at all is refused with a clear error', async () => {
    const model = await testModel({ family: 'llama', seed: 7 });
    const broken = wrapDecoder(model.decoder, { failWhen: () => true, faultMessage: 'kernel exploded' });
    await assert.rejects(probeCapabilities(broken), (error: unknown) => error instanceof UnsupportedModelError && /4-token prompt.*kernel exploded/.test(error.message));
  });
});

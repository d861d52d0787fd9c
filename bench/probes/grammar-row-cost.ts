/**
 * Per-row cost of constrained decoding, alone: getNextTokenBitmask, the mask over one row of logits, and
 * acceptToken, on a model's vocabulary (for bench/constrained's 150k-vocabulary row).
 *
 *   node --import tsx bench/probes/grammar-row-cost.ts MODEL_DIR
 */
import { performance } from 'node:perf_hooks';
import { GrammarService } from '../../src/engine/grammar.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { loadModel } from '../../src/model/index.ts';

const dir = process.argv[2];
const model = await loadModel(dir, { logger: silentLogger, intraOpThreads: 1 });
const service = new GrammarService(model.tokenizer.encodedVocabulary(), model.vocabSize, [0]);
const schema = { type: 'object', properties: { lines: { type: 'array', items: { type: 'string' }, minItems: 64 } }, required: ['lines'], additionalProperties: false };
const made = await service.constraint({ kind: 'json_schema', schema });
if (!made.ok) throw new Error(made.error.message);
const constraint = made.constraint;
const logits = new Float32Array(model.vocabSize).map(() => Math.random());
const out = new Float32Array(model.vocabSize);
let prepareMs = 0;
let maskMs = 0;
let acceptMs = 0;
const steps = 200;
for (let i = 0; i < steps; i++) {
  let t = performance.now();
  await constraint.prepare();
  prepareMs += performance.now() - t;
  t = performance.now();
  constraint.mask(logits, out);
  maskMs += performance.now() - t;
  let best = 0;
  for (let id = 1; id < out.length; id++) if (out[id] > out[best]) best = id;
  t = performance.now();
  if (!constraint.accept(best)) throw new Error('rejected');
  acceptMs += performance.now() - t;
}
console.log(JSON.stringify({ vocab: model.vocabSize, tokenizerIds: model.tokenizer.encodedVocabulary().encodedTokens.length, perRowMs: { prepare: prepareMs / steps, mask: maskMs / steps, accept: acceptMs / steps } }));

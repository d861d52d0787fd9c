/**
 * The memory floor for `npm run bench -- overhead`: a bare onnxruntime-node greedy loop in its own
 * process that holds the same caches the server holds after the benchmark (one per streaming client
 * and the warm session), then prints its peak RSS as JSON on stdout.
 *
 *   node --import tsx bench/probes/bare-rss.ts --model DIR --threads N --prompt ID,ID,... --tokens N --caches N
 */
import { parseArgs } from 'node:util';
import { silentLogger } from '../../src/lib/logger.ts';
import { loadModel, type KvTensors } from '../../src/model/index.ts';
import { emptyKv, forward, lastArgmax } from '../common.ts';

const { values } = parseArgs({
  options: { model: { type: 'string' }, threads: { type: 'string', default: '1' }, prompt: { type: 'string' }, tokens: { type: 'string', default: '128' }, caches: { type: 'string', default: '9' } },
});
const model = await loadModel(values.model!, { logger: silentLogger, intraOpThreads: Number(values.threads) });
const prompt = values.prompt!.split(',').map(Number);
const kept: KvTensors[] = [];
for (let c = 0; c < Number(values.caches); c++) {
  let out = await forward(model.decoder, prompt, emptyKv(model.decoder.io.kv, 1));
  let next = lastArgmax(out.logits as Float32Array, prompt.length, model.vocabSize);
  for (let i = 1; i < Number(values.tokens); i++) {
    out = await forward(model.decoder, [next], out.present);
    next = lastArgmax(out.logits as Float32Array, 1, model.vocabSize);
  }
  kept.push(out.present);
}
console.log(JSON.stringify({ maxRssMiB: Math.round(((process.resourceUsage().maxRSS * 1024) / 1024 ** 2) * 10) / 10, caches: kept.length }));

/**
 * The memory floor for `npm run bench -- overhead`: a bare onnxruntime-node greedy loop in its own
 * process that does the work the server does (a `--warm`-token prefill and its follow-up, as the warm
 * session; one cache per streaming client) and holds the same caches, then prints its peak RSS as JSON
 * on stdout. Without the long prefill the floor would miss what onnxruntime's arena takes for it.
 *
 *   node --import tsx bench/probes/bare-rss.ts --model DIR --threads N --prompt ID,ID,... --tokens N --caches N [--warm ID,ID,... --follow ID,ID,...]
 */
import { parseArgs } from 'node:util';
import { silentLogger } from '../../src/lib/logger.ts';
import { loadModel, type KvTensors } from '../../src/model/index.ts';
import { emptyKv, forward, lastArgmax } from '../bare-loop.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    threads: { type: 'string', default: '1' },
    prompt: { type: 'string' },
    tokens: { type: 'string', default: '128' },
    caches: { type: 'string', default: '9' },
    warm: { type: 'string', default: '' },
    follow: { type: 'string', default: '' },
  },
});
const model = await loadModel(values.model!, { logger: silentLogger, intraOpThreads: Number(values.threads) });
const prompt = values.prompt!.split(',').map(Number);
const kept: KvTensors[] = [];
const ids = (list: string) => list.split(',').filter(Boolean).map(Number);
if (values.warm) {
  const past = (await forward(model.decoder, ids(values.warm), emptyKv(model.decoder.io.kv, 1))).present;
  kept.push(values.follow ? (await forward(model.decoder, ids(values.follow), past)).present : past);
}
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

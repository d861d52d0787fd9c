/**
 * Garbage-collection pauses in a bare onnxruntime decode loop (the model's `present` fed back as the
 * next `past`, a new output allocation every step), by context length, twice over in one process: the
 * second pass shows the state a long-running server reaches after one long context.
 *
 *   node --import tsx bench/probes/decode-gc.ts [--model DIR] [--threads 2] [--steps 256]
 */
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { benchModel, emptyKv, forward, lastArgmax } from '../common.ts';

const { values } = parseArgs({ options: { model: { type: 'string' }, threads: { type: 'string', default: '2' }, steps: { type: 'string', default: '256' } } });
const steps = Number(values.steps);
let gcMs = 0;
let markCompacts = 0;
let scavenges = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    gcMs += entry.duration;
    const kind = ((entry as { detail?: { kind?: number } }).detail)?.kind;
    if (kind === 4) markCompacts++;
    else if (kind === 1) scavenges++;
  }
}).observe({ entryTypes: ['gc'] });

const { model, source } = await benchModel(values.model, Number(values.threads));
const decoder = model.decoder;
console.log(`model: ${source}; ${steps} decode steps per context`);
for (const pass of [1, 2]) {
  for (const context of [64, 512, 1024, 2048]) {
    const prompt = Array.from({ length: context }, (_, i) => ((i * 131) % 500) + 3);
    let out = await forward(decoder, prompt, emptyKv(decoder.io.kv, 1));
    let token = lastArgmax(out.logits, prompt.length, out.vocabSize);
    const [gc0, mc0, sc0] = [gcMs, markCompacts, scavenges];
    const start = performance.now();
    for (let i = 0; i < steps; i++) {
      out = await forward(decoder, [token], out.present);
      token = lastArgmax(out.logits, 1, out.vocabSize);
    }
    const wall = performance.now() - start;
    const presentMiB = (out.present.length * decoder.io.kv.bytesPerToken) / 2 ** 20;
    console.log(
      `pass ${pass}, context ${context}..${context + steps}: ${((wall / steps) * 1000).toFixed(0)} us/step, ` +
        `GC pauses ${(((gcMs - gc0) / steps) * 1000).toFixed(0)} us/step (${((100 * (gcMs - gc0)) / wall).toFixed(1)} %), ` +
        `${markCompacts - mc0} mark-compacts and ${scavenges - sc0} scavenges; last present ${presentMiB.toFixed(1)} MiB`,
    );
  }
}

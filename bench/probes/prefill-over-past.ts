/**
 * A bare onnxruntime prefill of N new tokens over a past of P tokens (random KV), per past length: what
 * the model itself costs for a warm turn late in a long chain against an early one, with no server;
 * fetching every output (the full present, as a plain loop does) and only the logits.
 *
 *   node --import tsx bench/probes/prefill-over-past.ts DIR [--new 90] [--pasts 109,2054] [--repeats 7] [--threads 2]
 */
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { new: { type: 'string', default: '90' }, pasts: { type: 'string', default: '109,2054' }, repeats: { type: 'string', default: '7' }, threads: { type: 'string', default: '2' } },
});
const dir = positionals[0];
if (!dir) throw new Error('usage: prefill-over-past.ts MODEL_DIR');
const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { num_hidden_layers: number; num_key_value_heads: number; num_attention_heads: number; hidden_size: number; head_dim?: number; vocab_size: number };
const layers = config.num_hidden_layers;
const kvHeads = config.num_key_value_heads;
const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
const session = await ort.InferenceSession.create(join(dir, 'onnx', 'model.onnx'), { intraOpNumThreads: Number(values.threads), interOpNumThreads: 1, graphOptimizationLevel: 'all' });
const newTokens = Number(values.new);
const int64 = (n: number, f: (i: number) => number) => BigInt64Array.from({ length: n }, (_, i) => BigInt(f(i)));
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows: string[] = [];
for (const past of values.pasts.split(',').map(Number)) {
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', int64(newTokens, (i) => 10 + ((i * 7) % (config.vocab_size - 20))), [1, newTokens]),
    attention_mask: new ort.Tensor('int64', int64(past + newTokens, () => 1), [1, past + newTokens]),
  };
  if (session.inputNames.includes('position_ids')) feeds.position_ids = new ort.Tensor('int64', int64(newTokens, (i) => past + i), [1, newTokens]);
  for (let l = 0; l < layers; l++) {
    for (const kind of ['key', 'value']) {
      const data = Float32Array.from({ length: kvHeads * past * headDim }, (_, i) => Math.sin(i * 0.37 + l) * 0.5);
      feeds[`past_key_values.${l}.${kind}`] = new ort.Tensor('float32', data, [1, kvHeads, past, headDim]);
    }
  }
  // All outputs (the full present copied out, as a plain loop does), and logits only (no present copied out).
  const timings: number[][] = [[], []];
  for (let r = -1; r < Number(values.repeats); r++) {
    for (const [k, fetches] of [session.outputNames, ['logits']].entries()) {
      const started = performance.now();
      await session.run(feeds, fetches);
      if (r >= 0) timings[k].push(performance.now() - started);
    }
  }
  rows.push(`| ${past} | ${newTokens} | ${median(timings[0]).toFixed(1)} | ${median(timings[1]).toFixed(1)} |`);
}
console.log('| past tokens | new tokens | all outputs, median ms | logits only, median ms |\n| --- | --- | --- | --- |');
console.log(rows.join('\n'));

// Runs models/<name>/onnx/model.onnx with onnxruntime-node on reference calls written by export.py and
// compares logits with PyTorch. usage: node tools/train/check_onnx.mjs <model.onnx> <cases folder> [tol]
// A call's past is empty (past_sequence_length 0) or the present.* outputs of the previous call.
// Exits 1 when a max abs logits difference exceeds tol, a greedy token differs, or any value is not finite.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';

const [modelPath, folder, tolArg] = process.argv.slice(2);
const tol = Number(tolArg ?? '1e-3');
const index = JSON.parse(readFileSync(join(folder, 'cases.json'), 'utf8'));
const { num_layers: L, num_kv_heads: KVH, head_dim: HD } = index;

function load(ref, kind) {
  const buf = readFileSync(join(folder, ref.file));
  const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  if (kind === 'int64') return new ort.Tensor('int64', new BigInt64Array(ab), ref.shape);
  return { data: new Float32Array(ab), shape: ref.shape };
}

const session = await ort.InferenceSession.create(modelPath);
const meta = {
  inputs: session.inputMetadata.map((m) => `${m.name}:${m.type}[${m.shape}]`),
  outputs: session.outputMetadata.map((m) => `${m.name}:${m.type}[${m.shape}]`),
};
console.log(`inputs (${meta.inputs.length}): ${meta.inputs.slice(0, 5).join(' ')} ...`);
console.log(`outputs (${meta.outputs.length}): ${meta.outputs.slice(0, 3).join(' ')} ...`);

let worst = 0;
let failures = 0;
const results = [];
for (const c of index.cases) {
  let past = null;
  let caseMax = 0;
  let greedyOk = true;
  let calls = 0;
  for (const call of c.calls) {
    const feeds = {
      input_ids: load(call.input_ids, 'int64'),
      attention_mask: load(call.attention_mask, 'int64'),
      position_ids: load(call.position_ids, 'int64'),
    };
    const B = call.input_ids.shape[0];
    for (let i = 0; i < L; i++) {
      for (const kv of ['key', 'value']) {
        feeds[`past_key_values.${i}.${kv}`] = call.past_from === 'empty'
          ? new ort.Tensor('float32', new Float32Array(0), [B, KVH, 0, HD])
          : past[`present.${i}.${kv}`];
      }
    }
    const out = await session.run(feeds);
    const ref = load(call.logits, 'float32');
    const got = out.logits;
    if (got.dims.join(',') !== ref.shape.join(',')) {
      console.error(`${c.name}: logits shape ${got.dims} != ${ref.shape}`);
      failures++;
      break;
    }
    const T = call.attention_mask.shape[1];
    const pk = out['present.0.key'];
    if (pk.dims.join(',') !== [B, KVH, T, HD].join(',')) {
      console.error(`${c.name}: present.0.key dims ${pk.dims}, expected ${[B, KVH, T, HD]}`);
      failures++;
    }
    const g = got.data;
    for (let j = 0; j < g.length; j++) {
      if (!Number.isFinite(g[j])) { console.error(`${c.name}: non-finite logit`); failures++; break; }
      const d = Math.abs(g[j] - ref.data[j]);
      if (d > caseMax) caseMax = d;
    }
    // greedy token of the last position of every row
    const [b, s, v] = got.dims;
    for (let r = 0; r < b; r++) {
      const off = (r * s + (s - 1)) * v;
      let best = 0;
      for (let k = 1; k < v; k++) if (g[off + k] > g[off + best]) best = k;
      if (best !== call.greedy[r]) greedyOk = false;
    }
    past = out;
    calls++;
  }
  worst = Math.max(worst, caseMax);
  if (caseMax > tol || !greedyOk) failures++;
  results.push({ name: c.name, calls, max_abs_diff: caseMax, greedy_identical: greedyOk });
  console.log(`${c.name}: ${calls} calls, max |logits diff| ${caseMax.toExponential(3)}, greedy ${greedyOk ? 'identical' : 'DIFFERENT'}`);
}
console.log(`RESULT ${JSON.stringify({ max_abs_diff: worst, tol, failures, results })}`);
process.exit(failures ? 1 : 0);

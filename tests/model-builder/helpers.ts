/** Test helpers: run test models built by tools/model-builder with onnxruntime-node. */
import * as ort from 'onnxruntime-node';
import type { ResolvedOptions } from '../../tools/model-builder/index.ts';

export { ort };

/** IEEE half (bits) -> float32 value. */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Tensor data as float32 values (handles float16 tensors returned as Uint16Array). */
export function toF32(t: ort.Tensor): Float32Array {
  if (t.type === 'float32') return t.data as Float32Array;
  if (t.type === 'float16') {
    const d = t.data as unknown as ArrayLike<number>;
    if (d instanceof Uint16Array) return Float32Array.from(d, halfToFloat);
    return Float32Array.from(d);
  }
  throw new Error(`unexpected tensor type ${t.type}`);
}

export type Past = Record<string, ort.Tensor>;

export function emptyPast(o: ResolvedOptions, batch: number): Past {
  const past: Past = {};
  for (let i = 0; i < o.numLayers; i++) {
    for (const kind of ['key', 'value']) {
      const dims = [batch, o.numKvHeads, 0, o.headDim];
      past[`past_key_values.${i}.${kind}`] =
        o.kvDtype === 'float16' ? new ort.Tensor('float16', new Uint16Array(0), dims) : new ort.Tensor('float32', new Float32Array(0), dims);
    }
  }
  return past;
}

const i64 = (rows: number[][]) =>
  new ort.Tensor('int64', BigInt64Array.from(rows.flat().map((v) => BigInt(v))), [rows.length, rows[0].length]);

export interface StepResult {
  /** [B, S, V] as float32 */
  logits: Float32Array;
  present: Past;
  raw: ort.InferenceSession.OnnxValueMapType;
}

/**
 * One forward call. `mask` covers past + current; `positions` is used when the graph has position_ids.
 */
export async function step(
  session: ort.InferenceSession,
  o: ResolvedOptions,
  ids: number[][],
  mask: number[][],
  positions: number[][],
  past: Past,
  useCacheBranch?: boolean,
): Promise<StepResult> {
  const feeds: Record<string, ort.Tensor> = { input_ids: i64(ids), attention_mask: i64(mask), ...past };
  if (o.positionIds) feeds.position_ids = i64(positions);
  if (o.layout === 'merged') feeds.use_cache_branch = new ort.Tensor('bool', [useCacheBranch ?? Object.values(past)[0].dims[2] > 0], [1]);
  const out = await session.run(feeds);
  const present: Past = {};
  for (let i = 0; i < o.numLayers; i++) {
    for (const kind of ['key', 'value']) present[`past_key_values.${i}.${kind}`] = out[`present.${i}.${kind}`] as ort.Tensor;
  }
  return { logits: toF32(out.logits as ort.Tensor), present, raw: out };
}

/** Positions for left-padded rows, HF style: cumsum(mask) - 1 clipped at 0, last `len` columns. */
export function positionsFromMask(mask: number[][], len: number): number[][] {
  return mask.map((row) => {
    let c = 0;
    const p = row.map((m) => {
      c += m;
      return Math.max(c - 1, 0);
    });
    return p.slice(p.length - len);
  });
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function argmax(a: ArrayLike<number>, from = 0, to = a.length): number {
  let best = from;
  for (let i = from + 1; i < to; i++) if (a[i] > a[best]) best = i;
  return best - from;
}

/** Row `s` of batch `b` of a [B,S,V] logits array. */
export function logitsRow(l: Float32Array, S: number, V: number, b: number, s: number): Float32Array {
  const off = (b * S + s) * V;
  return l.subarray(off, off + V);
}

/**
 * Greedy decoding of one sequence: prefill `prompt`, then `steps` one-token steps feeding present back.
 * Returns generated ids and the logits of every step (prefill's last row first).
 */
export async function greedyCached(session: ort.InferenceSession, o: ResolvedOptions, prompt: number[], steps: number) {
  const V = o.vocabSize;
  let mask = [prompt.map(() => 1)];
  let r = await step(session, o, [prompt], mask, [prompt.map((_, i) => i)], emptyPast(o, 1));
  const rows: Float32Array[] = [logitsRow(r.logits, prompt.length, V, 0, prompt.length - 1).slice()];
  const out: number[] = [];
  for (let t = 0; t < steps; t++) {
    const next = argmax(rows[rows.length - 1]);
    out.push(next);
    if (t === steps - 1) break;
    mask = [[...mask[0], 1]];
    r = await step(session, o, [[next]], mask, [[prompt.length + t]], r.present);
    rows.push(r.logits.slice());
  }
  return { ids: out, rows };
}

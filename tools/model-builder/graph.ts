/**
 * ONNX graphs for the two test-model families, in Hugging Face Optimum's "text-generation-with-past"
 * I/O convention.
 */
import { DT, F, GraphBuilder, I, IS, valueInfo, type ElemType } from './onnx-graph.ts';
import { gaussian } from './rng.ts';

export type Family = 'gpt2' | 'llama';
export type KvDtype = 'float32' | 'float16';

/**
 * Limitations of real exports, reproduced faithfully so the server's probes and fallbacks can be tested:
 * - `no-multi-token-past`: the causal mask is built [S, S] over the new tokens only and Expanded to
 *   [B, 1, S, T], as in ONNX Runtime GenAI's model builder exports: valid only when S == 1 (it broadcasts)
 *   or the past is empty (S == T); otherwise onnxruntime fails with "invalid expand shape".
 * - `no-batch`: the hidden states are reshaped to a literal batch of 1, so batch > 1 fails in Reshape.
 * - `right-padding-only`: keys are masked by count (the first sum(attention_mask) slots), as
 *   GroupQueryAttention's seqlens_k does; a left-padded row silently attends to its padding instead.
 */
export type ExportQuirk = 'no-multi-token-past' | 'no-batch' | 'right-padding-only';
export const EXPORT_QUIRKS: readonly ExportQuirk[] = ['no-multi-token-past', 'no-batch', 'right-padding-only'];

export interface ResolvedOptions {
  family: Family;
  seed: number;
  vocabSize: number;
  /** ids below this have tokenizer entries; the rest are padding ids */
  tokenizerSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositions: number;
  ropeTheta: number;
  normEps: number;
  kvDtype: KvDtype;
  logitsDtype: KvDtype;
  positionIds: boolean;
  layout: 'model' | 'merged';
  /** 'separate': past_key_values.N.key/value [B,kvh,P,hd]; 'stacked': past_N [2,B,kvh,P,hd] (ORT's GPT-2 exporter) */
  kvPacking: 'separate' | 'stacked';
  /** dtype of the attention_mask input (ORT's GPT-2 exporter uses float32) */
  maskDtype: 'int64' | 'float32';
  quirks: ExportQuirk[];
}

/** Logit/embedding scale applied to padding ids (ids >= tokenizerSize) so that they rarely win argmax. */
export const PADDED_VOCAB_SCALE = 0.5;

/** Large finite negative used in the additive attention mask (never -inf: fully masked rows stay finite). */
export const MASK_VALUE = -1e9;

const elem = (d: KvDtype): ElemType => (d === 'float16' ? DT.FLOAT16 : DT.FLOAT);
const INT64_MAX = Number.MAX_SAFE_INTEGER; // large enough as a Slice end

export interface GraphIO {
  inputs: ReturnType<typeof valueInfo>[];
  outputs: ReturnType<typeof valueInfo>[];
}

interface Common {
  /** [B,1,S,T] float32 additive mask: 0 where allowed, MASK_VALUE elsewhere */
  bias: string;
  /** [B,S] int64 positions */
  positions: string;
}

/** Shared preamble: sequence lengths, the additive causal+padding mask, and positions. */
function preamble(g: GraphBuilder, o: ResolvedOptions): Common {
  const S = g.op('Shape', ['input_ids'], { start: I(1), end: I(2) }); // [1]
  const P = o.kvPacking === 'stacked' ? g.op('Shape', ['past_0'], { start: I(3), end: I(4) }) : g.op('Shape', ['past_key_values.0.key'], { start: I(2), end: I(3) }); // [1]
  const mask = o.maskDtype === 'float32' ? g.op('Cast', ['attention_mask'], { to: I(DT.INT64) }) : 'attention_mask'; // [B,T] int64
  const T = g.op('Add', [P, S]);
  const ax0 = g.i64([0]);
  const Ps = g.op('Squeeze', [P, ax0]);
  const Ts = g.op('Squeeze', [T, ax0]);
  const keyIdx = g.op('Range', [g.i64([0], []), Ts, g.i64([1], [])]); // [T]
  const qIdx = g.op('Range', [Ps, Ts, g.i64([1], [])]); // [S] absolute slots of the queries
  let causal: string; // [1,1,S,T], or [B,1,S,T] with the no-multi-token-past quirk
  if (o.quirks.includes('no-multi-token-past')) {
    const Ss = g.op('Squeeze', [S, ax0]);
    const local = g.op('Range', [g.i64([0], []), Ss, g.i64([1], [])]); // [S] query slots among the new tokens
    const square = g.op('LessOrEqual', [g.op('Unsqueeze', [local, g.i64([0])]), g.op('Unsqueeze', [local, g.i64([1])])]); // [S,S]
    const B = g.op('Shape', ['input_ids'], { start: I(0), end: I(1) }); // [1]
    const target = g.op('Concat', [B, g.i64([1]), S, T], { axis: I(0) }); // [4] = [B,1,S,T]
    causal = g.op('Expand', [square, target]);
  } else {
    const cmp = g.op('LessOrEqual', [g.op('Unsqueeze', [keyIdx, g.i64([0])]), g.op('Unsqueeze', [qIdx, g.i64([1])])]); // [S,T]
    causal = g.op('Unsqueeze', [cmp, g.i64([0, 1])]);
  }
  let real: string; // [B,T] keys a row may attend to
  if (o.quirks.includes('right-padding-only')) {
    const count = g.op('ReduceSum', [mask, g.i64([1])], { keepdims: I(1) }); // [B,1]
    real = g.op('Less', [g.op('Unsqueeze', [keyIdx, g.i64([0])]), count]);
  } else {
    real = g.op('Equal', [mask, g.i64([1], [])]);
  }
  const allowed = g.op('And', [causal, g.op('Unsqueeze', [real, g.i64([1, 2])])]); // [B,1,S,T]
  const bias = g.op('Where', [allowed, g.f32([0], []), g.f32([MASK_VALUE], [])]);

  let positions = 'position_ids';
  if (!o.positionIds) {
    // HF: cumsum(attention_mask, -1) - 1 (padding clipped at 0), last sequence_length columns.
    const cs = g.op('CumSum', [mask, g.i64([1], [])]);
    const clipped = g.op('Max', [g.op('Sub', [cs, g.i64([1], [])]), g.i64([0], [])]);
    positions = g.op('Slice', [clipped, g.op('Neg', [S]), g.i64([INT64_MAX]), g.i64([1])]);
  }
  return { bias, positions };
}

/** The no-batch quirk: hidden states [B,S,H] reshaped to a literal [1,S,H], which fails for B > 1. */
function batchOfOneQuirk(g: GraphBuilder, o: ResolvedOptions, x: string): string {
  if (!o.quirks.includes('no-batch')) return x;
  const S = g.op('Shape', ['input_ids'], { start: I(1), end: I(2) });
  return g.op('Reshape', [x, g.op('Concat', [g.i64([1]), S, g.i64([o.hiddenSize])], { axis: I(0) })]);
}

/** [B,S,n*hd] -> [B,n,S,hd] */
function splitHeads(g: GraphBuilder, x: string, n: number, hd: number): string {
  return g.op('Transpose', [g.op('Reshape', [x, g.i64([0, 0, n, hd])])], { perm: IS([0, 2, 1, 3]) });
}

/**
 * Attention over concat(past, new). q: [B,nh,S,hd] float32; k,v: [B,kvh,S,hd] float32.
 * Writes present.{i}.key/value or present_{i} (kv dtype) and returns the context [B,S,nh*hd] float32.
 */
function attention(g: GraphBuilder, o: ResolvedOptions, c: Common, layer: number, q: string, k: string, v: string): string {
  const { numHeads: nh, numKvHeads: kvh, headDim: hd } = o;
  const fp16 = o.kvDtype === 'float16';
  const stacked = o.kvPacking === 'stacked';
  /** Returns [what attention reads (float32, heads repeated for GQA), the layer's present (kv dtype)]. */
  const cat = (kind: 'key' | 'value', x: string): [string, string] => {
    const xNew = fp16 ? g.op('Cast', [x], { to: I(DT.FLOAT16) }) : x;
    // past_N [2,B,kvh,P,hd]: index 0 holds the keys, 1 the values.
    const past = stacked ? g.op('Gather', [`past_${layer}`, g.i64([kind === 'key' ? 0 : 1], [])], { axis: I(0) }) : `past_key_values.${layer}.${kind}`;
    const present = g.op('Concat', [past, xNew], { axis: I(2) }, stacked ? undefined : `present.${layer}.${kind}`);
    // Attend over exactly what is cached (float16-rounded when the KV dtype is float16).
    let full = fp16 ? g.op('Cast', [present], { to: I(DT.FLOAT) }) : present;
    if (nh !== kvh) {
      // GQA: [B,kvh,T,hd] -> [B,kvh,1,T,hd] -> expand [B,kvh,rep,T,hd] -> [B,nh,T,hd]; works for any T.
      const rep = nh / kvh;
      const un = g.op('Unsqueeze', [full, g.i64([2])]);
      const ex = g.op('Expand', [un, g.i64([1, 1, rep, 1, 1])]);
      full = g.op('Reshape', [ex, g.i64([0, nh, -1, hd])]);
    }
    return [full, present];
  };
  const [kAll, kPresent] = cat('key', k);
  const [vAll, vPresent] = cat('value', v);
  if (stacked) {
    const [kStack, vStack] = [kPresent, vPresent].map((x) => g.op('Unsqueeze', [x, g.i64([0])]));
    g.op('Concat', [kStack, vStack], { axis: I(0) }, `present_${layer}`); // [2,B,kvh,T,hd]
  }
  const qs = g.op('Mul', [q, g.f32([1 / Math.sqrt(hd)], [])]);
  const scores = g.op('MatMul', [qs, g.op('Transpose', [kAll], { perm: IS([0, 1, 3, 2]) })]); // [B,nh,S,T]
  const probs = g.op('Softmax', [g.op('Add', [scores, c.bias])], { axis: I(-1) });
  const ctx = g.op('MatMul', [probs, vAll]); // [B,nh,S,hd]
  return g.op('Reshape', [g.op('Transpose', [ctx], { perm: IS([0, 2, 1, 3]) }), g.i64([0, 0, nh * hd])]);
}

function io(o: ResolvedOptions): GraphIO {
  const kv = elem(o.kvDtype);
  const inputs = [
    valueInfo('input_ids', DT.INT64, ['batch_size', 'sequence_length']),
    valueInfo('attention_mask', o.maskDtype === 'float32' ? DT.FLOAT : DT.INT64, ['batch_size', 'total_sequence_length']),
  ];
  if (o.positionIds) inputs.push(valueInfo('position_ids', DT.INT64, ['batch_size', 'sequence_length']));
  const outputs = [valueInfo('logits', elem(o.logitsDtype), ['batch_size', 'sequence_length', o.vocabSize])];
  for (let i = 0; i < o.numLayers; i++) {
    if (o.kvPacking === 'stacked') {
      inputs.push(valueInfo(`past_${i}`, kv, [2, 'batch_size', o.numKvHeads, 'past_sequence_length', o.headDim]));
      outputs.push(valueInfo(`present_${i}`, kv, [2, 'batch_size', o.numKvHeads, 'total_sequence_length', o.headDim]));
      continue;
    }
    for (const kind of ['key', 'value']) {
      inputs.push(valueInfo(`past_key_values.${i}.${kind}`, kv, ['batch_size', o.numKvHeads, 'past_sequence_length', o.headDim]));
      outputs.push(valueInfo(`present.${i}.${kind}`, kv, ['batch_size', o.numKvHeads, 'total_sequence_length', o.headDim]));
    }
  }
  if (o.layout === 'merged') inputs.push(valueInfo('use_cache_branch', DT.BOOL, [1]));
  return { inputs, outputs };
}

function finishLogits(g: GraphBuilder, o: ResolvedOptions, logits32: string): void {
  if (o.logitsDtype === 'float16') g.op('Cast', [logits32], { to: I(DT.FLOAT16) }, 'logits');
  else g.op('Identity', [logits32], {}, 'logits');
}

/** Scales rows [tokenizerSize, vocabSize) of a [V, H] matrix (or columns of a [H, V] matrix). */
function scalePadded(data: Float32Array, o: ResolvedOptions, layout: 'rows' | 'cols', other: number): void {
  if (o.vocabSize <= o.tokenizerSize) return;
  if (layout === 'rows') {
    for (let i = o.tokenizerSize * other; i < data.length; i++) data[i] *= PADDED_VOCAB_SCALE;
  } else {
    for (let r = 0; r < other; r++) {
      for (let c = o.tokenizerSize; c < o.vocabSize; c++) data[r * o.vocabSize + c] *= PADDED_VOCAB_SCALE;
    }
  }
}

// ---------------------------------------------------------------------------------------------- gpt2

/*
 * Weight scales. The aim is a "lively" random model: logits with a std of ~2.5 across the vocabulary and
 * attention scores with a std of ~2 (far from uniform). With tied embeddings the residual stream still
 * holds e_tok, and with ln_f gains near 1 the logit of the current input token gets a systematic boost
 * (LN(h)·e_tok), so greedy decoding repeats the last token. ln_f gains are therefore drawn N(0, 1): no
 * systematic self-boost, same logit scale.
 */
const GPT2_ATTN_OUT_GAIN = 1.5;
const GPT2_MLP_OUT_GAIN = 2.5;
function buildGpt2(g: GraphBuilder, o: ResolvedOptions): void {
  const { hiddenSize: H, vocabSize: V, seed } = o;
  const W = (name: string, dims: number[], std: number, mean = 0): string =>
    g.weight(name, dims, gaussian(seed, name, dims.reduce((a, b) => a * b, 1), std, mean));
  const logitStd = 2.5;
  const eStd = logitStd / Math.sqrt(H); // tied lm_head: logit std ~= sqrt(H) * eStd
  const wteData = gaussian(seed, 'transformer.wte.weight', V * H, eStd);
  scalePadded(wteData, o, 'rows', H);
  const wte = g.weight('transformer.wte.weight', [V, H], wteData);
  const wpe = W('transformer.wpe.weight', [o.maxPositions, H], eStd);
  const c = preamble(g, o);
  let x = batchOfOneQuirk(g, o, g.op('Add', [g.op('Gather', [wte, 'input_ids'], { axis: I(0) }), g.op('Gather', [wpe, c.positions], { axis: I(0) })]));
  const inv = (n: number) => 1 / Math.sqrt(n);
  const hd = o.headDim;
  for (let i = 0; i < o.numLayers; i++) {
    const p = `transformer.h.${i}`;
    const ln1 = g.op('LayerNormalization', [x, W(`${p}.ln_1.weight`, [H], 0.1, 1), W(`${p}.ln_1.bias`, [H], 0.1)], {
      axis: I(-1),
      epsilon: F(o.normEps),
    });
    // c_attn is fused [H, 3H] (GPT-2 Conv1D layout: [in, out]); columns are q | k | v.
    const qkv = g.op('Add', [g.op('MatMul', [ln1, W(`${p}.attn.c_attn.weight`, [H, 3 * H], 1.6 * inv(H))]), W(`${p}.attn.c_attn.bias`, [3 * H], 0.1)]);
    const [q, k, v] = g.node('Split', [qkv], { axis: I(-1) }, 3);
    const ctx = attention(g, o, c, i, splitHeads(g, q, o.numHeads, hd), splitHeads(g, k, o.numKvHeads, hd), splitHeads(g, v, o.numKvHeads, hd));
    const a = g.op('Add', [g.op('MatMul', [ctx, W(`${p}.attn.c_proj.weight`, [H, H], GPT2_ATTN_OUT_GAIN * inv(H))]), W(`${p}.attn.c_proj.bias`, [H], 0.02)]);
    x = g.op('Add', [x, a]);
    const ln2 = g.op('LayerNormalization', [x, W(`${p}.ln_2.weight`, [H], 0.1, 1), W(`${p}.ln_2.bias`, [H], 0.1)], {
      axis: I(-1),
      epsilon: F(o.normEps),
    });
    const fc = g.op('Add', [g.op('MatMul', [ln2, W(`${p}.mlp.c_fc.weight`, [H, o.intermediateSize], inv(H))]), W(`${p}.mlp.c_fc.bias`, [o.intermediateSize], 0.1)]);
    const m = g.op('Add', [
      g.op('MatMul', [gelu(g, fc), W(`${p}.mlp.c_proj.weight`, [o.intermediateSize, H], GPT2_MLP_OUT_GAIN * inv(o.intermediateSize))]),
      W(`${p}.mlp.c_proj.bias`, [H], 0.02),
    ]);
    x = g.op('Add', [x, m]);
  }
  const lnf = g.op('LayerNormalization', [x, W('transformer.ln_f.weight', [H], 1, 0), W('transformer.ln_f.bias', [H], 0.0)], {
    axis: I(-1),
    epsilon: F(o.normEps),
  });
  // lm_head tied to wte: logits = ln_f(x) @ wte^T (onnxruntime folds the constant Transpose).
  const logits = g.op('MatMul', [lnf, g.op('Transpose', [wte], { perm: IS([1, 0]) })]);
  finishLogits(g, o, logits);
}

/** GPT-2 "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
function gelu(g: GraphBuilder, x: string): string {
  const x3 = g.op('Mul', [g.op('Mul', [x, x]), x]);
  const inner = g.op('Mul', [g.op('Add', [x, g.op('Mul', [x3, g.f32([0.044715], [])])]), g.f32([Math.sqrt(2 / Math.PI)], [])]);
  const t = g.op('Add', [g.op('Tanh', [inner]), g.f32([1], [])]);
  return g.op('Mul', [g.op('Mul', [x, t]), g.f32([0.5], [])]);
}

// --------------------------------------------------------------------------------------------- llama

/** HF LlamaRMSNorm: w * x / sqrt(mean(x^2) + eps). */
function rmsNorm(g: GraphBuilder, x: string, w: string, eps: number): string {
  const ms = g.op('ReduceMean', [g.op('Mul', [x, x])], { axes: IS([-1]), keepdims: I(1) });
  const r = g.op('Sqrt', [g.op('Add', [ms, g.f32([eps], [])])]);
  return g.op('Mul', [g.op('Div', [x, r]), w]);
}

/** inv_freq[i] = 1 / theta^(2i/head_dim), i in [0, head_dim/2), as HF computes it (float32). */
export function ropeInvFreq(headDim: number, theta: number): Float32Array {
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < headDim / 2; i++) out[i] = 1 / Math.pow(theta, (2 * i) / headDim);
  return out;
}

function buildLlama(g: GraphBuilder, o: ResolvedOptions): void {
  const { hiddenSize: H, vocabSize: V, seed, numHeads: nh, numKvHeads: kvh, headDim: hd, intermediateSize: Im } = o;
  const W = (name: string, dims: number[], std: number, mean = 0): string =>
    g.weight(name, dims, gaussian(seed, name, dims.reduce((a, b) => a * b, 1), std, mean));
  const inv = (n: number) => 1 / Math.sqrt(n);
  const embed = W('model.embed_tokens.weight', [V, H], 1);
  const c = preamble(g, o);
  let x = g.op('Gather', [embed, 'input_ids'], { axis: I(0) });
  x = batchOfOneQuirk(g, o, x);

  // Rotary tables from position ids: freqs [B,S,hd/2]; emb = concat(freqs, freqs) -> cos/sin [B,1,S,hd].
  const posF = g.op('Cast', [c.positions], { to: I(DT.FLOAT) });
  const freqs = g.op('Mul', [g.op('Unsqueeze', [posF, g.i64([2])]), g.f32(ropeInvFreq(hd, o.ropeTheta))]);
  const emb = g.op('Concat', [freqs, freqs], { axis: I(-1) });
  const cos = g.op('Unsqueeze', [g.op('Cos', [emb]), g.i64([1])]);
  const sin = g.op('Unsqueeze', [g.op('Sin', [emb]), g.i64([1])]);
  const rope = (t: string): string => {
    const [x1, x2] = g.node('Split', [t], { axis: I(-1) }, 2);
    const rotated = g.op('Concat', [g.op('Neg', [x2]), x1], { axis: I(-1) });
    return g.op('Add', [g.op('Mul', [t, cos]), g.op('Mul', [rotated, sin])]);
  };

  for (let i = 0; i < o.numLayers; i++) {
    const p = `model.layers.${i}`;
    // Projection weights are stored transposed relative to HF (ONNX MatMul layout [in, out]).
    const h = rmsNorm(g, x, W(`${p}.input_layernorm.weight`, [H], 0.1, 1), o.normEps);
    const q = g.op('MatMul', [h, W(`${p}.self_attn.q_proj.weight_t`, [H, nh * hd], 1.4 * inv(H))]);
    const k = g.op('MatMul', [h, W(`${p}.self_attn.k_proj.weight_t`, [H, kvh * hd], 1.4 * inv(H))]);
    const v = g.op('MatMul', [h, W(`${p}.self_attn.v_proj.weight_t`, [H, kvh * hd], inv(H))]);
    const ctx = attention(g, o, c, i, rope(splitHeads(g, q, nh, hd)), rope(splitHeads(g, k, kvh, hd)), splitHeads(g, v, kvh, hd));
    x = g.op('Add', [x, g.op('MatMul', [ctx, W(`${p}.self_attn.o_proj.weight_t`, [nh * hd, H], 1.5 * inv(nh * hd))])]);
    const h2 = rmsNorm(g, x, W(`${p}.post_attention_layernorm.weight`, [H], 0.1, 1), o.normEps);
    const gate = g.op('MatMul', [h2, W(`${p}.mlp.gate_proj.weight_t`, [H, Im], inv(H))]);
    const up = g.op('MatMul', [h2, W(`${p}.mlp.up_proj.weight_t`, [H, Im], inv(H))]);
    const silu = g.op('Mul', [gate, g.op('Sigmoid', [gate])]);
    x = g.op('Add', [x, g.op('MatMul', [g.op('Mul', [silu, up]), W(`${p}.mlp.down_proj.weight_t`, [Im, H], 2 * inv(Im))])]);
  }
  const hf = rmsNorm(g, x, W('model.norm.weight', [H], 0.05, 1), o.normEps);
  // Untied lm_head, stored [H, V].
  const lmData = gaussian(seed, 'lm_head.weight_t', H * V, 2.5 * inv(H));
  scalePadded(lmData, o, 'cols', H);
  const logits = g.op('MatMul', [hf, g.weight('lm_head.weight_t', [H, V], lmData)]);
  finishLogits(g, o, logits);
}

export function buildGraph(o: ResolvedOptions): { g: GraphBuilder; io: GraphIO } {
  const g = new GraphBuilder();
  if (o.family === 'gpt2') buildGpt2(g, o);
  else buildLlama(g, o);
  return { g, io: io(o) };
}

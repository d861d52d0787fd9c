/**
 * Test-model builder: writes complete Hugging Face-style model folders (config, generation config,
 * byte-level BPE tokenizer, ONNX decoder in Optimum's "text-generation-with-past" convention) with seeded
 * random weights. See README.md in this folder.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildGraph, EXPORT_QUIRKS, MASK_VALUE, PADDED_VOCAB_SCALE, type ExportQuirk, type Family, type KvDtype, type ResolvedOptions } from './graph.ts';
import { moveToExternal, onnx, type WeightTensor } from './onnx-graph.ts';
import { buildTokenizerFiles, DEFAULT_CHAT_TEMPLATE, DEFAULT_MERGES } from './tokenizer.ts';

export { DEFAULT_CHAT_TEMPLATE, SPECIAL_TOKENS } from './tokenizer.ts';
export { EXPORT_QUIRKS, MASK_VALUE, PADDED_VOCAB_SCALE, ropeInvFreq } from './graph.ts';
export type { ExportQuirk, ResolvedOptions } from './graph.ts';
export type { WeightTensor } from './onnx-graph.ts';

export interface BuildOptions {
  family: Family;
  /** default 1 */
  seed?: number;
  /** total vocab incl. special tokens; default: tokenizer size. Larger values pad the vocabulary. */
  vocabSize?: number;
  /** default 64 */
  hiddenSize?: number;
  /** default 2 */
  numLayers?: number;
  /** query heads, default 4 */
  numHeads?: number;
  /** llama only (GQA), default 2; gpt2 always uses numHeads */
  numKvHeads?: number;
  /** default 4*hidden (gpt2) / 8/3*hidden rounded to a multiple of 8 (llama) */
  intermediateSize?: number;
  /** gpt2: n_positions (size of wpe); llama: max_position_embeddings. default 1024 */
  maxPositions?: number;
  /** llama, default 10000 */
  ropeTheta?: number;
  /** dtype of past_key_values.* / present.*; default float32 */
  kvDtype?: KvDtype;
  /** default float32 */
  logitsDtype?: KvDtype;
  /** graph has a position_ids input; default true. false: positions = max(cumsum(mask)-1, 0), last S columns */
  positionIds?: boolean;
  /** 'model' -> onnx/model.onnx; 'merged' -> onnx/decoder_model_merged.onnx with a use_cache_branch input */
  layout?: 'model' | 'merged';
  /** store the weights in onnx/<file>.onnx_data (ONNX external-data convention); default false */
  externalData?: boolean;
  /** tokenizer_config.json chat_template; default ChatML; null = none */
  chatTemplate?: string | null;
  /** number of BPE merges to learn from the built-in corpus (default 400, at most 971 are learnable) */
  tokenizerMerges?: number;
  /** 'stacked': one past_N / present_N [2, batch, kv_heads, seq, head_dim] per layer (ORT's GPT-2 exporter); default 'separate' */
  kvPacking?: 'separate' | 'stacked';
  /** attention_mask dtype; default int64 (ORT's GPT-2 exporter uses float32) */
  maskDtype?: 'int64' | 'float32';
  /** limitations of real exports to reproduce (see ExportQuirk in graph.ts); default none */
  quirks?: ExportQuirk[];
}

export interface BuiltModelInfo {
  dir: string;
  /** absolute or dir-relative path of the .onnx file */
  onnxPath: string;
  /** path of the external data file, when externalData */
  externalDataPath?: string;
  /** every file written, relative to dir */
  files: string[];
  options: ResolvedOptions;
  config: Record<string, unknown>;
  generationConfig: Record<string, unknown>;
  /** ids the tokenizer knows: [0, tokenizerSize); ids in [tokenizerSize, vocabSize) are padding */
  tokenizerSize: number;
  vocabSize: number;
  specialTokenIds: { endoftext: number; imStart: number; imEnd: number };
  numParameters: number;
  inputNames: string[];
  outputNames: string[];
  onnxBytes: number;
  buildMs: number;
}

export interface ModelBytes {
  /** serialized ModelProto */
  onnx: Uint8Array;
  /** external weight data (only with externalData) */
  externalData?: Uint8Array;
  onnxFileName: string;
  externalDataFileName?: string;
  config: Record<string, unknown>;
  generationConfig: Record<string, unknown>;
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  specialTokensMap: Record<string, unknown>;
  /** every float32 weight, by initializer name (llama projections are stored transposed: [in, out]) */
  weights: Map<string, WeightTensor>;
  options: ResolvedOptions;
  tokenizerSize: number;
  specialTokenIds: { endoftext: number; imStart: number; imEnd: number };
  numParameters: number;
  inputNames: string[];
  outputNames: string[];
}

function resolve(options: BuildOptions, tokenizerSize: number): ResolvedOptions {
  const family = options.family;
  if (family !== 'gpt2' && family !== 'llama') throw new Error(`unknown family ${String(family)}`);
  const hiddenSize = options.hiddenSize ?? 64;
  const numHeads = options.numHeads ?? 4;
  const numKvHeads = family === 'gpt2' ? numHeads : (options.numKvHeads ?? Math.min(2, numHeads));
  if (family === 'gpt2' && options.numKvHeads !== undefined && options.numKvHeads !== numHeads) {
    throw new Error('gpt2: numKvHeads must equal numHeads');
  }
  const vocabSize = options.vocabSize ?? tokenizerSize;
  const r: ResolvedOptions = {
    family,
    seed: options.seed ?? 1,
    vocabSize,
    tokenizerSize,
    hiddenSize,
    numLayers: options.numLayers ?? 2,
    numHeads,
    numKvHeads,
    headDim: hiddenSize / numHeads,
    intermediateSize: options.intermediateSize ?? (family === 'gpt2' ? 4 * hiddenSize : Math.max(8, Math.round((hiddenSize * 8) / 3 / 8) * 8)),
    maxPositions: options.maxPositions ?? 1024,
    ropeTheta: options.ropeTheta ?? 10000,
    normEps: family === 'gpt2' ? 1e-5 : 1e-6,
    kvDtype: options.kvDtype ?? 'float32',
    logitsDtype: options.logitsDtype ?? 'float32',
    positionIds: options.positionIds ?? true,
    layout: options.layout ?? 'model',
    kvPacking: options.kvPacking ?? 'separate',
    maskDtype: options.maskDtype ?? 'int64',
    quirks: [...new Set(options.quirks ?? [])],
  };
  for (const quirk of r.quirks) if (!EXPORT_QUIRKS.includes(quirk)) throw new Error(`unknown quirk ${String(quirk)} (known: ${EXPORT_QUIRKS.join(', ')})`);
  const posInt = (k: keyof ResolvedOptions) => {
    const v = r[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new Error(`${k} must be a positive integer, got ${String(v)}`);
  };
  for (const k of ['hiddenSize', 'numLayers', 'numHeads', 'numKvHeads', 'headDim', 'intermediateSize', 'maxPositions', 'vocabSize'] as const) posInt(k);
  if (vocabSize < tokenizerSize) throw new Error(`vocabSize ${vocabSize} is smaller than the tokenizer (${tokenizerSize} ids)`);
  if (numHeads % numKvHeads !== 0) throw new Error(`numHeads ${numHeads} is not a multiple of numKvHeads ${numKvHeads}`);
  if (family === 'llama' && r.headDim % 2 !== 0) throw new Error(`llama head_dim ${r.headDim} must be even (RoPE)`);
  for (const k of ['kvDtype', 'logitsDtype'] as const) {
    if (r[k] !== 'float32' && r[k] !== 'float16') throw new Error(`${k} must be float32 or float16`);
  }
  if (r.layout !== 'model' && r.layout !== 'merged') throw new Error(`layout must be model or merged`);
  if (r.kvPacking !== 'separate' && r.kvPacking !== 'stacked') throw new Error('kvPacking must be separate or stacked');
  if (r.maskDtype !== 'int64' && r.maskDtype !== 'float32') throw new Error('maskDtype must be int64 or float32');
  return r;
}

function hfConfig(o: ResolvedOptions, ids: { endoftext: number; imEnd: number }): Record<string, unknown> {
  const meta = {
    // Not read by transformers; describes how the test model was made.
    seed: o.seed,
    tokenizer_size: o.tokenizerSize,
    padded_vocab_logit_scale: o.vocabSize > o.tokenizerSize ? PADDED_VOCAB_SCALE : null,
    kv_dtype: o.kvDtype,
    logits_dtype: o.logitsDtype,
    position_ids_input: o.positionIds,
    layout: o.layout,
    attention_mask_value: MASK_VALUE,
    kv_packing: o.kvPacking,
    attention_mask_dtype: o.maskDtype,
    export_quirks: o.quirks,
  };
  const tjs = o.kvDtype === 'float16' ? { 'transformers.js_config': { kv_cache_dtype: 'float16' } } : {};
  if (o.family === 'gpt2') {
    return {
      model_type: 'gpt2',
      architectures: ['GPT2LMHeadModel'],
      vocab_size: o.vocabSize,
      n_embd: o.hiddenSize,
      n_layer: o.numLayers,
      n_head: o.numHeads,
      n_inner: o.intermediateSize,
      n_positions: o.maxPositions,
      n_ctx: o.maxPositions,
      layer_norm_epsilon: o.normEps,
      activation_function: 'gelu_new',
      bos_token_id: ids.endoftext,
      eos_token_id: ids.endoftext,
      tie_word_embeddings: true,
      use_cache: true,
      torch_dtype: 'float32',
      ...tjs,
      warmkv_test_model: meta,
    };
  }
  return {
    model_type: 'llama',
    architectures: ['LlamaForCausalLM'],
    vocab_size: o.vocabSize,
    hidden_size: o.hiddenSize,
    intermediate_size: o.intermediateSize,
    num_hidden_layers: o.numLayers,
    num_attention_heads: o.numHeads,
    num_key_value_heads: o.numKvHeads,
    head_dim: o.headDim,
    max_position_embeddings: o.maxPositions,
    rope_theta: o.ropeTheta,
    rope_scaling: null,
    rms_norm_eps: o.normEps,
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: false,
    bos_token_id: ids.endoftext,
    eos_token_id: ids.endoftext,
    pad_token_id: ids.endoftext,
    use_cache: true,
    torch_dtype: 'float32',
    ...tjs,
    warmkv_test_model: meta,
  };
}

/** Builds everything in memory. */
export function buildModelBytes(options: BuildOptions): ModelBytes {
  const family = options.family;
  const probeMax = options.maxPositions ?? 1024;
  const tok = buildTokenizerFiles({
    numMerges: options.tokenizerMerges ?? DEFAULT_MERGES,
    chatTemplate: options.chatTemplate === undefined ? DEFAULT_CHAT_TEMPLATE : options.chatTemplate,
    modelMaxLength: probeMax,
    tokenizerClass: family === 'gpt2' ? 'GPT2Tokenizer' : 'PreTrainedTokenizerFast',
  });
  const o = resolve(options, tok.size);
  const { g, io } = buildGraph(o);
  const onnxFileName = o.layout === 'merged' ? 'decoder_model_merged.onnx' : 'model.onnx';
  let initializers = g.initializers;
  let externalData: Uint8Array | undefined;
  let externalDataFileName: string | undefined;
  if (options.externalData) {
    externalDataFileName = `${onnxFileName}_data`;
    const moved = moveToExternal(initializers, new Set(g.weights.keys()), externalDataFileName);
    initializers = moved.initializers;
    externalData = moved.data;
  }
  const model = onnx.ModelProto.create({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 17 }],
    producerName: 'warmkv-model-builder',
    producerVersion: '1',
    graph: {
      name: `warmkv_${o.family}_test`,
      node: g.nodes,
      initializer: initializers,
      input: io.inputs,
      output: io.outputs,
    },
  });
  const bytes = onnx.ModelProto.encode(model).finish();
  let numParameters = 0;
  for (const w of g.weights.values()) numParameters += w.data.length;
  const config = hfConfig(o, tok.specialIds);
  const generationConfig = {
    bos_token_id: tok.specialIds.endoftext,
    eos_token_id: [tok.specialIds.endoftext, tok.specialIds.imEnd],
    pad_token_id: tok.specialIds.endoftext,
    do_sample: false,
  };
  return {
    onnx: bytes,
    externalData,
    onnxFileName,
    externalDataFileName,
    config,
    generationConfig,
    tokenizerJson: tok.tokenizerJson,
    tokenizerConfig: tok.tokenizerConfig,
    specialTokensMap: tok.specialTokensMap,
    weights: g.weights,
    options: o,
    tokenizerSize: tok.size,
    specialTokenIds: tok.specialIds,
    numParameters,
    inputNames: io.inputs.map((v) => v.name ?? ''),
    outputNames: io.outputs.map((v) => v.name ?? ''),
  };
}

const json = (v: unknown) => JSON.stringify(v, null, 2) + '\n';

/** Builds the model and writes the folder `dir` (created if needed; existing files are overwritten). */
export async function buildModelFolder(dir: string, options: BuildOptions): Promise<BuiltModelInfo> {
  const t0 = performance.now();
  const m = buildModelBytes(options);
  await mkdir(join(dir, 'onnx'), { recursive: true });
  const files: [string, string | Uint8Array][] = [
    ['config.json', json(m.config)],
    ['generation_config.json', json(m.generationConfig)],
    ['tokenizer.json', json(m.tokenizerJson)],
    ['tokenizer_config.json', json(m.tokenizerConfig)],
    ['special_tokens_map.json', json(m.specialTokensMap)],
    [`onnx/${m.onnxFileName}`, m.onnx],
  ];
  if (m.externalData && m.externalDataFileName) files.push([`onnx/${m.externalDataFileName}`, m.externalData]);
  await Promise.all(files.map(([name, data]) => writeFile(join(dir, name), data)));
  return {
    dir,
    onnxPath: join(dir, 'onnx', m.onnxFileName),
    externalDataPath: m.externalDataFileName ? join(dir, 'onnx', m.externalDataFileName) : undefined,
    files: files.map(([n]) => n),
    options: m.options,
    config: m.config,
    generationConfig: m.generationConfig,
    tokenizerSize: m.tokenizerSize,
    vocabSize: m.options.vocabSize,
    specialTokenIds: m.specialTokenIds,
    numParameters: m.numParameters,
    inputNames: m.inputNames,
    outputNames: m.outputNames,
    onnxBytes: m.onnx.byteLength + (m.externalData?.byteLength ?? 0),
    buildMs: performance.now() - t0,
  };
}

import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync, openSync, readSync, closeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { PositionEncoding } from './types.ts';

/** Families whose exports apply RoPE in the Hugging Face rotate-half layout to the whole head (or a known part). */
const ROTATE_HALF_MODEL_TYPES = new Set([
  'llama', 'mistral', 'mixtral', 'qwen2', 'qwen2_moe', 'qwen3', 'qwen3_moe', 'smollm3', 'phi3', 'gemma', 'gemma2',
  'olmo', 'olmo2', 'granite', 'gpt_neox', 'stablelm', 'starcoder2', 'internlm2', 'deepseek_v2',
]);
/** Families with a learned absolute position table: their positions cannot exceed it. */
const LEARNED_POSITION_MODEL_TYPES = new Set(['gpt2', 'gpt_neo', 'opt', 'gpt_bigcode', 'biogpt', 'xglm']);

export class ModelFolderError extends Error {
  override name = 'ModelFolderError';
}

export interface GenerationDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
}

export interface ModelFolder {
  dir: string;
  /** Name clients use in the `model` field. */
  id: string;
  onnxPath: string;
  modelType: string;
  config: Record<string, unknown>;
  vocabSize: number | null;
  /** Largest context the architecture declares (positions table or max_position_embeddings). */
  maxPositions: number | null;
  positionEncoding: PositionEncoding;
  eosTokenIds: number[];
  bosTokenId: number | null;
  generationDefaults: GenerationDefaults;
  numKvHeadsHint?: number;
  headDimHint?: number;
  numHeadsHint?: number;
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  /** Bytes of the graph file and its external data files: what loading the weights reads. */
  weightBytes: number;
  /** Changes when the weights or config change: snapshots from another model are refused. */
  modelFingerprint: string;
  tokenizerFingerprint: string;
}

const ONNX_CANDIDATES = ['onnx/model.onnx', 'model.onnx', 'onnx/decoder_model_merged.onnx', 'decoder_model_merged.onnx'];

function readJson(path: string, required: boolean): Record<string, unknown> | null {
  if (!existsSync(path)) {
    if (required) throw new ModelFolderError(`missing ${path}`);
    return null;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new ModelFolderError(`cannot parse ${path}: ${(error as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new ModelFolderError(`${path} is not a JSON object`);
  return parsed as Record<string, unknown>;
}

function numberField(config: Record<string, unknown>, ...names: string[]): number | undefined {
  for (const name of names) {
    const value = config[name];
    if (typeof value === 'number' && Number.isFinite(value)) return value;
  }
  return undefined;
}

function idList(value: unknown): number[] {
  if (typeof value === 'number') return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === 'number');
  return [];
}

/** Size plus the first and last MiB: cheap for multi-GB weights, and any re-export changes it. Returns the size. */
function fileFingerprint(hash: ReturnType<typeof createHash>, path: string): number {
  const size = statSync(path).size;
  hash.update(`${basename(path)}:${size}:`);
  const window = Math.min(size, 1 << 20);
  const buffer = Buffer.alloc(window);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buffer, 0, window, 0);
    hash.update(buffer);
    readSync(fd, buffer, 0, window, size - window);
    hash.update(buffer);
  } finally {
    closeSync(fd);
  }
  return size;
}

function positionEncodingOf(modelType: string, config: Record<string, unknown>, maxPositions: number | null, headDim?: number): PositionEncoding {
  if (LEARNED_POSITION_MODEL_TYPES.has(modelType)) {
    if (!maxPositions) throw new ModelFolderError(`config.json of a ${modelType} model declares no position table size`);
    return { kind: 'learned', maxPositions };
  }
  if (!ROTATE_HALF_MODEL_TYPES.has(modelType)) {
    return { kind: 'rotary-unknown', reason: `model_type "${modelType}" has no known rotary layout` };
  }
  const scaling = config.rope_scaling;
  if (scaling !== undefined && scaling !== null) {
    return { kind: 'rotary-unknown', reason: 'rope_scaling is set; shifting keys would need its frequency schedule' };
  }
  if (!headDim) return { kind: 'rotary-unknown', reason: 'head size unknown' };
  const theta = numberField(config, 'rope_theta', 'rotary_emb_base') ?? 10000;
  const partial = numberField(config, 'partial_rotary_factor', 'rotary_pct') ?? 1;
  const rotaryDim = Math.round(headDim * partial);
  if (rotaryDim % 2 !== 0 || rotaryDim <= 0) return { kind: 'rotary-unknown', reason: `rotary dimension ${rotaryDim} is not even` };
  return { kind: 'rotary', theta, rotaryDim, style: 'rotate_half' };
}

export function findOnnxFile(dir: string): string {
  for (const candidate of ONNX_CANDIDATES) {
    const path = join(dir, candidate);
    if (existsSync(path)) return path;
  }
  throw new ModelFolderError(`no ONNX model in ${dir}: looked for ${ONNX_CANDIDATES.join(', ')}`);
}

export function readModelFolder(dirArg: string, id?: string): ModelFolder {
  const dir = resolve(dirArg);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new ModelFolderError(`model folder ${dir} does not exist`);
  const config = readJson(join(dir, 'config.json'), true)!;
  const generationConfig = readJson(join(dir, 'generation_config.json'), false) ?? {};
  const tokenizerJson = readJson(join(dir, 'tokenizer.json'), true)!;
  const tokenizerConfig = readJson(join(dir, 'tokenizer_config.json'), false) ?? {};
  const onnxPath = findOnnxFile(dir);

  const modelType = typeof config.model_type === 'string' ? config.model_type : 'unknown';
  const numHeads = numberField(config, 'num_attention_heads', 'n_head');
  const hidden = numberField(config, 'hidden_size', 'n_embd', 'd_model');
  const headDimHint = numberField(config, 'head_dim') ?? (hidden && numHeads ? hidden / numHeads : undefined);
  const numKvHeadsHint = numberField(config, 'num_key_value_heads') ?? numHeads;
  const maxPositions = numberField(config, 'max_position_embeddings', 'n_positions', 'n_ctx', 'seq_length') ?? null;

  const eos = [...idList(generationConfig.eos_token_id), ...idList(config.eos_token_id)];
  const bos = numberField(generationConfig, 'bos_token_id') ?? numberField(config, 'bos_token_id') ?? null;
  const generationDefaults: GenerationDefaults = {};
  if (generationConfig.do_sample === true) {
    generationDefaults.temperature = numberField(generationConfig, 'temperature');
    generationDefaults.topP = numberField(generationConfig, 'top_p');
    generationDefaults.topK = numberField(generationConfig, 'top_k');
    generationDefaults.minP = numberField(generationConfig, 'min_p');
  }
  generationDefaults.repetitionPenalty = numberField(generationConfig, 'repetition_penalty');

  const modelHash = createHash('sha256').update(JSON.stringify(config));
  let weightBytes = fileFingerprint(modelHash, onnxPath);
  // Weights may live in external data files next to the graph (model.onnx_data, model.onnx.data, ...).
  const onnxName = basename(onnxPath);
  for (const file of readdirSync(dirname(onnxPath)).sort()) {
    if (file !== onnxName && file.startsWith(onnxName.replace(/\.onnx$/, ''))) weightBytes += fileFingerprint(modelHash, join(dirname(onnxPath), file));
  }
  const tokenizerHash = createHash('sha256').update(JSON.stringify(tokenizerJson)).update(JSON.stringify(tokenizerConfig));

  return {
    dir,
    id: id ?? basename(dir),
    onnxPath,
    modelType,
    config,
    vocabSize: numberField(config, 'vocab_size') ?? null,
    maxPositions,
    positionEncoding: positionEncodingOf(modelType, config, maxPositions, headDimHint),
    eosTokenIds: [...new Set(eos)],
    bosTokenId: bos,
    generationDefaults,
    numKvHeadsHint,
    headDimHint,
    numHeadsHint: numHeads,
    tokenizerJson,
    tokenizerConfig,
    weightBytes,
    modelFingerprint: modelHash.digest('hex').slice(0, 32),
    tokenizerFingerprint: tokenizerHash.digest('hex').slice(0, 32),
  };
}

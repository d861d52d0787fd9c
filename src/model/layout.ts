import type { DecoderIo, KvDtype } from './types.ts';

/** The part of onnxruntime's value metadata that layout detection reads. */
export interface ValueInfo {
  name: string;
  isTensor: boolean;
  type?: string;
  shape?: ReadonlyArray<number | string>;
}

export interface ConfigHints {
  numKvHeads?: number;
  headDim?: number;
}

export class UnsupportedModelError extends Error {
  override name = 'UnsupportedModelError';
}

const PAST_PATTERN = /^past_key_values\.(\d+)\.(key|value)$/;
const PRESENT_PATTERN = /^present\.(\d+)\.(key|value)$/;
const KNOWN_INPUTS = new Set(['input_ids', 'attention_mask', 'position_ids', 'use_cache_branch']);

function describe(values: readonly ValueInfo[]): string {
  return values.map((v) => `${v.name}:${v.type ?? '?'}[${(v.shape ?? []).join(',')}]`).join(', ');
}

function kvDtypeOf(value: ValueInfo, found: string): KvDtype {
  if (value.type === 'float32' || value.type === 'float16') return value.type;
  throw new UnsupportedModelError(`${value.name} has dtype ${value.type}; only float32 and float16 are supported. Found: ${found}`);
}

function collectLayers(values: readonly ValueInfo[], pattern: RegExp, what: string, found: string) {
  const byLayer = new Map<number, { key?: ValueInfo; value?: ValueInfo }>();
  for (const v of values) {
    const match = pattern.exec(v.name);
    if (!match) continue;
    const entry = byLayer.get(Number(match[1])) ?? {};
    entry[match[2] as 'key' | 'value'] = v;
    byLayer.set(Number(match[1]), entry);
  }
  const numLayers = byLayer.size;
  const layers: Array<{ key: ValueInfo; value: ValueInfo }> = [];
  for (let i = 0; i < numLayers; i++) {
    const entry = byLayer.get(i);
    if (!entry?.key || !entry.value) {
      throw new UnsupportedModelError(`${what} for layer ${i} is incomplete (layers must be numbered 0..${numLayers - 1} with key and value). Found: ${found}`);
    }
    layers.push({ key: entry.key, value: entry.value });
  }
  return layers;
}

/**
 * Reads the KV layout and I/O names from the model's own metadata (Hugging Face Optimum
 * "text-generation-with-past" convention), so any architecture exported that way works without a table.
 */
export function detectDecoderIo(inputs: readonly ValueInfo[], outputs: readonly ValueInfo[], hints: ConfigHints = {}): DecoderIo {
  const found = `inputs [${describe(inputs)}], outputs [${describe(outputs)}]`;
  const inputByName = new Map(inputs.map((v) => [v.name, v]));
  for (const required of ['input_ids', 'attention_mask']) {
    if (!inputByName.has(required)) throw new UnsupportedModelError(`the model has no "${required}" input. Found: ${found}`);
  }
  const unknown = inputs.filter((v) => !KNOWN_INPUTS.has(v.name) && !PAST_PATTERN.test(v.name));
  if (unknown.length > 0) {
    throw new UnsupportedModelError(`unsupported model inputs ${unknown.map((v) => v.name).join(', ')}. Found: ${found}`);
  }
  const logits = outputs.find((v) => v.name === 'logits');
  if (!logits) throw new UnsupportedModelError(`the model has no "logits" output. Found: ${found}`);
  const logitsDtype = kvDtypeOf(logits, found);

  const pasts = collectLayers(inputs, PAST_PATTERN, 'past_key_values', found);
  const presents = collectLayers(outputs, PRESENT_PATTERN, 'present', found);
  if (pasts.length === 0) {
    throw new UnsupportedModelError(`the model has no past_key_values.N.key/value inputs: export it "with past" (Optimum task text-generation-with-past). Found: ${found}`);
  }
  if (presents.length !== pasts.length) {
    throw new UnsupportedModelError(`${pasts.length} past layers but ${presents.length} present layers. Found: ${found}`);
  }

  const first = pasts[0].key;
  const dtype = kvDtypeOf(first, found);
  const shape = first.shape ?? [];
  if (shape.length !== 4) {
    throw new UnsupportedModelError(`${first.name} has rank ${shape.length}; expected [batch, kv_heads, past_sequence_length, head_dim]. Found: ${found}`);
  }
  const numKvHeads = typeof shape[1] === 'number' && shape[1] > 0 ? shape[1] : hints.numKvHeads;
  const headDim = typeof shape[3] === 'number' && shape[3] > 0 ? shape[3] : hints.headDim;
  if (!numKvHeads || !headDim) {
    throw new UnsupportedModelError(`cannot tell KV heads and head size from ${first.name} [${shape.join(',')}] or config.json. Found: ${found}`);
  }
  for (const layer of [...pasts, ...presents]) {
    for (const v of [layer.key, layer.value]) {
      if (kvDtypeOf(v, found) !== dtype) throw new UnsupportedModelError(`${v.name} has dtype ${v.type} but ${first.name} has ${dtype}. Found: ${found}`);
      const s = v.shape ?? [];
      if (s.length !== 4 || (typeof s[1] === 'number' && s[1] !== numKvHeads) || (typeof s[3] === 'number' && s[3] !== headDim)) {
        throw new UnsupportedModelError(`${v.name} has shape [${s.join(',')}], expected [batch, ${numKvHeads}, seq, ${headDim}]. Found: ${found}`);
      }
    }
  }

  const numLayers = pasts.length;
  const bytesPerElement = dtype === 'float16' ? 2 : 4;
  return {
    names: {
      inputIds: 'input_ids',
      attentionMask: 'attention_mask',
      positionIds: inputByName.has('position_ids') ? 'position_ids' : null,
      useCacheBranch: inputByName.has('use_cache_branch') ? 'use_cache_branch' : null,
      pastKeys: pasts.map((l) => l.key.name),
      pastValues: pasts.map((l) => l.value.name),
      logits: logits.name,
      presentKeys: presents.map((l) => l.key.name),
      presentValues: presents.map((l) => l.value.name),
    },
    kv: { numLayers, numKvHeads, headDim, dtype, bytesPerToken: 2 * numLayers * numKvHeads * headDim * bytesPerElement },
    logitsDtype,
  };
}

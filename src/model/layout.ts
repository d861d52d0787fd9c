import type { DecoderInputTypes, DecoderIo, KvDtype } from './types.ts';

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
  /** Query heads (config's num_attention_heads): what grouped attention's KV heads are shared by. */
  numHeads?: number;
}

export class UnsupportedModelError extends Error {
  override name = 'UnsupportedModelError';
}

const PAST_PATTERN = /^past_key_values\.(\d+)\.(key|value)$/;
const PRESENT_PATTERN = /^present\.(\d+)\.(key|value)$/;
/** ONNX Runtime's GPT-2 exporter: one tensor per layer, keys and values stacked on a leading axis of 2. */
const STACKED_PAST_PATTERN = /^past_(\d+)$/;
const STACKED_PRESENT_PATTERN = /^present_(\d+)$/;
const KNOWN_INPUTS = new Set(['input_ids', 'attention_mask', 'position_ids', 'use_cache_branch']);

function inputTypeOf<T extends string>(value: ValueInfo | undefined, allowed: readonly T[], found: string): T {
  const type = (value?.type ?? 'int64') as T;
  if (!allowed.includes(type)) throw new UnsupportedModelError(`${value!.name} has dtype ${value!.type}; supported: ${allowed.join(', ')}. Found: ${found}`);
  return type;
}

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
    // A stacked tensor holds both: it stands for the key and the value of its layer.
    if (match[2] === undefined) entry.key = entry.value = v;
    else entry[match[2] as 'key' | 'value'] = v;
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
  const stacked = inputs.some((v) => STACKED_PAST_PATTERN.test(v.name)) && !inputs.some((v) => PAST_PATTERN.test(v.name));
  const pastPattern = stacked ? STACKED_PAST_PATTERN : PAST_PATTERN;
  const unknown = inputs.filter((v) => !KNOWN_INPUTS.has(v.name) && !pastPattern.test(v.name));
  if (unknown.length > 0) {
    throw new UnsupportedModelError(`unsupported model inputs ${unknown.map((v) => v.name).join(', ')}. Found: ${found}`);
  }
  const logits = outputs.find((v) => v.name === 'logits');
  if (!logits) throw new UnsupportedModelError(`the model has no "logits" output. Found: ${found}`);
  const logitsDtype = kvDtypeOf(logits, found);
  const inputTypes: DecoderInputTypes = {
    inputIds: inputTypeOf(inputByName.get('input_ids'), ['int64', 'int32'] as const, found),
    attentionMask: inputTypeOf(inputByName.get('attention_mask'), ['int64', 'int32', 'float32'] as const, found),
    positionIds: inputTypeOf(inputByName.get('position_ids'), ['int64', 'int32'] as const, found),
  };

  const pasts = collectLayers(inputs, pastPattern, stacked ? 'past_N' : 'past_key_values', found);
  const presents = collectLayers(outputs, stacked ? STACKED_PRESENT_PATTERN : PRESENT_PATTERN, stacked ? 'present_N' : 'present', found);
  if (pasts.length === 0) {
    throw new UnsupportedModelError(`the model has no past_key_values.N.key/value inputs: export it "with past" (Optimum task text-generation-with-past). Found: ${found}`);
  }
  if (presents.length !== pasts.length) {
    throw new UnsupportedModelError(`${pasts.length} past layers but ${presents.length} present layers. Found: ${found}`);
  }

  // Separate: [batch, kv_heads, seq, head_dim]; stacked: [2, batch, kv_heads, seq, head_dim].
  const lead = stacked ? 1 : 0;
  const rank = 4 + lead;
  const expected = stacked ? '[2, batch, kv_heads, past_sequence_length, head_dim]' : '[batch, kv_heads, past_sequence_length, head_dim]';
  const first = pasts[0].key;
  const dtype = kvDtypeOf(first, found);
  const shape = first.shape ?? [];
  if (shape.length !== rank || (stacked && typeof shape[0] === 'number' && shape[0] !== 2)) {
    throw new UnsupportedModelError(`${first.name} has rank ${shape.length} [${shape.join(',')}]; expected ${expected}. Found: ${found}`);
  }
  const numKvHeads = typeof shape[lead + 1] === 'number' && (shape[lead + 1] as number) > 0 ? (shape[lead + 1] as number) : hints.numKvHeads;
  const headDim = typeof shape[lead + 3] === 'number' && (shape[lead + 3] as number) > 0 ? (shape[lead + 3] as number) : hints.headDim;
  if (!numKvHeads || !headDim) {
    throw new UnsupportedModelError(`cannot tell KV heads and head size from ${first.name} [${shape.join(',')}] or config.json. Found: ${found}`);
  }
  for (const layer of [...pasts, ...presents]) {
    for (const v of [layer.key, layer.value]) {
      if (kvDtypeOf(v, found) !== dtype) throw new UnsupportedModelError(`${v.name} has dtype ${v.type} but ${first.name} has ${dtype}. Found: ${found}`);
      const s = v.shape ?? [];
      if (s.length !== rank || (typeof s[lead + 1] === 'number' && s[lead + 1] !== numKvHeads) || (typeof s[lead + 3] === 'number' && s[lead + 3] !== headDim)) {
        const want = stacked ? `[2, batch, ${numKvHeads}, seq, ${headDim}]` : `[batch, ${numKvHeads}, seq, ${headDim}]`;
        throw new UnsupportedModelError(`${v.name} has shape [${s.join(',')}], expected ${want}. Found: ${found}`);
      }
    }
  }

  const numLayers = pasts.length;
  const bytesPerElement = dtype === 'float16' ? 2 : 4;
  return {
    names: {
      kvPacking: stacked ? 'stacked' : 'separate',
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
    inputTypes,
    logitsDtype,
  };
}

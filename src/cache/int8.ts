/**
 * Symmetric int8 quantization of a single-row KV cache for idle sessions. Values get one scale per
 * token and head; keys get one scale per channel and head (KIVI's observation: key outliers sit in
 * fixed channels) or, optionally, per token like values. Scales are float16, so with head size 64 a
 * token costs (2 * 64 + 2) bytes per head and layer: 0.254x of float32, 0.508x of float16.
 */
import { floatToHalf, halfToFloat } from '../lib/float16.ts';
import { allocateKvData, kvElementCount, type KvLayout, type KvTensors } from '../model/types.ts';

export type KeyScaleMode = 'channel' | 'token';

export interface Int8Layer {
  key: Int8Array; // [numKvHeads, length, headDim]
  /** channel: [numKvHeads, headDim]; token: [numKvHeads, length]; float16 bits. */
  keyScales: Uint16Array;
  value: Int8Array; // [numKvHeads, length, headDim]
  valueScales: Uint16Array; // [numKvHeads, length], float16 bits
}

export interface Int8Kv {
  length: number;
  keyMode: KeyScaleMode;
  layers: Int8Layer[];
}

const LEVELS = 127;

/** Bytes of an int8 cache of `length` tokens (payload and scales). */
export function int8Bytes(layout: KvLayout, length: number, keyMode: KeyScaleMode): number {
  const { numLayers, numKvHeads: heads, headDim } = layout;
  const keyScaleCount = keyMode === 'channel' ? heads * headDim : heads * length;
  return numLayers * (2 * heads * length * headDim + 2 * keyScaleCount + 2 * heads * length);
}

/** Per-token bytes, for budget accounting of `length`-token blocks (channel key scales counted once). */
export function int8BytesPerToken(layout: KvLayout, keyMode: KeyScaleMode): number {
  return int8Bytes(layout, 1, keyMode) - (keyMode === 'channel' ? int8Bytes(layout, 0, keyMode) : 0);
}

/** The fixed part of an int8 cache that does not grow with its length (channel key scales). */
export function int8FixedBytes(layout: KvLayout, keyMode: KeyScaleMode): number {
  return int8Bytes(layout, 0, keyMode);
}

/** A float16-representable scale (so quantizing and dequantizing use the very same number). */
function scaleFor(maxAbs: number): number {
  return maxAbs === 0 ? 0 : halfToFloat(floatToHalf(maxAbs / LEVELS));
}

function quantize(x: number, scale: number): number {
  if (scale === 0) return 0;
  const q = Math.round(x / scale);
  return q > LEVELS ? LEVELS : q < -LEVELS ? -LEVELS : q;
}

export function quantizeKv(layout: KvLayout, kv: KvTensors, keyMode: KeyScaleMode = 'channel'): Int8Kv {
  if (kv.batchSize !== 1) throw new Error('int8 quantization works on single-row caches');
  const { numKvHeads: heads, headDim } = layout;
  const length = kv.length;
  const read = layout.dtype === 'float16' ? (data: ArrayLike<number>, i: number) => halfToFloat(data[i]) : (data: ArrayLike<number>, i: number) => data[i];
  const layers: Int8Layer[] = [];
  for (const layer of kv.layers) {
    const count = heads * length * headDim;
    const key = new Int8Array(count);
    const value = new Int8Array(count);
    const valueScales = new Uint16Array(heads * length);
    const keyScales = new Uint16Array(keyMode === 'channel' ? heads * headDim : heads * length);
    for (let h = 0; h < heads; h++) {
      if (keyMode === 'channel') {
        for (let c = 0; c < headDim; c++) {
          let max = 0;
          for (let t = 0; t < length; t++) max = Math.max(max, Math.abs(read(layer.key, (h * length + t) * headDim + c)));
          const scale = scaleFor(max);
          keyScales[h * headDim + c] = floatToHalf(scale);
          for (let t = 0; t < length; t++) {
            const i = (h * length + t) * headDim + c;
            key[i] = quantize(read(layer.key, i), scale);
          }
        }
      }
      for (let t = 0; t < length; t++) {
        const base = (h * length + t) * headDim;
        let valueMax = 0;
        let keyMax = 0;
        for (let c = 0; c < headDim; c++) {
          valueMax = Math.max(valueMax, Math.abs(read(layer.value, base + c)));
          if (keyMode === 'token') keyMax = Math.max(keyMax, Math.abs(read(layer.key, base + c)));
        }
        const valueScale = scaleFor(valueMax);
        valueScales[h * length + t] = floatToHalf(valueScale);
        for (let c = 0; c < headDim; c++) value[base + c] = quantize(read(layer.value, base + c), valueScale);
        if (keyMode === 'token') {
          const keyScale = scaleFor(keyMax);
          keyScales[h * length + t] = floatToHalf(keyScale);
          for (let c = 0; c < headDim; c++) key[base + c] = quantize(read(layer.key, base + c), keyScale);
        }
      }
    }
    layers.push({ key, keyScales, value, valueScales });
  }
  return { length, keyMode, layers };
}

export function dequantizeKv(layout: KvLayout, quantized: Int8Kv): KvTensors {
  const { numKvHeads: heads, headDim } = layout;
  const length = quantized.length;
  const half = layout.dtype === 'float16';
  const layers = quantized.layers.map((layer) => {
    const key = allocateKvData(layout.dtype, kvElementCount(layout, 1, length));
    const value = allocateKvData(layout.dtype, kvElementCount(layout, 1, length));
    for (let h = 0; h < heads; h++) {
      for (let t = 0; t < length; t++) {
        const base = (h * length + t) * headDim;
        const valueScale = halfToFloat(layer.valueScales[h * length + t]);
        const tokenKeyScale = quantized.keyMode === 'token' ? halfToFloat(layer.keyScales[h * length + t]) : 0;
        for (let c = 0; c < headDim; c++) {
          const keyScale = quantized.keyMode === 'channel' ? halfToFloat(layer.keyScales[h * headDim + c]) : tokenKeyScale;
          const k = layer.key[base + c] * keyScale;
          const v = layer.value[base + c] * valueScale;
          key[base + c] = half ? floatToHalf(k) : k;
          value[base + c] = half ? floatToHalf(v) : v;
        }
      }
    }
    return { key, value };
  });
  return { batchSize: 1, length, layers };
}

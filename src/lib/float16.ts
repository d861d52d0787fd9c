/**
 * IEEE 754 half-precision conversions. Node 20 has no Float16Array, and onnxruntime-node hands float16
 * tensors over as Uint16Array bit patterns, so KV math on float16 models goes through these helpers.
 */

const float32View = new Float32Array(1);
const uint32View = new Uint32Array(float32View.buffer);

/** All 65536 half values decoded once: a table lookup is the fastest decode in JS. */
const halfToFloatTable: Float32Array = (() => {
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const mantissa = bits & 0x3ff;
    let value: number;
    if (exponent === 0) value = mantissa * 2 ** -24;
    else if (exponent === 31) value = mantissa === 0 ? Infinity : NaN;
    else value = (1 + mantissa / 1024) * 2 ** (exponent - 15);
    table[bits] = sign * value;
  }
  return table;
})();

export function halfToFloat(bits: number): number {
  return halfToFloatTable[bits & 0xffff];
}

/** Round-to-nearest-even float32 -> float16 bits, with overflow to infinity and subnormals. */
export function floatToHalf(value: number): number {
  float32View[0] = value;
  const x = uint32View[0];
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 31) return sign | 0x7c00;
  if (halfExponent <= 0) {
    if (halfExponent < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - halfExponent;
    let halfMantissa = mantissa >>> shift;
    const remainder = mantissa & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (remainder > halfway || (remainder === halfway && (halfMantissa & 1))) halfMantissa++;
    return sign | halfMantissa;
  }
  let half = sign | (halfExponent << 10) | (mantissa >>> 13);
  const remainder = mantissa & 0x1fff;
  if (remainder > 0x1000 || (remainder === 0x1000 && (half & 1))) half++;
  return half;
}

export function halfArrayToFloat(source: Uint16Array, target: Float32Array = new Float32Array(source.length)): Float32Array {
  for (let i = 0; i < source.length; i++) target[i] = halfToFloatTable[source[i]];
  return target;
}

export function floatArrayToHalf(source: Float32Array, target: Uint16Array = new Uint16Array(source.length)): Uint16Array {
  for (let i = 0; i < source.length; i++) target[i] = floatToHalf(source[i]);
  return target;
}

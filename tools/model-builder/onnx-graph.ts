/**
 * A tiny helper for assembling ONNX graphs with onnx-proto (protobufjs static code).
 */
import onnxProto from 'onnx-proto';

export const onnx = onnxProto.onnx;
export type TensorProto = onnxProto.onnx.ITensorProto;
type NodeProto = onnxProto.onnx.INodeProto;
type AttributeProto = onnxProto.onnx.IAttributeProto;
type ValueInfoProto = onnxProto.onnx.IValueInfoProto;

export const DT = {
  FLOAT: 1,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
} as const;
export type ElemType = (typeof DT)[keyof typeof DT];

export type Attr =
  | { kind: 'i'; v: number }
  | { kind: 'f'; v: number }
  | { kind: 'ints'; v: number[] }
  | { kind: 's'; v: string };
export const I = (v: number): Attr => ({ kind: 'i', v });
export const F = (v: number): Attr => ({ kind: 'f', v });
export const IS = (v: number[]): Attr => ({ kind: 'ints', v });

function encodeAttr(name: string, a: Attr): AttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  switch (a.kind) {
    case 'i':
      return { name, type: T.INT, i: a.v };
    case 'f':
      return { name, type: T.FLOAT, f: a.v };
    case 'ints':
      return { name, type: T.INTS, ints: a.v };
    case 's':
      return { name, type: T.STRING, s: new TextEncoder().encode(a.v) };
  }
}

export type Dim = number | string;

export function valueInfo(name: string, elemType: ElemType, dims: Dim[]): ValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
      },
    },
  };
}

function bytesOf(a: Float32Array | BigInt64Array | Uint8Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

export interface WeightTensor {
  name: string;
  dims: number[];
  data: Float32Array;
}

export class GraphBuilder {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];
  /** float32 weights in creation order (these are the tensors that may go to external data). */
  readonly weights = new Map<string, WeightTensor>();
  private counter = 0;
  private constCache = new Map<string, string>();

  fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  /** Adds a node; returns its output names. */
  node(opType: string, inputs: string[], attrs: Record<string, Attr> = {}, outputs: number | string[] = 1): string[] {
    const base = this.fresh(`/${opType}`);
    const outs = typeof outputs === 'number' ? Array.from({ length: outputs }, (_, i) => `${base}_out${i}`) : outputs;
    this.nodes.push({
      name: base,
      opType,
      input: inputs,
      output: outs,
      attribute: Object.entries(attrs).map(([k, v]) => encodeAttr(k, v)),
    });
    return outs;
  }

  /** Adds a single-output node and returns the output name. */
  op(opType: string, inputs: string[], attrs: Record<string, Attr> = {}, output?: string): string {
    return this.node(opType, inputs, attrs, output === undefined ? 1 : [output])[0];
  }

  /** int64 constant (initializer), deduplicated by value. dims [] = scalar. */
  i64(values: number[], dims: number[] = [values.length]): string {
    const key = `i64:${dims.join('x')}:${values.join(',')}`;
    const hit = this.constCache.get(key);
    if (hit) return hit;
    const name = this.fresh('const_i64');
    this.initializers.push({
      name,
      dims,
      dataType: DT.INT64,
      rawData: bytesOf(BigInt64Array.from(values.map((v) => BigInt(v)))),
    });
    this.constCache.set(key, name);
    return name;
  }

  /** float32 constant (small, always stored inline), deduplicated by value. */
  f32(values: number[] | Float32Array, dims: number[] = [values.length]): string {
    const arr = values instanceof Float32Array ? values : Float32Array.from(values);
    const key = `f32:${dims.join('x')}:${Array.from(arr).join(',')}`;
    const hit = this.constCache.get(key);
    if (hit) return hit;
    const name = this.fresh('const_f32');
    this.initializers.push({ name, dims, dataType: DT.FLOAT, rawData: bytesOf(arr) });
    this.constCache.set(key, name);
    return name;
  }

  /** A named float32 weight. */
  weight(name: string, dims: number[], data: Float32Array): string {
    if (data.length !== dims.reduce((a, b) => a * b, 1)) throw new Error(`weight ${name}: size mismatch`);
    this.weights.set(name, { name, dims, data });
    this.initializers.push({ name, dims, dataType: DT.FLOAT, rawData: bytesOf(data) });
    return name;
  }
}

export interface ExternalDataResult {
  data: Uint8Array;
}

/**
 * Moves the float32 weights (not the small inline constants) of `initializers` into one external
 * data blob, following the ONNX external-data convention (dataLocation = EXTERNAL, externalData entries
 * location / offset / length). Offsets are aligned to 64 bytes, and to 4096 bytes for tensors of 1 MiB or
 * more, so that onnxruntime can memory-map them.
 */
export function moveToExternal(
  initializers: TensorProto[],
  weightNames: Set<string>,
  location: string,
): { initializers: TensorProto[]; data: Uint8Array } {
  const placed: { t: TensorProto; offset: number; bytes: Uint8Array }[] = [];
  let offset = 0;
  for (const t of initializers) {
    if (!weightNames.has(t.name ?? '')) continue;
    const bytes = t.rawData as Uint8Array;
    const align = bytes.byteLength >= 1 << 20 ? 4096 : 64;
    offset = Math.ceil(offset / align) * align;
    placed.push({ t, offset, bytes });
    offset += bytes.byteLength;
  }
  const data = new Uint8Array(offset);
  const byName = new Map<string, TensorProto>();
  for (const p of placed) {
    data.set(p.bytes, p.offset);
    byName.set(p.t.name ?? '', {
      name: p.t.name,
      dims: p.t.dims,
      dataType: p.t.dataType,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: location },
        { key: 'offset', value: String(p.offset) },
        { key: 'length', value: String(p.bytes.byteLength) },
      ],
    });
  }
  return { initializers: initializers.map((t) => byName.get(t.name ?? '') ?? t), data };
}

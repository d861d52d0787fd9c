/**
 * Load-time rewrite of an Optimum-style decoder graph so that each layer also outputs only the key/value
 * rows the step appends (`new_rows.N.key` / `new_rows.N.value`), next to `present.*`. A session run that
 * fetches `logits` and these outputs never copies the whole cache out of onnxruntime: the caller keeps
 * the past in its own buffers and writes the new rows in place (issue 25).
 *
 * The Concat is found by graph structure, not by node names: starting from each `present.*` output
 * (names from the model's metadata, see layout.ts), walk back through layout-only ops (Transpose, Cast,
 * Identity) to a `Concat` with two inputs, one of which leads back to the matching `past_key_values.*`
 * input; the other input is the new rows. Graphs that keep their KV inside one op (onnxruntime contrib
 * attention ops, merged decoders whose KV is built in If subgraphs) do not have that shape: the answer is
 * then "not rewritable" with the reason, and the caller keeps the full-present path.
 *
 * Models with external data: the rewritten bytes still reference the external file by location, so a
 * session must be created with that file passed along (`externalData` session option).
 */
import onnxProto from 'onnx-proto';
import { attendOverKvHeads } from './gqa-rewrite.ts';
import { keepLastLogits } from './logits-rewrite.ts';

const onnx = onnxProto.onnx;
type NodeProto = onnxProto.onnx.INodeProto;
type ValueInfoProto = onnxProto.onnx.IValueInfoProto;

/** Ops that move or convert a tensor without mixing positions; the Concat may sit behind any chain of them. */
const LAYOUT_OPS = new Set(['Transpose', 'Cast', 'Identity']);
/** Longest chain of layout ops followed between a Concat and `present.*` (or the past input and the Concat). */
const MAX_CHAIN = 8;
/** Sequence axis of `present.*`: `[batch, kv_heads, seq, head_dim]`. */
const SEQ_AXIS = 2;
const PRESENT_RANK = 4;

export interface KvNames {
  /** The logits output (only the LM head rewrite reads it). */
  logits?: string;
  pastKeys: readonly string[];
  pastValues: readonly string[];
  presentKeys: readonly string[];
  presentValues: readonly string[];
}

export type NewRowsRewrite =
  | {
      ok: true;
      /**
       * A serialized ModelProto holding only a graph with the added nodes and outputs. Appended to the
       * model's bytes (`withPatch`) it gives the rewritten model: a message field that appears twice is
       * merged by every protobuf parser, and the graph's repeated `node` and `output` fields are appended
       * to, so the initializers are never decoded into new buffers or written again (a model of several
       * GB would otherwise be held two or three times while it loads).
       */
      patch: Uint8Array;
      /** per layer, `[batch, kv_heads, sequence_length, head_dim]` in the dtype of present.* */
      newKeys: string[];
      newValues: string[];
    }
  | { ok: false; reason: string };

export const newRowsName = (layer: number, kind: 'key' | 'value') => `new_rows.${layer}.${kind}`;

const isDefaultDomain = (node: NodeProto) => !node.domain || node.domain === 'ai.onnx';

function describeNode(node: NodeProto): string {
  return `${isDefaultDomain(node) ? '' : `${node.domain}.`}${node.opType}${node.name ? ` "${node.name}"` : ''}`;
}

function intAttr(node: NodeProto, name: string): number | undefined {
  const attr = node.attribute?.find((a) => a.name === name);
  return attr?.i === undefined || attr.i === null ? undefined : Number(attr.i);
}

function intsAttr(node: NodeProto, name: string): number[] | undefined {
  const attr = node.attribute?.find((a) => a.name === name);
  return attr?.ints && attr.ints.length > 0 ? attr.ints.map(Number) : undefined;
}

/** Follows layout ops back from `name`; returns the first other producer (or none) and the chain, producer-first. */
function walkBack(name: string, producers: Map<string, NodeProto>): { source: string; node?: NodeProto; chain: NodeProto[] } {
  const chain: NodeProto[] = [];
  let current = name;
  for (let i = 0; i <= MAX_CHAIN; i++) {
    const node = producers.get(current);
    if (!node || !isDefaultDomain(node) || !LAYOUT_OPS.has(node.opType ?? '')) return { source: current, node, chain };
    chain.unshift(node);
    current = node.input?.[0] ?? '';
  }
  return { source: current, node: producers.get(current), chain };
}

/** Where the Concat's axis lands in present.* after the layout ops between them, or a reason it cannot be told. */
function axisAfterChain(axis: number, chain: NodeProto[]): number | string {
  let a = axis < 0 ? axis + PRESENT_RANK : axis;
  for (const node of chain) {
    if (node.opType !== 'Transpose') continue;
    const perm = intsAttr(node, 'perm') ?? Array.from({ length: PRESENT_RANK }, (_, i) => PRESENT_RANK - 1 - i);
    if (perm.length !== PRESENT_RANK) return `${describeNode(node)} has rank ${perm.length}, expected ${PRESENT_RANK}`;
    a = perm.indexOf(a);
  }
  return a;
}

interface Found {
  newRows: string;
  chain: NodeProto[];
}

function findNewRows(present: string, past: string, producers: Map<string, NodeProto>): Found | string {
  const back = walkBack(present, producers);
  if (!back.node) return `${present} is not computed by a node (it is ${back.source === present ? 'a graph input or initializer' : `fed from ${back.source}`})`;
  if (!isDefaultDomain(back.node) || back.node.opType !== 'Concat') {
    return `${present} is produced by ${describeNode(back.node)}, not by a Concat of past and new rows: the graph keeps its KV inside that op`;
  }
  const concat = back.node;
  const inputs = concat.input ?? [];
  if (inputs.length !== 2) return `${present}: ${describeNode(concat)} has ${inputs.length} inputs, expected past and new rows`;
  const fromPast = inputs.map((input) => walkBack(input, producers).source === past);
  if (fromPast[0] === fromPast[1]) {
    return `${present}: ${describeNode(concat)} ${fromPast[0] ? 'concatenates the past with itself' : `has no input that comes from ${past}`}`;
  }
  const axis = intAttr(concat, 'axis');
  if (axis === undefined) return `${present}: ${describeNode(concat)} has no axis`;
  const landed = axisAfterChain(axis, back.chain);
  if (typeof landed === 'string') return `${present}: ${landed}`;
  if (landed !== SEQ_AXIS) return `${present}: ${describeNode(concat)} appends along axis ${landed} of present, not the sequence axis ${SEQ_AXIS}`;
  return { newRows: inputs[fromPast[0] ? 1 : 0], chain: back.chain };
}

function newRowsValueInfo(name: string, present: ValueInfoProto | undefined): ValueInfoProto {
  const tensorType = present?.type?.tensorType;
  const dims = tensorType?.shape?.dim ?? [];
  return {
    name,
    type: {
      tensorType: {
        elemType: tensorType?.elemType,
        shape: dims.length === PRESENT_RANK ? { dim: dims.map((d, i) => (i === SEQ_AXIS ? { dimParam: 'sequence_length' } : d)) } : undefined,
      },
    },
  };
}

interface NewRowAdditions {
  nodes: NodeProto[];
  outputs: ValueInfoProto[];
  newKeys: string[];
  newValues: string[];
}

/** The nodes and outputs that give `new_rows.N.key/value`, or why the graph cannot have them. */
function newRowAdditions(model: onnxProto.onnx.IModelProto, names: KvNames): NewRowAdditions | string {
  const graph = model.graph;
  if (!graph) return 'the model has no graph';
  const nodes = graph.node ?? [];
  const producers = new Map<string, NodeProto>();
  for (const node of nodes) for (const output of node.output ?? []) producers.set(output, node);
  const outputsByName = new Map((graph.output ?? []).map((o) => [o.name ?? '', o]));
  const taken = new Set([...producers.keys(), ...(graph.input ?? []).map((i) => i.name ?? ''), ...(graph.initializer ?? []).map((t) => t.name ?? '')]);
  const layers = names.presentKeys.length;
  if (layers === 0 || names.presentValues.length !== layers || names.pastKeys.length !== layers || names.pastValues.length !== layers) {
    return 'past/present names do not pair up layer by layer';
  }

  const added: NodeProto[] = [];
  const addedOutputs: ValueInfoProto[] = [];
  const newKeys: string[] = [];
  const newValues: string[] = [];
  for (let layer = 0; layer < layers; layer++) {
    for (const kind of ['key', 'value'] as const) {
      const present = kind === 'key' ? names.presentKeys[layer] : names.presentValues[layer];
      const past = kind === 'key' ? names.pastKeys[layer] : names.pastValues[layer];
      const found = findNewRows(present, past, producers);
      if (typeof found === 'string') return found;
      const outName = newRowsName(layer, kind);
      if (taken.has(outName) || outputsByName.has(outName)) return `the graph already has a value named ${outName}`;
      // Apply the same layout ops to the new rows as to the concatenation, so they come out in present's layout and dtype.
      let current = found.newRows;
      found.chain.forEach((node, i) => {
        const output = i === found.chain.length - 1 ? outName : `${outName}/${node.opType}_${i}`;
        added.push({ ...node, name: `${outName}/${node.opType}_${i}`, input: [current, ...(node.input ?? []).slice(1)], output: [output] });
        current = output;
      });
      if (found.chain.length === 0) added.push({ name: `${outName}/Identity`, opType: 'Identity', input: [current], output: [outName] });
      addedOutputs.push(newRowsValueInfo(outName, outputsByName.get(present)));
      (kind === 'key' ? newKeys : newValues).push(outName);
    }
  }
  return { nodes: added, outputs: addedOutputs, newKeys, newValues };
}

/**
 * Adds `new_rows.N.key/value` outputs to a decoder ModelProto (bytes); `names` are the past/present names
 * read from the model's metadata. Nothing is changed when any layer does not have the Concat shape.
 */
export function addNewRowOutputs(modelBytes: Uint8Array, names: KvNames): NewRowsRewrite {
  const rewrite = rewriteDecoder(modelBytes, names, undefined, 0, false);
  if (!rewrite.ok) return rewrite;
  return { ok: true, patch: rewrite.patch, newKeys: rewrite.newKeys, newValues: rewrite.newValues };
}

export type DecoderRewrite =
  | {
      ok: true;
      /** The whole rewritten model, when existing nodes changed (grouped attention); else null and `patch` applies. */
      model: Uint8Array | null;
      /** With `model` null: the patch to append to the bytes (see NewRowsRewrite). */
      patch: Uint8Array;
      newKeys: string[];
      newValues: string[];
      /** MatMuls that attend over the KV heads instead of a repeated copy (gqa-rewrite.ts). */
      groupedMatmuls: number;
      /** The input that asks for the last positions' logits only (logits-rewrite.ts), or null with the reason. */
      logitsToKeep: string | null;
      logitsReason: string | null;
    }
  | { ok: false; reason: string };

/**
 * The in-place rewrite: new-row outputs, attention over the unrepeated KV heads where the graph
 * repeats them (`heads` query heads over the layout's `kvHeads`), and an LM head that can give the last
 * positions' logits only (`keepLogits`). Decoded once; the model is encoded whole only when nodes
 * changed, else the new-row additions are a patch.
 */
export function rewriteDecoder(modelBytes: Uint8Array, names: KvNames, heads: number | undefined, kvHeads: number, keepLogits = true): DecoderRewrite {
  const model = onnx.ModelProto.decode(modelBytes);
  const additions = newRowAdditions(model, names);
  if (typeof additions === 'string') return { ok: false, reason: additions };
  const { newKeys, newValues } = additions;
  const graph = model.graph!;
  const presents = new Set([...names.presentKeys, ...names.presentValues]);
  const groupedMatmuls = heads === undefined ? 0 : attendOverKvHeads(graph, heads, kvHeads, presents);
  const logits = keepLogits && names.logits ? keepLastLogits(graph, names.logits) : { reason: 'not asked for' };
  const logitsToKeep = 'input' in logits ? logits.input : null;
  const logitsReason = 'reason' in logits ? logits.reason : null;
  if (groupedMatmuls === 0 && !logitsToKeep) {
    const patch = onnx.ModelProto.encode({ graph: { node: additions.nodes, output: additions.outputs } }).finish();
    return { ok: true, model: null, patch, newKeys, newValues, groupedMatmuls, logitsToKeep, logitsReason };
  }
  graph.node = [...(graph.node ?? []), ...additions.nodes];
  graph.output = [...(graph.output ?? []), ...additions.outputs];
  return { ok: true, model: onnx.ModelProto.encode(model).finish(), patch: new Uint8Array(0), newKeys, newValues, groupedMatmuls, logitsToKeep, logitsReason };
}

/** The rewritten model: the original bytes with the patch appended (see NewRowsRewrite). */
export function withPatch(modelBytes: Uint8Array, patch: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(modelBytes.length + patch.length);
  bytes.set(modelBytes);
  bytes.set(patch, modelBytes.length);
  return bytes;
}

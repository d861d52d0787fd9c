/**
 * Load-time rewrite of the LM head so a call can ask for the logits of its last positions only, as
 * transformers' `logits_to_keep` does: a prefill chunk samples from its last position alone, yet the
 * exported graph multiplies every position's hidden state by the `[hidden, vocab]` head and copies
 * `[chunk, vocab]` floats out (a 400-token prompt on warmkv-brown: 6.5 MB, and about a fifth of the
 * chunk's multiply-adds). onnxruntime runs every node whatever the fetches (microsoft/onnxruntime#16483),
 * so the head's input itself is cut: a `Slice` of the last `warmkv_logits_to_keep` positions (a new
 * int64 `[1]` input) before the head's MatMul.
 *
 * Found by graph structure: from the logits output back through Cast / Identity and elementwise ops
 * with constant operands (a bias Add, a soft-capping Div / Tanh / Mul), to a MatMul whose second operand
 * is constant (an initializer, or Cast / Transpose of one: a tied embedding) and whose first is the
 * hidden state `// [batch, seq, hidden]`. Anything else is left as it is.
 */
import onnxProto from 'onnx-proto';

type NodeProto = onnxProto.onnx.INodeProto;
type GraphProto = onnxProto.onnx.IGraphProto;

export const LOGITS_TO_KEEP_INPUT = 'warmkv_logits_to_keep';

const isDefaultDomain = (node: NodeProto) => !node.domain || node.domain === 'ai.onnx';
/** Ops between the head and the logits output that act on each position alone. */
const PER_POSITION = new Set(['Cast', 'Identity', 'Add', 'Sub', 'Mul', 'Div', 'Tanh']);

/** Names computed from initializers and Constant nodes alone (nodes are in topological order). */
function constantNames(graph: GraphProto): Set<string> {
  const constant = new Set((graph.initializer ?? []).map((t) => t.name ?? ''));
  const inputs = new Set((graph.input ?? []).map((i) => i.name ?? ''));
  for (const name of inputs) constant.delete(name);
  for (const node of graph.node ?? []) {
    const operands = (node.input ?? []).filter((name) => name !== '');
    if (operands.every((name) => constant.has(name)) && (node.opType === 'Constant' || operands.length > 0)) {
      for (const output of node.output ?? []) constant.add(output);
    }
  }
  return constant;
}

/**
 * Cuts the LM head's input to the last `warmkv_logits_to_keep` positions, in place. Returns the new
 * input's name, or why the graph was left as it is.
 */
export function keepLastLogits(graph: GraphProto, logits: string): { input: string } | { reason: string } {
  const nodes = graph.node ?? [];
  const producers = new Map<string, NodeProto>();
  for (const node of nodes) for (const output of node.output ?? []) producers.set(output, node);
  const constant = constantNames(graph);
  let current = logits;
  let head: NodeProto | null = null;
  for (let hops = 0; hops < 8 && !head; hops++) {
    const node = producers.get(current);
    if (!node || !isDefaultDomain(node)) break;
    const operands = (node.input ?? []).filter((name) => name !== '');
    const varying = operands.filter((name) => !constant.has(name));
    if (node.opType === 'MatMul') {
      if (operands.length === 2 && constant.has(operands[1]) && !constant.has(operands[0])) head = node;
      break;
    }
    if (!PER_POSITION.has(node.opType ?? '') || varying.length !== 1) break;
    current = varying[0];
  }
  if (!head) return { reason: `no MatMul by a constant head found behind ${logits}` };
  // The position axis must be the hidden state's second to last: not a [batch * seq, hidden] flattening.
  const hiddenProducer = producers.get(head.input![0]);
  if (hiddenProducer && ['Reshape', 'Flatten', 'Squeeze'].includes(hiddenProducer.opType ?? '')) return { reason: `the head's input comes from a ${hiddenProducer.opType}` };
  const hiddenInfo = (graph.valueInfo ?? []).find((v) => v.name === head!.input![0]);
  const rank = hiddenInfo?.type?.tensorType?.shape?.dim?.length;
  if (rank !== undefined && rank !== 3) return { reason: `the head's input has rank ${rank}, not 3` };
  if ((graph.input ?? []).some((i) => i.name === LOGITS_TO_KEEP_INPUT)) return { reason: `${LOGITS_TO_KEEP_INPUT} is already an input` };
  const hidden = head.input![0];
  const cut = `${hidden}/warmkv_last_positions`;
  const int64 = onnxProto.onnx.TensorProto.DataType.INT64;
  const starts = `${LOGITS_TO_KEEP_INPUT}/negated`;
  graph.initializer = [
    ...(graph.initializer ?? []),
    // Slice clamps an end past the axis to its length.
    { name: `${LOGITS_TO_KEEP_INPUT}/ends`, dataType: int64, dims: [1], int64Data: [Number.MAX_SAFE_INTEGER] },
    { name: `${LOGITS_TO_KEEP_INPUT}/axes`, dataType: int64, dims: [1], int64Data: [-2] },
  ];
  const added: NodeProto[] = [
    { opType: 'Neg', input: [LOGITS_TO_KEEP_INPUT], output: [starts], name: 'warmkv_logits_to_keep_negate' },
    { opType: 'Slice', input: [hidden, starts, `${LOGITS_TO_KEEP_INPUT}/ends`, `${LOGITS_TO_KEEP_INPUT}/axes`], output: [cut], name: 'warmkv_last_positions' },
  ];
  head.input = [cut, head.input![1]];
  const at = nodes.indexOf(head);
  graph.node = [...nodes.slice(0, at), ...added, ...nodes.slice(at)];
  graph.input = [
    ...(graph.input ?? []),
    { name: LOGITS_TO_KEEP_INPUT, type: { tensorType: { elemType: int64, shape: { dim: [{ dimValue: 1 }] } } } },
  ];
  // The logits' position axis no longer follows input_ids' length.
  const output = (graph.output ?? []).find((o) => o.name === logits);
  const dims = output?.type?.tensorType?.shape?.dim;
  if (dims && dims.length === 3) dims[1] = { dimParam: 'logits_positions' };
  return { input: LOGITS_TO_KEEP_INPUT };
}

import { performance } from 'node:perf_hooks';
import { halfArrayToFloat } from '../lib/float16.ts';
import { UnsupportedModelError } from './layout.ts';
import { emptyKv, type Decoder, type DecoderOutput, type KvData, type KvTensors, type ModelCapabilities } from './types.ts';

export interface ProbeReport {
  capabilities: ModelCapabilities;
  /** Why a capability is false (the runtime's error, or how far the logits were off). */
  reasons: Partial<Record<keyof ModelCapabilities, string>>;
  durationMs: number;
}

/** Prompt tokens of the probes: small ids every vocabulary has, all different. */
const TOKENS = [1, 2, 3, 4];

/**
 * Logits may differ by float rounding between equivalent calls (fp16 exports, other kernels for other
 * shapes), never by this much relative to their range: a wrong mask moves them by whole units.
 */
const RELATIVE_TOLERANCE = 0.02;

class ProbeMismatch extends Error {}

function toFloat(logits: KvData): Float32Array {
  return logits instanceof Float32Array ? logits : halfArrayToFloat(logits);
}

/** Row `row` of `[batch, seq, vocab]` logits. */
function logitsRow(output: DecoderOutput, seqLength: number, batchRow: number, row: number): Float32Array {
  const offset = (batchRow * seqLength + row) * output.vocabSize;
  return toFloat(output.logits).subarray(offset, offset + output.vocabSize);
}

function assertClose(actual: Float32Array, expected: Float32Array): void {
  let range = 1;
  let worst = 0;
  for (let i = 0; i < expected.length; i++) {
    range = Math.max(range, Math.abs(expected[i]));
    worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  }
  if (worst > RELATIVE_TOLERANCE * range) throw new ProbeMismatch(`logits differ from the reference by ${worst.toPrecision(3)} (largest logit ${range.toPrecision(3)})`);
}

function release(kv: KvTensors): void {
  kv.device?.release();
}

/**
 * What the loaded export can do, found with a handful of 4-token calls at load: real exports (ONNX
 * Runtime GenAI's model builder among them) cannot always take several new tokens over a non-empty
 * past, several rows, or rows with leading masked slots. Each probe compares its logits with a plain
 * one-shot call, so a capability is true only when the call both runs and gives the same answer.
 * The one-shot call itself must work: a model that cannot run a prompt from an empty past is refused.
 */
export async function probeCapabilities(decoder: Decoder): Promise<ProbeReport> {
  const startMs = performance.now();
  const layout = decoder.io.kv;
  const n = TOKENS.length;
  const ids = (tokens: number[]) => BigInt64Array.from(tokens, BigInt);
  const ones = (count: number) => new BigInt64Array(count).fill(1n);
  const positions = (from: number, count: number) => BigInt64Array.from({ length: count }, (_, i) => BigInt(from + i));
  const quiet = { quiet: true };

  let reference: DecoderOutput;
  try {
    reference = await decoder.run(
      { batchSize: 1, seqLength: n, inputIds: ids(TOKENS), attentionMask: ones(n), positionIds: positions(0, n), past: emptyKv(layout, 1) },
      quiet,
    );
  } catch (error) {
    throw new UnsupportedModelError(`the model cannot run a ${n}-token prompt from an empty past: ${(error as Error).message.split('\n')[0]}`);
  }
  release(reference.present);
  const expected = logitsRow(reference, n, 0, n - 1).slice();

  const reasons: ProbeReport['reasons'] = {};
  const attempt = async (name: keyof ModelCapabilities, probe: () => Promise<void>): Promise<boolean> => {
    try {
      await probe();
      return true;
    } catch (error) {
      reasons[name] = (error as Error).message.split('\n')[0];
      return false;
    }
  };

  const multiTokenOverPast = await attempt('multiTokenOverPast', async () => {
    const half = n / 2;
    const first = await decoder.run(
      { batchSize: 1, seqLength: half, inputIds: ids(TOKENS.slice(0, half)), attentionMask: ones(half), positionIds: positions(0, half), past: emptyKv(layout, 1) },
      quiet,
    );
    let second: DecoderOutput;
    try {
      second = await decoder.run(
        { batchSize: 1, seqLength: n - half, inputIds: ids(TOKENS.slice(half)), attentionMask: ones(n), positionIds: positions(half, n - half), past: first.present },
        quiet,
      );
    } catch (error) {
      release(first.present);
      throw error;
    }
    release(second.present);
    assertClose(logitsRow(second, n - half, 0, n - half - 1), expected);
  });

  const batched = await attempt('batched', async () => {
    const output = await decoder.run(
      { batchSize: 2, seqLength: n, inputIds: ids([...TOKENS, ...TOKENS]), attentionMask: ones(2 * n), positionIds: ids([0, 1, 2, 3, 0, 1, 2, 3]), past: emptyKv(layout, 2) },
      quiet,
    );
    release(output.present);
    for (const row of [0, 1]) assertClose(logitsRow(output, n, row, n - 1), expected);
  });

  const pad = 2;
  const leftPadding = await attempt('leftPadding', async () => {
    const mask = ones(pad + n).fill(0n, 0, pad); // [1, pad + n]: two masked slots first
    const output = await decoder.run(
      { batchSize: 1, seqLength: pad + n, inputIds: ids([0, 0, ...TOKENS]), attentionMask: mask, positionIds: ids([0, 0, 0, 1, 2, 3]), past: emptyKv(layout, 1) },
      quiet,
    );
    release(output.present);
    assertClose(logitsRow(output, pad + n, 0, pad + n - 1), expected);
  });

  return { capabilities: { multiTokenOverPast, batched, leftPadding }, reasons, durationMs: performance.now() - startMs };
}

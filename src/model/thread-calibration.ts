/**
 * The default intra-op thread count, measured rather than assumed: a second thread halves a large step
 * but more than doubles the CPU of a tiny one (and makes it slower on shared cores), so at load the
 * decoder is opened at 1, 2, 4 ... threads (up to the cores there are) and a few single-token decode
 * steps are timed on each, one after the other. Each doubling must win by MIN_GAIN or the climb stops;
 * the fastest stays, the others are released. On busy shared cores the timings swing, so the choice can
 * differ between starts; INTRA_OP_THREADS fixes it.
 */
import type { Decoder, DecoderStep, KvLayout } from './types.ts';
import { allocateKvData, kvElementCount } from './types.ts';

/** A doubling must be this much faster per step to be worth its threads. */
const MIN_GAIN = 0.15;
const WARMUP_STEPS = 5;
const TIMED_ROUNDS = 10;
/** The probe step decodes one token after this many cached ones (a short conversation). */
const PROBE_PAST = 64;

export interface ThreadChoice<D extends Decoder> {
  decoder: D;
  threads: number;
  /** Median ms of a probe step per thread count tried. */
  stepMs: Record<number, number>;
}

/** 1, 2, 4 ... up to `cores` (and `cores` itself when it is not a power of two). */
export function threadCandidates(cores: number): number[] {
  const out: number[] = [];
  for (let t = 1; t < cores; t *= 2) out.push(t);
  out.push(Math.max(1, cores));
  return out;
}

/** One token after PROBE_PAST zero keys and values. */
export function probeStep(kv: KvLayout, past = PROBE_PAST): DecoderStep {
  const elements = kvElementCount(kv, 1, past);
  const layers = Array.from({ length: kv.numLayers }, () => ({ key: allocateKvData(kv.dtype, elements), value: allocateKvData(kv.dtype, elements) }));
  return {
    batchSize: 1,
    seqLength: 1,
    inputIds: BigInt64Array.of(0n),
    attentionMask: new BigInt64Array(past + 1).fill(1n),
    positionIds: BigInt64Array.of(BigInt(past)),
    past: { batchSize: 1, length: past, layers },
  };
}

async function timeStep(decoder: Decoder, step: DecoderStep): Promise<number> {
  const started = performance.now();
  await decoder.run(step, { quiet: true });
  return performance.now() - started;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * Median ms of the probe step on `decoder` after a warm-up. Candidates are timed one after the other,
 * never interleaved: a multi-threaded session's workers spin after each run and would slow whichever
 * session runs next on the same cores.
 */
async function stepCost(decoder: Decoder, step: DecoderStep): Promise<number> {
  for (let i = 0; i < WARMUP_STEPS; i++) await timeStep(decoder, step);
  const times: number[] = [];
  for (let i = 0; i < TIMED_ROUNDS; i++) times.push(await timeStep(decoder, step));
  return median(times);
}

/** Median ms of one probe decode step (one token after PROBE_PAST cached ones) on `decoder`, after a warm-up. */
export function probeStepMs(decoder: Decoder): Promise<number> {
  return stepCost(decoder, probeStep(decoder.io.kv));
}

/** Opens the decoder at rising thread counts and keeps the fastest (see the file comment). */
export async function calibrateThreads<D extends Decoder>(open: (threads: number) => Promise<D>, cores: number): Promise<ThreadChoice<D>> {
  const candidates = threadCandidates(cores);
  let best = await open(candidates[0]);
  let bestThreads = candidates[0];
  const stepMs: Record<number, number> = {};
  if (candidates.length === 1) return { decoder: best, threads: bestThreads, stepMs };
  const step = probeStep(best.io.kv);
  try {
    stepMs[bestThreads] = await stepCost(best, step);
  } catch {
    // A model the probe step does not fit (its own errors show on the first real request): no calibration.
    return { decoder: best, threads: bestThreads, stepMs };
  }
  for (const threads of candidates.slice(1)) {
    const next = await open(threads);
    stepMs[threads] = await stepCost(next, step).catch(async (error: unknown) => {
      await next.dispose();
      throw error;
    });
    if (stepMs[threads] > stepMs[bestThreads] * (1 - MIN_GAIN)) {
      await next.dispose();
      break;
    }
    await best.dispose();
    best = next;
    bestThreads = threads;
  }
  return { decoder: best, threads: bestThreads, stepMs };
}

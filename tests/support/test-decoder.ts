/**
 * The one test wrapper around a real Decoder. Each behaviour is an option (and, where a test changes it
 * mid-test, a public field): sleep before calls, hold one decode call at a gate, inject a fault, force a
 * token, record every call, return KV outputs that behave like device memory, or count disposes while
 * keeping the real decoder alive.
 */
import type { Decoder, DecoderOutput, DecoderStep, DeviceKv, KvData } from '../../src/model/index.ts';

export interface TestDecoderOptions {
  /** Sleep before decode calls (seqLength 1). */
  decodeDelayMs?: number;
  /** Sleep before prefill calls (seqLength > 1). */
  prefillDelayMs?: number;
  /** Sleep before every call: a fixed time or one computed from the step; overrides the two above. */
  delayMs?: number | ((step: DecoderStep) => number);
  /** Throw `faultMessage` when this returns true; `call` counts every call from 1. */
  failWhen?: (step: DecoderStep, call: number) => boolean;
  faultMessage?: string;
  /** Make this token the most likely one at every position. */
  forceToken?: number;
  /** Remember every call's step and output in `recorded`. */
  record?: boolean;
  /**
   * KV outputs behave like device memory (as with WebGPU's gpu-buffer outputs): the returned present has
   * no host layers, only a handle that can be fed back once or downloaded once, so engine code that reads
   * device KV as host arrays, or uses it twice, fails loudly.
   */
  deviceLike?: boolean;
  /**
   * `dispose` is counted but not passed on: for tests whose runtimes share one loaded model, where
   * releasing its ONNX session would break the next test.
   */
  keepInner?: boolean;
}

export class TestDecoder implements Decoder {
  /** Every call. */
  calls = 0;
  /** Decode calls (seqLength 1), counted from the last `hold`. */
  decodeCalls = 0;
  readonly recorded: Array<{ step: DecoderStep; output: DecoderOutput }> = [];
  /** Device-like only: how many device KV handles were downloaded to the host, and steps fed device KV. */
  downloads = 0;
  deviceSteps = 0;
  /** `dispose` calls. */
  disposed = 0;
  decodeDelayMs: number;
  prefillDelayMs: number;
  delayMs: number | ((step: DecoderStep) => number) | undefined;
  failWhen: ((step: DecoderStep, call: number) => boolean) | null;
  forceToken: number | null;
  private readonly faultMessage: string;
  private gate: { at: number; reached: () => void; opened: Promise<void> } | null = null;

  constructor(
    private readonly inner: Decoder,
    private readonly options: TestDecoderOptions = {},
  ) {
    this.decodeDelayMs = options.decodeDelayMs ?? 0;
    this.prefillDelayMs = options.prefillDelayMs ?? 0;
    this.delayMs = options.delayMs;
    this.failWhen = options.failWhen ?? null;
    this.forceToken = options.forceToken ?? null;
    this.faultMessage = options.faultMessage ?? 'injected fault: secret internals';
  }

  /** Device-like KV has no new-row outputs, as on WebGPU (onnx-decoder.ts does not rewrite there): the engine runs concat. */
  get io() {
    if (!this.options.deviceLike || !this.inner.io.newRows) return this.inner.io;
    const { newRows: _, ...io } = this.inner.io;
    return io;
  }

  get executionProvider() {
    return this.options.deviceLike ? 'device-like' : this.inner.executionProvider;
  }

  /** Holds the `call`-th decode call from now on until `release` is called. */
  hold(call: number): { reached: Promise<void>; release: () => void } {
    this.decodeCalls = 0;
    let reached!: () => void;
    let release!: () => void;
    const whenReached = new Promise<void>((resolve) => (reached = resolve));
    const opened = new Promise<void>((resolve) => (release = resolve));
    this.gate = { at: call, reached, opened };
    return {
      reached: whenReached,
      release: () => {
        this.gate = null;
        release();
      },
    };
  }

  async run(step: DecoderStep): Promise<DecoderOutput> {
    const call = ++this.calls;
    const decoding = step.seqLength === 1;
    if (decoding) this.decodeCalls++;
    const delay = this.delayFor(step);
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    const gate = this.gate;
    if (decoding && gate && this.decodeCalls === gate.at) {
      gate.reached();
      await gate.opened;
    }
    if (this.failWhen?.(step, call)) throw new Error(this.faultMessage);
    const output = this.options.deviceLike ? await this.runDeviceLike(step) : await this.inner.run(step);
    if (this.forceToken !== null && output.logits instanceof Float32Array) {
      for (let row = 0; row < step.batchSize * step.seqLength; row++) output.logits[row * output.vocabSize + this.forceToken] = 1e9;
    }
    if (this.options.record) this.recorded.push({ step, output });
    return output;
  }

  async dispose() {
    this.disposed++;
    if (!this.options.keepInner) await this.inner.dispose();
  }

  private delayFor(step: DecoderStep): number {
    if (typeof this.delayMs === 'function') return this.delayMs(step);
    if (this.delayMs !== undefined) return this.delayMs;
    return step.seqLength > 1 ? this.prefillDelayMs : this.decodeDelayMs;
  }

  private async runDeviceLike(step: DecoderStep): Promise<DecoderOutput> {
    let past = step.past;
    const handle = past.device as FakeDeviceKv | undefined;
    if (handle) {
      past = { batchSize: past.batchSize, length: past.length, layers: handle.use() };
      this.deviceSteps++;
    }
    const output = await this.inner.run({ ...step, past });
    handle?.release();
    const device = new FakeDeviceKv(output.present.layers, () => this.downloads++);
    return { ...output, present: { batchSize: output.present.batchSize, length: output.present.length, layers: [], device } };
  }
}

export function wrapDecoder(inner: Decoder, options: TestDecoderOptions = {}): TestDecoder {
  return new TestDecoder(inner, options);
}

class FakeDeviceKv implements DeviceKv {
  private gone = false;
  constructor(
    private readonly layers: Array<{ key: KvData; value: KvData }>,
    private readonly onDownload: () => void,
  ) {}
  use() {
    if (this.gone) throw new Error('device KV used after it was consumed or freed');
    return this.layers;
  }
  async download() {
    const layers = this.use();
    this.gone = true;
    this.onDownload();
    return layers;
  }
  release() {
    this.gone = true;
  }
}

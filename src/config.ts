/**
 * Every setting of the server: one zod schema, filled from environment variables and CLI flags
 * (`--kv-cache-bytes 2GiB` equals `KV_CACHE_BYTES=2GiB`; flags win). Pure: main.ts passes the inputs.
 */
import { z } from 'zod';

export const DEFAULT_MODEL_DIR = 'models/warmkv-chat';

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1, k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  ki: 1024, kib: 1024, mi: 1024 ** 2, mib: 1024 ** 2, gi: 1024 ** 3, gib: 1024 ** 3, ti: 1024 ** 4, tib: 1024 ** 4,
};

/** "2GiB", "512mb", "1e9", "1073741824" -> bytes. */
export function parseByteSize(text: string): number | null {
  const match = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  if (!match) return null;
  const unit = SIZE_UNITS[match[2].toLowerCase()];
  if (unit === undefined) return null;
  return Math.floor(Number(match[1]) * unit);
}

const byteSize = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const bytes = typeof value === 'number' ? value : parseByteSize(value);
  if (bytes === null || !Number.isFinite(bytes) || bytes <= 0) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not a size (examples: 2GiB, 512MB, 1073741824)` });
    return z.NEVER;
  }
  return bytes;
});

const boolish = z
  .union([z.boolean(), z.string().transform((v) => v.trim().toLowerCase()).pipe(z.enum(['true', 'false', '1', '0', 'yes', 'no']))])
  .transform((v) => v === true || v === 'true' || v === '1' || v === 'yes');
/** Numbers from text: blank means unset (the default applies); anything else must parse. */
const numeric = (schema: z.ZodNumber) =>
  z.preprocess((v) => (typeof v === 'string' ? (v.trim() === '' ? undefined : Number(v.trim())) : v), schema);
const int = (min: number, max = Number.MAX_SAFE_INTEGER) => numeric(z.number().int().min(min).max(max));
const seconds = numeric(z.number().min(0));
const list = z.union([z.array(z.string()), z.string()]).transform((v) => (Array.isArray(v) ? v : v.split(',')).map((s) => s.trim()).filter(Boolean));

export const configSchema = z.object({
  port: int(0, 65535).default(8080),
  host: z.string().min(1).default('0.0.0.0'),
  /** Hugging Face-style model folder. */
  model: z.string().min(1).default(DEFAULT_MODEL_DIR),
  /** Name clients send as `model`; defaults to the folder name. */
  modelId: z.string().min(1).optional(),
  executionProvider: z.enum(['cpu', 'cuda', 'webgpu']).default('cpu'),
  /** When the provider cannot start (no GPU visible), log it and run on the CPU instead of exiting. */
  executionProviderFallback: boolish.default(false),
  intraOpThreads: int(1).optional(),
  /**
   * Where onnxruntime runs a step: `main` (the event loop's thread: nothing else runs during a step),
   * `worker` (a thread of its own; the event loop serves HTTP meanwhile, for a message each way per step),
   * or `auto`: the worker when a probe decode step at load takes at least DECODER_WORKER_MIN_STEP_MS.
   */
  decoderThread: z.enum(['main', 'worker', 'auto']).default('auto'),
  /** `DECODER_THREAD=auto`: the probe step length (ms) from which a step on the main thread costs more than the worker's messages. */
  decoderWorkerMinStepMs: int(0).default(10),
  /**
   * `worker`: a second session of the model on a thread of its own runs long prompts' prefill chunks
   * while the main decoder keeps stepping the running streams (src/engine/prefill-lane.ts), for the cost
   * of a second copy of the weights and PREFILL_LANE_THREADS cores taken from the decoder. `off`: every
   * chunk runs between the decode steps.
   */
  prefillLane: z.enum(['off', 'worker']).default('off'),
  prefillLaneThreads: int(1).default(1),

  /** Bytes all in-memory KV caches may use together; default half the free memory at start. */
  kvCacheBytes: byteSize.optional(),
  kvBlockTokens: int(1, 4096).default(16),
  maxBatchSize: int(1, 1024).default(32),
  maxQueue: int(0).default(256),
  queueTimeoutSeconds: seconds.default(120),
  prefillChunkTokens: int(1).default(512),
  /**
   * How running sequences keep their KV (issue 25): `inplace` (pre-allocated buffers written with only
   * the new rows; graphs without the Concat shape fall back to concat, logged) or `concat` (the whole
   * present fed back every step).
   */
  kvMode: z.enum(['concat', 'inplace']).default('inplace'),
  /** `inplace` only: the buffers' capacity grows in whole blocks of this many slots, up to the context. */
  kvCapacityBlock: int(1, 65536).default(64),

  /** Context the model sees; default the model's own (max_position_embeddings / n_positions). */
  maxContextTokens: int(8).optional(),
  sinkTokens: int(0).default(4),
  /** Tokens dropped at once when the window is full; default a quarter of the context. */
  windowDropTokens: int(1).optional(),
  windowStrategy: z.enum(['auto', 'shift', 'recompute']).default('auto'),
  /**
   * What a request that does not say gets when its sequence outgrows the context. Unset: sessions
   * slide (`auto`), requests without a session are refused (`error`, as OpenAI).
   */
  defaultTruncation: z.enum(['auto', 'error']).optional(),

  maxBodyBytes: byteSize.default(4 * 1024 * 1024),
  /** Largest prompt (on the append API: the appended part) in tokens; default 4x the context. */
  maxPromptTokens: int(1).optional(),
  /** Largest transcript a session may grow to by a request's prompt (an append or a replace); default 64x the context. */
  maxSessionTokens: int(1).optional(),
  /** Largest max_tokens a request may ask for. */
  maxTokensLimit: int(1).default(4096),
  /** max_tokens of a chat request that does not set it (completions default to 16, as OpenAI). */
  defaultChatMaxTokens: int(1).default(128),
  maxStopSequences: int(0).default(16),
  /** Most choices (`n`) one completions or chat request may ask for. */
  maxN: int(1).default(16),

  /**
   * Automatic prefix caching: a request without a session keeps its cache as an anonymous entry of its
   * API key, which a later stateless prompt starting with it reuses (docs/api.md). `off`: one-off caches.
   */
  prefixCache: z.preprocess((v) => (typeof v === 'string' ? v.trim().toLowerCase() : v), z.enum(['on', 'off'])).default('on'),
  /** Anonymous prefix entries kept at most (all keys together); the least recently used idle one goes first. */
  prefixCacheEntries: int(1).default(256),

  snapshotDir: z.string().min(1).optional(),
  /** redis://... : sessions (transcript, window, version) live in Redis, shared by a fleet of replicas; unset: this process only. */
  sessionStoreUrl: z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL').optional(),
  /** How long a turn's lease on a shared session lasts unrenewed: after a replica dies, its session is busy this long. */
  sessionLeaseSeconds: seconds.default(10),
  /**
   * Whether idle sessions pass through the int8 tier (lossy) before disk / eviction (exact): true,
   * false, or auto (a measured gate at load decides per model: greedy agreement and perplexity drift).
   */
  int8Tier: z
    .preprocess((v) => (typeof v === 'string' && v.trim().toLowerCase() === 'auto' ? 'auto' : v), z.union([z.literal('auto'), boolish]))
    .default('auto'),
  /** Most bytes the snapshot folder may hold; least recently used files are removed first. */
  snapshotMaxBytes: byteSize.default(10 * 1024 ** 3),
  /**
   * Most snapshot writes queued or under way in the background writer; a demotion to disk beyond it
   * drops the session to its transcript instead (recomputed on demand), so memory is never held waiting.
   */
  snapshotWriteQueue: int(1).default(8),
  /** Idle time before a hot session is quantized to int8, if memory is not needed sooner; 0 = only under pressure. */
  int8AfterSeconds: seconds.default(0),
  /** Idle time after which a session is deleted (memory and snapshot); 0 keeps sessions until deleted. */
  sessionIdleSeconds: seconds.default(86400),
  streamResumeSeconds: seconds.default(60),
  /** How long a stored response (POST /v1/responses, store: true) is kept after it was created; 0 keeps it until deleted. */
  responseTtlSeconds: seconds.default(30 * 86400),
  /** Stored responses per API key; the oldest is dropped beyond it. */
  maxResponsesPerKey: int(1).default(10000),
  drainSeconds: seconds.default(30),

  apiKeys: list.default([]),
  apiKeysFile: z.string().min(1).optional(),
  metricsRequireKey: boolish.default(false),
  /** The web playground at /playground (and / redirecting there); off for production with PLAYGROUND=false. */
  playground: boolish.default(true),
  maxSessionsPerKey: int(1).default(1000),
  maxStreamsPerKey: int(1).default(64),
  /** Browser origins allowed to call the API (CORS); `*` for any; empty: no CORS headers, no preflight. */
  corsOrigins: list.default([]),

  /** Time a client has to send its request headers; 0 = no limit. */
  headersTimeoutSeconds: seconds.default(10),
  /** Time a client has to send its whole request (headers and body); 0 = no limit. Responses are not limited. */
  requestTimeoutSeconds: seconds.default(60),
  /** Time an idle keep-alive connection is kept open between requests. */
  keepAliveTimeoutSeconds: seconds.default(5),
  /** Open connections at most; further ones are closed at once. 0 = no limit. */
  maxConnections: int(0).default(1024),

  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
});

export type Config = z.infer<typeof configSchema>;
type ConfigKey = keyof z.input<typeof configSchema>;

const KEYS = Object.keys(configSchema.shape) as ConfigKey[];
/** Settings a bare flag (`--metrics-require-key`) switches on. */
const BOOLEAN_KEYS = new Set<string>(['executionProviderFallback', 'metricsRequireKey', 'int8Tier', 'playground']);

/** `kvCacheBytes` -> `KV_CACHE_BYTES` and `--kv-cache-bytes`. */
export function envName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase();
}

export function flagName(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

/** Environment names kept for compatibility with common conventions. */
const ENV_ALIASES: Partial<Record<ConfigKey, string>> = { model: 'MODEL_DIR' };

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function parseArgs(argv: readonly string[]): Record<string, string | boolean> {
  const byFlag = new Map(KEYS.map((k) => [flagName(k), k]));
  const values: Record<string, string | boolean> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const key = byFlag.get(flag);
    if (!key) throw new ConfigError(`unknown option ${flag}; run with --help for the list`);
    if (inline !== undefined) values[key] = inline;
    else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) values[key] = argv[++i];
    else if (BOOLEAN_KEYS.has(key)) values[key] = true;
    else throw new ConfigError(`invalid configuration:\n  ${envName(key)} / ${flag}: needs a value`);
  }
  return values;
}

export function loadConfig(env: Record<string, string | undefined>, argv: readonly string[] = []): Config {
  const input: Record<string, unknown> = {};
  // Empty variables count as unset (compose files often pass `NAME=${NAME}`).
  const read = (name: string | undefined) => (name !== undefined && env[name] !== '' ? env[name] : undefined);
  for (const key of KEYS) {
    const value = read(envName(key)) ?? read(ENV_ALIASES[key]);
    if (value !== undefined) input[key] = value;
  }
  Object.assign(input, parseArgs(argv));
  const parsed = configSchema.safeParse(input);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const key = String(issue.path[0] ?? '');
      return `  ${envName(key)} / ${flagName(key)}: ${issue.message}`;
    });
    throw new ConfigError(`invalid configuration:\n${problems.join('\n')}`);
  }
  const { headersTimeoutSeconds: headers, requestTimeoutSeconds: request } = parsed.data;
  // Node refuses a headers timeout longer than the request timeout that contains it.
  if (request > 0 && headers > request) {
    throw new ConfigError(`invalid configuration:\n  HEADERS_TIMEOUT_SECONDS / --headers-timeout-seconds: must not exceed REQUEST_TIMEOUT_SECONDS (${request})`);
  }
  return parsed.data;
}

/** Half the memory free at start, at most 64 GiB: room for activations, the model and the heap. */
export function defaultKvCacheBytes(freeMemoryBytes: number): number {
  return Math.max(64 * 1024 * 1024, Math.min(Math.floor(freeMemoryBytes / 2), 64 * 1024 ** 3));
}

export function helpText(): string {
  const lines = ['Usage: npm start -- [options]   (every option is also an environment variable)', ''];
  for (const key of KEYS) {
    const field = configSchema.shape[key as keyof typeof configSchema.shape];
    const fallback = field.safeParse(undefined);
    const def = fallback.success && fallback.data !== undefined ? ` (default ${JSON.stringify(fallback.data)})` : '';
    lines.push(`  ${flagName(key).padEnd(34)} ${envName(key)}${ENV_ALIASES[key as ConfigKey] ? ` or ${ENV_ALIASES[key as ConfigKey]}` : ''}${def}`);
  }
  return lines.join('\n');
}

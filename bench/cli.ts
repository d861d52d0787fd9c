/**
 * Option parsing for every benchmark: node:util parseArgs plus a `--help` that lists each option with
 * its default, and a usage error (exit 2) instead of a stack trace for an unknown or malformed option.
 */
import { parseArgs } from 'node:util';

export interface BenchOption {
  type: 'string' | 'boolean';
  default?: string | boolean | string[];
  multiple?: boolean;
  /** Placeholder shown after a string option in --help, e.g. N or DIR. */
  value?: string;
  help: string;
}

type Values<O extends Record<string, BenchOption>> = {
  [K in keyof O]: O[K]['multiple'] extends true ? string[] : O[K]['type'] extends 'boolean' ? boolean : O[K]['default'] extends string ? string : string | undefined;
};

export function benchUsage(name: string, summary: string, options: Record<string, BenchOption>): string {
  const lines = [`usage: npm run bench -- ${name} [options]`, '', summary, '', 'options:'];
  const entries = Object.entries({ ...options, help: { type: 'boolean', help: 'print this help and exit' } as BenchOption });
  const labels = entries.map(([flag, option]) => `--${flag}${option.type === 'string' ? ` ${option.value ?? 'VALUE'}` : ''}`);
  const width = Math.max(...labels.map((label) => label.length)) + 2;
  entries.forEach(([, option], index) => {
    const fallback = option.default === undefined || option.default === false || (Array.isArray(option.default) && option.default.length === 0) ? '' : ` (default ${Array.isArray(option.default) ? option.default.join(',') : option.default})`;
    const repeat = option.multiple ? ' (repeatable)' : '';
    lines.push(`  ${labels[index].padEnd(width)}${option.help}${fallback}${repeat}`);
  });
  return lines.join('\n');
}

/** Parses process.argv after `npm run bench -- <name>`; prints help and exits on --help. */
export function parseBenchArgs<O extends Record<string, BenchOption>>(name: string, summary: string, options: O): Values<O> {
  const config: Record<string, { type: 'string' | 'boolean'; default?: string | boolean | string[]; multiple?: boolean }> = { help: { type: 'boolean', default: false } };
  for (const [flag, option] of Object.entries(options)) {
    config[flag] = { type: option.type, ...(option.default !== undefined ? { default: option.default } : {}), ...(option.multiple ? { multiple: true } : {}) };
  }
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args: process.argv.slice(3), options: config, allowPositionals: false }));
  } catch (error) {
    console.error(`bench ${name}: ${(error as Error).message}\n\n${benchUsage(name, summary, options)}`);
    process.exit(2);
  }
  if (values.help) {
    console.log(benchUsage(name, summary, options));
    process.exit(0);
  }
  return values as Values<O>;
}

/** The model folder and onnxruntime thread count that most benchmarks take: spread them first into the options. */
export const MODEL_OPTIONS = {
  model: { type: 'string', value: 'DIR', help: 'model folder' },
  threads: { type: 'string', default: '2', value: 'N', help: 'onnxruntime intra-op threads' },
} satisfies Record<string, BenchOption>;

/** `--kv-mode`: the engine's KV_MODE (issue 25); the decoder is loaded with new-row outputs for `inplace`. */
export const KV_MODE_OPTION = {
  'kv-mode': { type: 'string', default: 'inplace', value: 'concat|inplace', help: 'KV_MODE of the engine (the result file names the mode)' },
} satisfies Record<string, BenchOption>;

/** The `--kv-mode` value, checked (exit 2 on anything else). */
export function kvModeOf(value: string | undefined): 'concat' | 'inplace' {
  if (value === 'concat' || value === 'inplace') return value;
  console.error(`--kv-mode must be concat or inplace, got ${value}`);
  process.exit(2);
}

/** `--repeats N`: runs per measurement, of which the median is reported. */
export function repeatsOption(defaultRepeats: string) {
  return { type: 'string', default: defaultRepeats, value: 'N', help: 'runs per measurement (the median is reported)' } satisfies BenchOption;
}

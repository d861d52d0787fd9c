/** Test support for the security and fault tests: a logger that keeps its lines, and an app built with it. */
import { loadConfig } from '../../src/config.ts';
import type { Logger } from '../../src/lib/logger.ts';
import type { Decoder } from '../../src/model/index.ts';
import { Runtime } from '../../src/runtime.ts';
import { createApp } from '../../src/server/app.ts';
import { LLAMA, testModel, testModelDir } from '../support/fixtures.ts';

export interface CapturedLogger {
  logger: Logger;
  lines: Array<{ level: string; message: string; fields: Record<string, unknown> }>;
  text(): string;
}

/** A logger that keeps every line, with the fields of its parents. */
export function captureLogger(): CapturedLogger {
  const lines: CapturedLogger['lines'] = [];
  const make = (base: Record<string, unknown>): Logger => {
    const at = (level: string) => (fields: Record<string, unknown>, message: string) => lines.push({ level, message, fields: { ...base, ...fields } });
    return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: (fields) => make({ ...base, ...fields }) };
  };
  return { logger: make({}), lines, text: () => lines.map((l) => `${l.level} ${l.message} ${JSON.stringify(l.fields)}`).join('\n') };
}

/** Like helpers.ts makeApp, with a logger for the runtime and the app (makeRuntime passes none). */
export async function appWithLogger(settings: Record<string, string>, logger: Logger, wrapDecoder?: (decoder: Decoder) => Decoder) {
  const dir = await testModelDir(LLAMA);
  const argv = ['--model', dir, '--kv-cache-bytes', '64MiB'];
  for (const [key, value] of Object.entries(settings)) argv.push(`--${key}`, value);
  const runtime = new Runtime(loadConfig({}, argv), { load: () => testModel(LLAMA), logger, processMetrics: false, wrapDecoder });
  await runtime.ready;
  return { runtime, app: createApp(runtime, { logger }) };
}

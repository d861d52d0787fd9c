/** Test support for the security and fault tests: a logger that keeps its lines, and an app built with it. */
import type { Logger } from '../../src/lib/logger.ts';
import type { Decoder } from '../../src/model/index.ts';
import { makeApp } from './helpers.ts';

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

/** helpers.ts makeApp with one logger for the runtime and the app. */
export async function appWithLogger(settings: Record<string, string>, logger: Logger, wrapDecoder?: (decoder: Decoder) => Decoder) {
  return makeApp({ settings, logger, runtimeLogger: logger, wrapDecoder });
}

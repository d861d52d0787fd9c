/**
 * Server-sent event frames with exact control over the bytes: every event is `id: <n>\ndata: <json>\n\n`
 * with a per-stream sequence number, keep-alive comments are `: ping\n\n`, and nothing else is ever
 * written. Chat and completion streams carry no `event:` lines (OpenAI clients treat named events
 * differently); Responses API streams name every event, as OpenAI sends them. Frames are encoded once
 * and kept as bytes in the stream's event log, so a replay sends exactly the same bytes.
 */

const encoder = new TextEncoder();

/** `id: <id>\ndata: <JSON of value>\n\n`. JSON never holds a raw newline, so one data line suffices. */
export function encodeEvent(id: number, value: unknown): Uint8Array {
  return encodeJsonEvent(id, JSON.stringify(value));
}

/**
 * `id: <id>\ndata: <json>\n\n` for JSON text the caller already has (a per-request template around one
 * token's text, so a token costs one string and one encode). Buffer.from uses Node's pooled allocator,
 * which is several times cheaper than TextEncoder for frames this small.
 */
export function encodeJsonEvent(id: number, json: string): Uint8Array {
  return Buffer.from(`id: ${id}\ndata: ${json}\n\n`, 'utf8');
}

/** `event: <name>\nid: <id>\ndata: <JSON of value>\n\n` (Responses API events). */
export function encodeNamedEvent(id: number, name: string, value: unknown): Uint8Array {
  return encoder.encode(`event: ${name}\nid: ${id}\ndata: ${JSON.stringify(value)}\n\n`);
}

/** The stream's last event on success. */
export function encodeDone(id: number): Uint8Array {
  return encoder.encode(`id: ${id}\ndata: [DONE]\n\n`);
}

/** A comment line: clients ignore it; proxies see traffic. Comments carry no id. */
export function encodeComment(text: string): Uint8Array {
  return encoder.encode(`: ${text}\n\n`);
}

export const PING = encodeComment('ping');

/** The response headers of every SSE stream, and chunk templates; the frames themselves are streams/frames.ts. */
export const SSE_HEADERS: Record<string, string> = {
  'Content-Type': 'text/event-stream',
  'Cache-Control': 'no-cache',
  'X-Accel-Buffering': 'no',
};

/**
 * The JSON of `build(text)` split around where `text` goes, built once by stringifying `build`'s own
 * value, so `prefix + JSON.stringify(text) + suffix` is exactly `JSON.stringify(build(text))` (a token
 * chunk is then one string and one encode). Null when the text's place cannot be told apart.
 */
export function jsonTemplate(build: (text: string) => unknown): { prefix: string; suffix: string } | null {
  const marker = '\u0000warmkv-template-text\u0000';
  const json = JSON.stringify(build(marker));
  const quoted = JSON.stringify(marker);
  const at = json.indexOf(quoted);
  if (at < 0 || json.indexOf(quoted, at + 1) >= 0) return null;
  return { prefix: json.slice(0, at), suffix: json.slice(at + quoted.length) };
}

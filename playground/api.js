// @ts-check
/**
 * The playground's client of the warmkv API: JSON calls with the key as Bearer, and chat streams read
 * from fetch (not EventSource, which cannot POST or send headers). Plain JS with JSDoc types, loaded by
 * the browser as it is.
 */

/** @typedef {{ role: 'system' | 'user' | 'assistant', content: string }} ChatMessage */
/** @typedef {{ type: 'prefill', tokens: number, kv_tokens: number, ms: number } | { type: 'decode', batch: number, kv_tokens: number, ms: number }} StepStat */
/** @typedef {{ prompt_tokens: number, completion_tokens: number, prompt_tokens_details?: { cached_tokens: number }, dropped_tokens?: number }} Usage */

/** An answer in OpenAI's error format (or a network failure, status 0). */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   * @param {string | null} code
   */
  constructor(status, message, code) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/**
 * @param {Response} response
 * @returns {Promise<ApiError>}
 */
async function errorOf(response) {
  let message = `HTTP ${response.status}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = String(body.error.message ?? message);
      code = body.error.code ?? body.error.type ?? null;
    }
  } catch {
    // Not JSON: the status says enough.
  }
  return new ApiError(response.status, message, code);
}

export class Client {
  /** @param {() => string} keyOf the API key to send, or '' for none */
  constructor(keyOf) {
    this.keyOf = keyOf;
  }

  /**
   * @param {string} path
   * @param {RequestInit} [init]
   * @returns {Promise<Response>}
   */
  async fetch(path, init = {}) {
    const headers = new Headers(init.headers);
    const key = this.keyOf();
    if (key) headers.set('Authorization', `Bearer ${key}`);
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (error) {
      if (error instanceof DOMException && error.name === 'AbortError') throw error;
      throw new ApiError(0, 'The server cannot be reached.', 'network');
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  /**
   * @param {string} path
   * @param {RequestInit} [init]
   */
  async json(path, init) {
    return (await this.fetch(path, init)).json();
  }

  /**
   * Streams one chat turn. Resolves when the stream ends; rejects with ApiError, or an AbortError
   * after `signal` aborts.
   * @param {{
   *   messages: ChatMessage[], sessionId: string, maxTokens: number, temperature: number, signal: AbortSignal,
   *   onStart: (streamId: string | null) => void, onText: (text: string) => void,
   *   onSteps: (steps: StepStat[]) => void, onUsage: (usage: Usage) => void,
   * }} turn
   */
  async chat(turn) {
    const response = await this.fetch('/v1/chat/completions', {
      method: 'POST',
      signal: turn.signal,
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        messages: turn.messages,
        session_id: turn.sessionId,
        max_tokens: turn.maxTokens,
        temperature: turn.temperature,
        stream: true,
        stream_options: { include_usage: true, include_step_stats: true },
      }),
    });
    turn.onStart(response.headers.get('X-Stream-Id'));
    for await (const data of sseData(response, turn.signal)) {
      if (data === '[DONE]') return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, String(chunk.error.message), chunk.error.code ?? chunk.error.type ?? null);
      if (chunk.warmkv && chunk.warmkv.steps.length > 0) turn.onSteps(chunk.warmkv.steps);
      const content = chunk.choices?.[0]?.delta?.content;
      if (content) turn.onText(content);
      if (chunk.usage) turn.onUsage(chunk.usage);
    }
    throw new ApiError(0, 'The stream ended early.', 'stream_ended');
  }
}

/**
 * The data of each event of a text/event-stream body; comments (keep-alives) and other fields are skipped.
 * @param {Response} response
 * @param {AbortSignal} signal
 * @returns {AsyncGenerator<string>}
 */
async function* sseData(response, signal) {
  if (!response.body) return;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const cancel = () => void reader.cancel().catch(() => {});
  signal.addEventListener('abort', cancel, { once: true });
  let buffer = '';
  /** @type {string[]} */
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
        if (line === '') {
          if (data.length > 0) yield data.join('\n');
          data = [];
        } else if (line.startsWith('data:')) {
          data.push(line.slice(line.startsWith('data: ') ? 6 : 5));
        }
      }
    }
  } finally {
    signal.removeEventListener('abort', cancel);
    if (signal.aborted) throw new DOMException('The turn was stopped.', 'AbortError');
  }
}

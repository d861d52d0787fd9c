/**
 * Stored responses of the Responses API, without HTTP: each response is a node of a conversation tree
 * (its parent is `previous_response_id`), kept per API key with a TTL and a per-key cap.
 *
 * A response's KV lives in an engine session (`sessionId`). Several responses of one chain share a
 * session: the session's cache holds the transcript of its *head*, the latest response run on it,
 * and every earlier response of the chain is a prefix of that transcript. A child of the head takes
 * the session over (it becomes the head); a child of any other response (a branch) gets a session
 * of its own, seeded with a copy of the shared prefix. When the last response that uses a session is
 * removed, `onSessionReleased` tells the owner of the sessions to delete it.
 */
import { randomBytes } from 'node:crypto';
import type { ResponseFiles } from './files.ts';

export type ResponseStatus = 'queued' | 'in_progress' | 'completed' | 'incomplete' | 'failed' | 'cancelled';

/**
 * One message of a conversation as the chat template sees it (developer already mapped to system):
 * function_call items become an assistant message's `tool_calls` (arguments parsed, as templates
 * write them with `tojson`, or the string as written when it is no JSON object), function_call_output
 * items `tool` messages.
 */
export interface ConversationMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  tool_calls?: Array<{ id: string; type: 'function'; function: { name: string; arguments: unknown } }>;
  tool_call_id?: string;
}

export interface MessageItem {
  id: string;
  type: 'message';
  role: 'user' | 'system' | 'developer' | 'assistant';
  status: 'completed';
  content: Array<{ type: 'input_text'; text: string } | { type: 'output_text'; text: string; annotations: [] }>;
}

export interface FunctionCallItem {
  id: string;
  type: 'function_call';
  call_id: string;
  name: string;
  arguments: string;
  status: 'completed';
}

export interface FunctionCallOutputItem {
  id: string;
  type: 'function_call_output';
  call_id: string;
  output: string;
  status: 'completed';
}

/** An input item as OpenAI lists it (GET /v1/responses/{id}/input_items). */
export type InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem;

/** A function call the model made: the output item `id` (fc_...) and the `call_id` a result names. */
export interface StoredToolCall {
  id: string;
  callId: string;
  name: string;
  arguments: string;
  /** The reply ended inside the call's arguments (the token limit cut it): the item is `incomplete`, as OpenAI marks it. */
  incomplete?: boolean;
}

/**
 * A response's transcript as the model saw and wrote it: the rendered prompt text, and the exact tokens
 * of the prompt and the reply (the model's own output tokens, not a re-tokenization of its text).
 */
export interface Transcript {
  promptText: string;
  tokens: number[];
  /** The reply's text as the model wrote it, when it held tool calls (the calls are then structured). */
  replyText?: string;
}

export interface ResponseUsageCounts {
  inputTokens: number;
  cachedTokens: number;
  outputTokens: number;
}

/** The request fields a response object echoes. */
export interface ResponseParams {
  model: string;
  instructions: string | null;
  temperature: number;
  topP: number;
  maxOutputTokens: number | null;
  truncation: 'auto' | 'disabled';
  metadata: Record<string, string>;
  background: boolean;
  store: boolean;
  /** `text.format` as requested (absent in records written before it existed: text). */
  textFormat?: Record<string, unknown> & { type: string };
  /** The function tools as echoed, tool_choice, parallel_tool_calls, max_tool_calls (absent in older records: none). */
  tools?: Array<Record<string, unknown>>;
  toolChoice?: unknown;
  parallelToolCalls?: boolean;
  maxToolCalls?: number | null;
}

export interface StoredResponse {
  readonly id: string;
  readonly owner: string;
  /** Unix seconds. */
  readonly createdAt: number;
  completedAt: number | null;
  status: ResponseStatus;
  readonly parentId: string | null;
  readonly params: ResponseParams;
  /** This turn's input items. */
  readonly input: InputItem[];
  /** The chain so far without instructions: the parent's conversation, this input, then this output. */
  conversation: ConversationMessage[];
  readonly outputItemId: string;
  /** The reply's text; with tool calls, the text around them (the model's whole text is in the transcript). */
  outputText: string;
  /** The calls the reply made (absent or empty: the output is one message). */
  toolCalls?: StoredToolCall[];
  /** Where the message sits among the output items: how many calls the reply opened before its first text (absent: first). */
  messageIndex?: number;
  /** Set when the response ends, if its output tokens decode to exactly its output text; children continue it. */
  transcript: Transcript | null;
  /** The engine session holding this response's KV (shared along a chain). */
  readonly sessionId: string;
  usage: ResponseUsageCounts | null;
  error: { code: 'server_error' | 'rate_limit_exceeded'; message: string } | null;
  incompleteReason: 'max_output_tokens' | null;
  /** Stops the generation while it runs (POST /v1/responses/{id}/cancel). */
  abort: AbortController | null;
}

/** `resp_`/`msg_`/`fc_` and 128 random bits in hex, as OpenAI's ids look. */
export function newResponseId(prefix: 'resp' | 'msg' | 'fc'): string {
  return `${prefix}_${randomBytes(16).toString('hex')}`;
}

export interface ResponseStoreOptions {
  /** Seconds a response is kept after its creation; 0 keeps it until deleted. */
  ttlSeconds: number;
  maxPerKey: number;
  now?: () => number;
  /** Where responses are kept across restarts (SNAPSHOT_DIR); absent: memory only. */
  files?: ResponseFiles;
  /** The last response using this engine session is gone: the session may be deleted. */
  onSessionReleased?: (owner: string, sessionId: string) => void;
}

export interface ItemPage {
  data: InputItem[];
  hasMore: boolean;
}

export class ResponseStore {
  /** Per owner, in creation order (so the oldest, first to expire, come first). */
  private readonly byOwner = new Map<string, Map<string, StoredResponse>>();
  /** owner\0sessionId -> the id of the response whose transcript the session's cache holds. */
  private readonly heads = new Map<string, string>();
  /** owner\0sessionId -> how many stored responses use the session. */
  private readonly users = new Map<string, number>();
  private readonly now: () => number;

  constructor(private readonly options: ResponseStoreOptions) {
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    let n = 0;
    for (const records of this.byOwner.values()) n += records.size;
    return n;
  }

  /** A response in memory, or on disk from before a restart (then kept in memory again). */
  get(owner: string, id: string): StoredResponse | undefined {
    this.expire(owner);
    const record = this.byOwner.get(owner)?.get(id);
    if (record) return this.expired(record) ? undefined : record;
    const loaded = this.options.files?.load(owner, id);
    if (!loaded) return undefined;
    if (this.expired(loaded)) {
      this.options.files!.remove(owner, id);
      return undefined;
    }
    // Not made the head of its session: after a restart, the session's own tokens say what it holds.
    this.insert(loaded);
    return loaded;
  }

  /** Keeps a response (and makes it its session's head); drops the owner's oldest beyond the cap. */
  put(record: StoredResponse): void {
    this.expire(record.owner);
    const records = this.insert(record);
    this.heads.set(sessionKey(record.owner, record.sessionId), record.id);
    while (records.size > this.options.maxPerKey) {
      const oldest = records.values().next().value!;
      // A running response is never dropped for the cap: it would lose its result.
      if (oldest.abort !== null) break;
      this.remove(oldest);
    }
  }

  /** A response has ended: written to disk when responses persist. */
  saved(record: StoredResponse): void {
    if (this.byOwner.get(record.owner)?.get(record.id) === record) this.options.files?.save(record);
  }

  /** Whether the session's cache holds exactly this response's chain (its children may take it over). */
  isHead(record: StoredResponse): boolean {
    return this.heads.get(sessionKey(record.owner, record.sessionId)) === record.id;
  }

  /** The owner's responses in memory, newest first (item_reference looks items up among them). */
  *newestFirst(owner: string): Generator<StoredResponse> {
    const records = [...(this.byOwner.get(owner)?.values() ?? [])];
    for (let i = records.length - 1; i >= 0; i--) if (!this.expired(records[i])) yield records[i];
  }

  delete(owner: string, id: string): StoredResponse | undefined {
    const record = this.get(owner, id);
    if (record) this.remove(record);
    return record;
  }

  /** One page of a response's input items, as OpenAI pages them (`after` an item id, asc or desc). */
  inputItems(record: StoredResponse, options: { limit: number; order: 'asc' | 'desc'; after?: string }): ItemPage | 'unknown_after' {
    const items = options.order === 'asc' ? record.input : [...record.input].reverse();
    let start = 0;
    if (options.after !== undefined) {
      const at = items.findIndex((item) => item.id === options.after);
      if (at < 0) return 'unknown_after';
      start = at + 1;
    }
    const data = items.slice(start, start + options.limit);
    return { data, hasMore: start + options.limit < items.length };
  }

  /** Drops every response older than the TTL. */
  sweep(): void {
    for (const owner of [...this.byOwner.keys()]) this.expire(owner);
  }

  private insert(record: StoredResponse): Map<string, StoredResponse> {
    let records = this.byOwner.get(record.owner);
    if (!records) this.byOwner.set(record.owner, (records = new Map()));
    records.set(record.id, record);
    const key = sessionKey(record.owner, record.sessionId);
    this.users.set(key, (this.users.get(key) ?? 0) + 1);
    return records;
  }

  private expired(record: StoredResponse): boolean {
    const ttl = this.options.ttlSeconds;
    if (ttl <= 0 || record.abort !== null || record.createdAt > this.now() / 1000 - ttl) return false;
    this.remove(record);
    return true;
  }

  private expire(owner: string): void {
    const ttl = this.options.ttlSeconds;
    const records = this.byOwner.get(owner);
    if (ttl <= 0 || !records) return;
    const cutoff = this.now() / 1000 - ttl;
    for (const record of records.values()) {
      if (record.createdAt > cutoff) break;
      if (record.abort === null) this.remove(record);
    }
  }

  private remove(record: StoredResponse): void {
    this.options.files?.remove(record.owner, record.id);
    const records = this.byOwner.get(record.owner);
    if (!records?.delete(record.id)) return;
    if (records.size === 0) this.byOwner.delete(record.owner);
    const key = sessionKey(record.owner, record.sessionId);
    if (this.heads.get(key) === record.id) this.heads.delete(key);
    const left = (this.users.get(key) ?? 1) - 1;
    if (left > 0) {
      this.users.set(key, left);
      return;
    }
    this.users.delete(key);
    this.heads.delete(key);
    this.options.onSessionReleased?.(record.owner, record.sessionId);
  }
}

function sessionKey(owner: string, sessionId: string): string {
  return `${owner}\u0000${sessionId}`;
}

/**
 * Responses' items both ways: `input` items (messages, function_call, function_call_output,
 * item_reference) into conversation messages for the chat template, as chat-messages.ts does for chat
 * (a call's arguments parsed when they are a JSON object, a result answering a call made earlier in
 * the conversation); and a stored response's `output` items (its message, its function calls) as
 * OpenAI sends them.
 */
import { newResponseId, type ConversationMessage, type FunctionCallItem, type InputItem, type MessageItem, type StoredResponse, type StoredToolCall, type Transcript } from '../responses/store.ts';
import { ApiError } from './errors.ts';
import { templateArguments } from './tool-calls.ts';

const ROLES = new Set(['user', 'system', 'developer', 'assistant']);

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export interface ItemContext {
  /** The call ids the conversation before this input made (a function_call_output must answer one). */
  calledIds: ReadonlySet<string>;
  /** An item of a stored response of the same key (item_reference), or undefined. */
  resolve: (id: string) => InputItem | undefined;
}

/** The call ids a conversation's assistant messages made. */
export function callIdsOf(conversation: readonly ConversationMessage[]): Set<string> {
  return new Set(conversation.flatMap((m) => (m.tool_calls ?? []).map((c) => c.id)));
}

/** `input` as items with ids (for input_items) and as template messages. */
export function inputItemsOf(input: string | unknown[], context: ItemContext): { items: InputItem[]; messages: ConversationMessage[] } {
  if (typeof input === 'string') {
    return { items: [{ id: newResponseId('msg'), type: 'message', role: 'user', status: 'completed', content: [{ type: 'input_text', text: input }] }], messages: [{ role: 'user', content: input }] };
  }
  const items: InputItem[] = [];
  const messages: ConversationMessage[] = [];
  const calledIds = new Set(context.calledIds);

  const add = (item: InputItem, param: string): void => {
    items.push(item);
    const last = messages.at(-1);
    if (item.type === 'message') {
      const text = item.content.map((p) => p.text).join('');
      // A reply that called before it wrote lists its calls first: its message is still that turn's text.
      if (item.role === 'assistant' && last?.role === 'assistant' && last.tool_calls && last.content === '') last.content = text;
      else messages.push({ role: item.role === 'developer' ? 'system' : item.role, content: text });
    } else if (item.type === 'function_call') {
      const call = { id: item.call_id, type: 'function' as const, function: { name: item.name, arguments: templateArguments(item.arguments) } };
      calledIds.add(item.call_id);
      // Calls right after an assistant message of this input (or after each other) are that turn's calls,
      // as a reply's output lists them with its message.
      if (last?.role === 'assistant') last.tool_calls = [...(last.tool_calls ?? []), call];
      else messages.push({ role: 'assistant', content: '', tool_calls: [call] });
    } else {
      if (!calledIds.has(item.call_id)) {
        throw new ApiError('invalid_request', `Invalid value for '${param}.call_id': no function call with call_id '${item.call_id}' was found earlier in the conversation.`, `${param}.call_id`);
      }
      messages.push({ role: 'tool', content: item.output, tool_call_id: item.call_id });
    }
  };

  input.forEach((raw, i) => {
    const param = `input[${i}]`;
    if (!isObject(raw)) throw new ApiError('invalid_request', `Invalid value for '${param}': must be an input item object.`, param);
    const type = raw.type ?? 'message';
    if (type === 'message') add(messageItemOf(raw, param), param);
    else if (type === 'function_call') add(functionCallOf(raw, param), param);
    else if (type === 'function_call_output') {
      const callId = stringField(raw, 'call_id', param);
      const output = typeof raw.output === 'string' ? raw.output : partsText(raw.output, ['input_text'], `${param}.output`);
      add({ id: typeof raw.id === 'string' ? raw.id : newResponseId('fc'), type: 'function_call_output', call_id: callId, output, status: 'completed' }, param);
    } else if (type === 'item_reference') {
      const id = stringField(raw, 'id', param);
      const item = context.resolve(id);
      if (!item) throw new ApiError('not_found', `Item with id '${id}' not found.`, `${param}.id`);
      add(item, param);
    } else {
      throw new ApiError('unsupported_parameter', `Only message, function_call, function_call_output and item_reference items are supported by this server: '${param}.type' '${String(type)}' is not supported.`, `${param}.type`);
    }
  });
  return { items, messages };
}

function stringField(item: Record<string, unknown>, field: string, param: string): string {
  const value = item[field];
  if (typeof value !== 'string' || value === '') throw new ApiError('invalid_request', `Invalid value for '${param}.${field}': is required (a string).`, `${param}.${field}`);
  return value;
}

function messageItemOf(item: Record<string, unknown>, param: string): MessageItem {
  const role = item.role;
  if (typeof role !== 'string' || !ROLES.has(role)) {
    throw new ApiError('invalid_request', `Invalid value for '${param}.role': must be one of user, system, developer, assistant.`, `${param}.role`);
  }
  const assistant = role === 'assistant';
  const text = typeof item.content === 'string' ? item.content : partsText(item.content, assistant ? ['output_text', 'input_text'] : ['input_text'], `${param}.content`);
  const content: MessageItem['content'] = assistant ? [{ type: 'output_text', text, annotations: [] }] : [{ type: 'input_text', text }];
  return { id: typeof item.id === 'string' ? item.id : newResponseId('msg'), type: 'message', role: role as MessageItem['role'], status: 'completed', content };
}

function functionCallOf(item: Record<string, unknown>, param: string): FunctionCallItem {
  const callId = stringField(item, 'call_id', param);
  const name = stringField(item, 'name', param);
  if (typeof item.arguments !== 'string') throw new ApiError('invalid_request', `Invalid value for '${param}.arguments': is required (a JSON string).`, `${param}.arguments`);
  return { id: typeof item.id === 'string' ? item.id : newResponseId('fc'), type: 'function_call', call_id: callId, name, arguments: item.arguments, status: 'completed' };
}

/** Content parts of the allowed types (the first listed is the one to send), joined. */
function partsText(content: unknown, allowed: string[], param: string): string {
  if (!Array.isArray(content)) throw new ApiError('invalid_request', `Invalid value for '${param}': must be a string or an array of content parts.`, param);
  return content
    .map((part, j) => {
      if (!isObject(part) || typeof part.type !== 'string') throw new ApiError('invalid_request', `Invalid value for '${param}[${j}]': must be a content part with a type.`, `${param}[${j}]`);
      if (!allowed.includes(part.type)) {
        throw new ApiError('unsupported_parameter', `Content parts of type '${part.type}' are not supported here; send '${allowed[0]}'.`, `${param}[${j}].type`);
      }
      if (typeof part.text !== 'string') throw new ApiError('invalid_request', `Invalid value for '${param}[${j}].text': is required.`, `${param}[${j}].text`);
      return part.text;
    })
    .join('');
}

/**
 * For a request without a parent that resends a conversation: the transcript of the stored response
 * whose reply made the prompt's last tool calls (found by call_id), and where that reply sits. The
 * prompt then continues the model's own tokens of that reply instead of a re-tokenization of its text
 * (translate.ts checks that the rendered prompt really starts with that transcript's text), so a
 * resent full history equals the chained turn and finds its KV through the prefix index.
 */
export function callerTranscript(records: Iterable<StoredResponse>, prompt: readonly ConversationMessage[]): (Transcript & { replyIndex: number }) | null {
  let replyIndex = prompt.length - 1;
  while (replyIndex >= 0 && !prompt[replyIndex].tool_calls?.length) replyIndex--;
  if (replyIndex < 0) return null;
  const callId = prompt[replyIndex].tool_calls![0].id;
  for (const record of records) {
    if (record.transcript?.replyText !== undefined && record.toolCalls?.some((c) => c.callId === callId)) return { ...record.transcript, replyIndex };
  }
  return null;
}

/** A stored response's item with this id (its output message or calls, or one of its input items), as an input item. */
export function storedItem(record: StoredResponse, id: string): InputItem | undefined {
  if (id === record.outputItemId && record.status !== 'in_progress' && record.status !== 'queued') {
    return { id, type: 'message', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text: record.outputText, annotations: [] }] };
  }
  const call = record.toolCalls?.find((c) => c.id === id);
  if (call) return { id, type: 'function_call', call_id: call.callId, name: call.name, arguments: call.arguments, status: 'completed' };
  return record.input.find((item) => item.id === id);
}

/**
 * The response's output items in the order they streamed: one function_call per call, and its message
 * where its first text came (left out when the reply only made calls).
 */
export function outputItems(r: StoredResponse, text = r.outputText): Array<Record<string, unknown>> {
  const items = (r.toolCalls ?? []).map((c) => functionCallItem(c, 'ended'));
  if (items.length === 0) return [messageItem(r, text)];
  if (text !== '') items.splice(r.messageIndex ?? 0, 0, messageItem(r, text));
  return items;
}

export function messageItem(r: StoredResponse, text = r.outputText): Record<string, unknown> {
  const status = r.status === 'in_progress' || r.status === 'queued' ? 'in_progress' : r.status === 'completed' ? 'completed' : 'incomplete';
  return { id: r.outputItemId, type: 'message', status, content: [outputText(text)], role: 'assistant' };
}

export function functionCallItem(c: StoredToolCall, state: 'in_progress' | 'ended'): Record<string, unknown> {
  const status = state === 'in_progress' ? 'in_progress' : c.incomplete ? 'incomplete' : 'completed';
  return { id: c.id, type: 'function_call', status, arguments: state === 'ended' ? c.arguments : '', call_id: c.callId, name: c.name };
}

export function outputText(text: string) {
  return { type: 'output_text', annotations: [], logprobs: [], text };
}

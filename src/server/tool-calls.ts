/**
 * OpenAI's `tools` in chat completions: the request's tools and tool_choice as what the template
 * renders and what the grammar enforces, and the model's output (in its template's format) back into
 * OpenAI's `tool_calls`.
 */
import type { GrammarSpec, TaggedJson } from '../engine/grammar.ts';
import type { FinishReason } from '../engine/types.ts';
import type { ChatTool, ToolCallFormat } from '../model/chat-template.ts';
import { ApiError } from './errors.ts';
import { ToolCallReader, type ToolReply, type ToolStreamEvent } from './tool-stream.ts';

export interface ToolPlan {
  tools: ChatTool[];
  /** The output is read for tool calls (every tool_choice but none). */
  parse: boolean;
  format: ToolCallFormat;
  /** For `required` and a named function: the calls the output must be. */
  grammar?: GrammarSpec;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A tool_choice with the API's wrapping removed: a named function is `{ name }`. */
export type ToolChoice = 'none' | 'auto' | 'required' | { name: string } | null | undefined;

/** The request's tools, tool_choice and parallel_tool_calls; 400 for a malformed tool or a choice naming none of them. */
export function toolPlanOf(tools: unknown[] | null | undefined, choice: unknown, parallel: boolean | null | undefined, format: ToolCallFormat): ToolPlan | null {
  const declared = (tools ?? []).map((tool, i): ChatTool => {
    const param = `tools[${i}]`;
    if (!isObject(tool) || tool.type !== 'function' || !isObject(tool.function)) throw new ApiError('invalid_request', `Invalid value for '${param}': only tools of type 'function' with a 'function' object are supported.`, param);
    return declaredTool(tool.function, `${param}.function`);
  });
  let named: ToolChoice;
  if (choice == null || choice === 'none' || choice === 'auto' || choice === 'required') named = choice;
  else if (isObject(choice) && choice.type === 'function' && isObject(choice.function) && typeof choice.function.name === 'string') named = { name: choice.function.name };
  else throw new ApiError('invalid_request', "Invalid value for 'tool_choice': must be 'none', 'auto', 'required' or {type: 'function', function: {name}}.", 'tool_choice');
  const strict = (tools ?? []).map((tool) => (tool as { function: { strict?: unknown } }).function.strict === true);
  return planTools(declared, named, parallel, format, (i) => `tools[${i}].function.parameters`, strict);
}

/** One function tool (`fields` holds name, description, parameters; `param` is where it sits in the body). */
export function declaredTool(fields: Record<string, unknown>, param: string): ChatTool {
  if (typeof fields.name !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(fields.name)) throw new ApiError('invalid_request', `Invalid value for '${param}.name': must be 1 to 64 letters, digits, underscores or dashes.`, `${param}.name`);
  if (fields.parameters != null && !isObject(fields.parameters)) throw new ApiError('invalid_request', `Invalid value for '${param}.parameters': must be a JSON schema object.`, `${param}.parameters`);
  const parameters = (fields.parameters as Record<string, unknown> | null | undefined) ?? { type: 'object', properties: {} };
  return { type: 'function', function: { name: fields.name, ...(typeof fields.description === 'string' ? { description: fields.description } : {}), parameters } };
}

/**
 * Declared tools and a choice as what the template renders and the grammar enforces (chat completions
 * and Responses alike); `schemaParam(i)` names tool i's schema in the request, for grammar errors.
 */
export function planTools(
  declared: ChatTool[],
  choice: ToolChoice,
  parallel: boolean | null | undefined,
  format: ToolCallFormat,
  schemaParam: (i: number) => string,
  /** Per declared tool, `strict: true`: under `auto` its calls are held to its schema too. */
  strict: readonly boolean[] = [],
): ToolPlan | null {
  if (declared.length === 0) {
    if (choice != null && choice !== 'none' && choice !== 'auto') throw new ApiError('invalid_request', "Invalid value for 'tool_choice': no tools are declared.", 'tool_choice');
    return null;
  }
  if (choice === 'none') return { tools: [], parse: false, format };
  // Llama 3.x writes one call per turn; Hermes puts one block per call on its own line.
  const separator = parallel !== false && format === 'hermes' ? '\n' : null;
  if (choice == null || choice === 'auto') {
    if (!strict.some(Boolean)) return { tools: declared, parse: true, format };
    // Free text, and a call, once the model starts one, in the template's format: a strict tool's
    // arguments match its schema, another tool's are any JSON object.
    const tags = declared.map((tool, i) => callTag(tool, format, schemaParam(i), strict[i] ? tool.function.parameters : ANY_OBJECT));
    return { tools: declared, parse: true, format, grammar: { kind: 'tagged_json', tags, separator, triggers: [format === 'hermes' ? '<tool_call>' : '{"name": '] } };
  }
  let chosen: ChatTool[];
  if (choice === 'required') chosen = declared;
  else {
    chosen = declared.filter((t) => t.function.name === choice.name);
    if (chosen.length === 0) throw new ApiError('invalid_request', `Invalid value for 'tool_choice': no declared tool is named '${choice.name}'.`, 'tool_choice');
  }
  const tags = chosen.map((tool) => callTag(tool, format, schemaParam(declared.indexOf(tool)), tool.function.parameters));
  return { tools: declared, parse: true, format, grammar: { kind: 'tagged_json', tags, separator } };
}

const ANY_OBJECT = { type: 'object' };

/** One call as the template writes it: the name fixed, the arguments JSON matching `schema`. */
function callTag(tool: ChatTool, format: ToolCallFormat, param: string, schema: Record<string, unknown>): TaggedJson {
  const name = JSON.stringify(tool.function.name);
  return format === 'hermes'
    ? { begin: `<tool_call>\n{"name": ${name}, "arguments": `, schema, end: '}\n</tool_call>', param }
    : { begin: `{"name": ${name}, "parameters": `, schema, end: '}', param };
}

/** OpenAI's finish reason for a reply read for calls: a length cut stays `length`, even through a call. */
function toolFinishReason(reply: ToolReply, finish: FinishReason): 'stop' | 'length' | 'tool_calls' {
  if (finish === 'length') return 'length';
  return reply.calls.length > 0 ? 'tool_calls' : 'stop';
}

/** A whole chat reply read for calls, as a stream of it would be: the choice's message and finish reason. */
export function chatToolAnswer(text: string, format: ToolCallFormat, finish: FinishReason): { message: Record<string, unknown>; finishReason: string } {
  const reader = new ToolCallReader(format);
  reader.push(text);
  const reply = reader.finish();
  const finishReason = toolFinishReason(reply, finish);
  if (reply.calls.length === 0) return { message: { role: 'assistant', content: reply.content ?? '', refusal: null }, finishReason };
  return { message: { role: 'assistant', content: reply.content, refusal: null, tool_calls: reply.calls }, finishReason };
}

export type ChatDelta = { content: string } | { tool_calls: unknown[] };

/**
 * A chat choice's reply read for calls as it streams, sent as OpenAI's deltas: text as `content`; per
 * call a delta with index, id, type, name and empty arguments once its name is known, then one per
 * piece of its arguments.
 */
export class ChatToolStream {
  private readonly reader: ToolCallReader;

  constructor(
    format: ToolCallFormat,
    private readonly send: (delta: ChatDelta) => void,
  ) {
    this.reader = new ToolCallReader(format);
  }

  push(text: string): void {
    this.sendAll(this.reader.push(text));
  }

  /** The reply's last text: sends it and all held back; returns the choice's finish reason. */
  finish(text: string, finish: FinishReason): 'stop' | 'length' | 'tool_calls' {
    this.sendAll(this.reader.push(text));
    const reply = this.reader.finish();
    this.sendAll(reply.events);
    return toolFinishReason(reply, finish);
  }

  private sendAll(events: readonly ToolStreamEvent[]): void {
    for (const event of events) {
      if (event.type === 'content') this.send({ content: event.text });
      else if (event.type === 'call') this.send({ tool_calls: [{ index: event.index, id: event.id, type: 'function', function: { name: event.name, arguments: '' } }] });
      else if (event.type === 'arguments') this.send({ tool_calls: [{ index: event.index, function: { arguments: event.text } }] });
    }
  }
}

/**
 * A call's arguments as the template gets them: the parsed object (templates write it with `tojson`),
 * or the string as sent when it is no JSON object (a cut or broken call: OpenAI takes any string).
 */
export function templateArguments(raw: string): unknown {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return raw;
  }
  return isObject(parsed) ? parsed : raw;
}

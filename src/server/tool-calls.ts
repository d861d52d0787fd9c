/**
 * OpenAI's `tools` in chat completions: the request's tools and tool_choice as what the template
 * renders and what the grammar enforces, and the model's output (in its template's format) back into
 * OpenAI's `tool_calls`.
 */
import { randomBytes } from 'node:crypto';
import type { GrammarSpec, TaggedJson } from '../engine/grammar.ts';
import type { ChatTool, ToolCallFormat } from '../model/chat-template.ts';
import { ApiError } from './errors.ts';

export interface ToolPlan {
  tools: ChatTool[];
  /** The output is read for tool calls (every tool_choice but none). */
  parse: boolean;
  format: ToolCallFormat;
  /** For `required` and a named function: the calls the output must be. */
  grammar?: GrammarSpec;
}

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
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

function toolCall(name: unknown, args: unknown): ToolCall | null {
  if (typeof name !== 'string' || !isObject(args)) return null;
  return { id: `call_${randomBytes(12).toString('hex')}`, type: 'function', function: { name, arguments: JSON.stringify(args) } };
}

/** The calls in a reply, and the text around them; null when the reply holds no well-formed call. */
export function parseToolCalls(text: string, format: ToolCallFormat): { content: string | null; calls: ToolCall[] } | null {
  const calls: ToolCall[] = [];
  if (format === 'hermes') {
    const pattern = /<tool_call>\s*([\s\S]*?)\s*<\/tool_call>/g;
    let rest = text;
    for (const match of text.matchAll(pattern)) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(match[1]);
      } catch {
        return null;
      }
      const call = isObject(parsed) ? toolCall(parsed.name, parsed.arguments ?? parsed.parameters) : null;
      if (!call) return null;
      calls.push(call);
      rest = rest.replace(match[0], '');
    }
    if (calls.length === 0) return null;
    const content = rest.trim();
    return { content: content === '' ? null : content, calls };
  }
  const body = text.trim().replace(/^<\|python_tag\|>/, '');
  for (const part of body.split(/;\s*(?=\{)/)) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(part);
    } catch {
      return null;
    }
    const call = isObject(parsed) ? toolCall(parsed.name, parsed.parameters ?? parsed.arguments) : null;
    if (!call) return null;
    calls.push(call);
  }
  return { content: null, calls };
}

/** OpenAI's streamed form of the calls: per call a delta with id, type, name and empty arguments, then the arguments. */
export function toolCallDeltas(calls: ToolCall[]): Array<{ tool_calls: unknown[] }> {
  return calls.flatMap((call, index) => [
    { tool_calls: [{ index, id: call.id, type: 'function', function: { name: call.function.name, arguments: '' } }] },
    { tool_calls: [{ index, function: { arguments: call.function.arguments } }] },
  ]);
}

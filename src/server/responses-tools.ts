/**
 * Responses' `tools`, `tool_choice` and `parallel_tool_calls` in the chat tool-call machinery's terms
 * (tool-calls.ts: what the template renders, what the grammar enforces), and as the response object
 * echoes them. Responses declare a function flat (`{type: 'function', name, parameters, strict}`)
 * where chat nests it under `function`; a built-in tool (web_search, file_search, ...) is refused.
 */
import type { ToolCallFormat } from '../model/chat-template.ts';
import { ApiError } from './errors.ts';
import { declaredTool, planTools, type ToolChoice, type ToolPlan } from './tool-calls.ts';

export interface ResponseToolFields {
  tools?: unknown[] | null;
  tool_choice?: unknown;
  parallel_tool_calls?: boolean | null;
}

export interface ResponseTools {
  /** Null without tools. */
  plan: ToolPlan | null;
  /** What the response object echoes. */
  tools: Array<Record<string, unknown>>;
  toolChoice: unknown;
  parallelToolCalls: boolean;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function responseToolsOf(b: ResponseToolFields, format: ToolCallFormat): ResponseTools {
  const echoed: Array<Record<string, unknown>> = [];
  const declared = (b.tools ?? []).map((tool, i) => {
    const param = `tools[${i}]`;
    if (!isObject(tool) || typeof tool.type !== 'string') throw new ApiError('invalid_request', `Invalid value for '${param}': must be a tool object with a type.`, param);
    if (tool.type !== 'function') {
      throw new ApiError('unsupported_parameter', `Built-in tools are not supported by this server: '${param}.type' '${tool.type}' is not supported; declare tools of type 'function'.`, `${param}.type`);
    }
    if (tool.strict != null && typeof tool.strict !== 'boolean') throw new ApiError('invalid_request', `Invalid value for '${param}.strict': must be a boolean.`, `${param}.strict`);
    const chat = declaredTool(tool, param);
    // OpenAI's default for Responses function tools is strict.
    echoed.push({ type: 'function', name: chat.function.name, description: chat.function.description ?? null, parameters: chat.function.parameters, strict: tool.strict ?? true });
    return chat;
  });
  const choice = toolChoiceOf(b.tool_choice);
  const strict = (b.tools ?? []).map((tool) => (tool as { strict?: boolean | null }).strict ?? true);
  const plan = planTools(declared, choice, b.parallel_tool_calls, format, (i) => `tools[${i}].parameters`, strict);
  return { plan, tools: echoed, toolChoice: b.tool_choice ?? 'auto', parallelToolCalls: b.parallel_tool_calls ?? true };
}

/** `none`, `auto`, `required` or `{type: 'function', name}`; the built-in and allowed_tools choices are refused. */
function toolChoiceOf(choice: unknown): ToolChoice {
  if (choice == null || choice === 'none' || choice === 'auto' || choice === 'required') return choice;
  if (isObject(choice) && choice.type === 'function') {
    if (typeof choice.name !== 'string') throw new ApiError('invalid_request', "Invalid value for 'tool_choice.name': a function choice must name the function.", 'tool_choice.name');
    return { name: choice.name };
  }
  if (isObject(choice) && typeof choice.type === 'string') {
    throw new ApiError('unsupported_parameter', `A 'tool_choice' of type '${choice.type}' is not supported by this server; send 'none', 'auto', 'required' or {type: 'function', name}.`, 'tool_choice');
  }
  throw new ApiError('invalid_request', "Invalid value for 'tool_choice': must be 'none', 'auto', 'required' or {type: 'function', name}.", 'tool_choice');
}

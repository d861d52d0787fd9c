/**
 * OpenAI chat messages into the template's roles: assistant tool calls and tool results are kept (a
 * tool message must answer a call made earlier in the conversation; a call's arguments need not be
 * JSON, as a cut call's are not); non-text parts are refused.
 */
import type { ChatMessage } from '../model/chat-template.ts';
import { ApiError } from './errors.ts';
import type { MessageBody } from './schemas.ts';
import { templateArguments } from './tool-calls.ts';

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function chatMessages(messages: MessageBody[]): ChatMessage[] {
  const calledIds = new Set<string>();
  return messages.map((m, i) => {
    const param = `messages[${i}]`;
    let role: ChatMessage['role'];
    if (m.role === 'system' || m.role === 'developer') role = 'system';
    else if (m.role === 'user' || m.role === 'assistant' || m.role === 'tool') role = m.role;
    else if (m.role === 'function') throw new ApiError('unsupported_parameter', "Messages of the deprecated role 'function' are not supported; send 'tool' messages.", `${param}.role`);
    else throw new ApiError('invalid_request', `Invalid value for '${param}.role': '${m.role}' is not one of system, developer, user, assistant, tool.`, `${param}.role`);
    const toolCalls = Array.isArray(m.tool_calls) && m.tool_calls.length > 0 ? toolCallsOf(m.tool_calls, role, param) : undefined;
    toolCalls?.forEach((c) => calledIds.add(c.id));
    let content: string;
    if (typeof m.content === 'string') content = m.content;
    else if (Array.isArray(m.content)) {
      content = m.content
        .map((part, j) => {
          if (part.type !== 'text' || typeof (part as { text?: unknown }).text !== 'string') {
            throw new ApiError('unsupported_parameter', `Content parts of type '${part.type}' are not supported; send text.`, `${param}.content[${j}].type`);
          }
          return (part as { text: string }).text;
        })
        .join('\n');
    } else if (role === 'assistant') content = '';
    else throw new ApiError('invalid_request', `Invalid value for '${param}.content': is required.`, `${param}.content`);
    if (role === 'tool') {
      const id = m.tool_call_id;
      if (typeof id !== 'string') throw new ApiError('invalid_request', `Invalid value for '${param}.tool_call_id': a tool message must name the call it answers.`, `${param}.tool_call_id`);
      if (!calledIds.has(id)) throw new ApiError('invalid_request', `Invalid value for '${param}.tool_call_id': no earlier assistant message has a tool call with id '${id}'.`, `${param}.tool_call_id`);
      return { role, content, tool_call_id: id };
    }
    const message: ChatMessage = m.name != null ? { role, content, name: m.name } : { role, content };
    return toolCalls ? { ...message, tool_calls: toolCalls } : message;
  });
}

function toolCallsOf(calls: unknown[], role: ChatMessage['role'], param: string): NonNullable<ChatMessage['tool_calls']> {
  if (role !== 'assistant') throw new ApiError('invalid_request', `Invalid value for '${param}.tool_calls': only assistant messages carry tool calls.`, `${param}.tool_calls`);
  return calls.map((call, j) => {
    const at = `${param}.tool_calls[${j}]`;
    if (!isObject(call) || typeof call.id !== 'string' || !isObject(call.function) || typeof call.function.name !== 'string' || typeof call.function.arguments !== 'string') {
      throw new ApiError('invalid_request', `Invalid value for '${at}': must be {id, type: 'function', function: {name, arguments}}.`, at);
    }
    return { id: call.id, type: 'function', function: { name: call.function.name, arguments: templateArguments(call.function.arguments) } };
  });
}

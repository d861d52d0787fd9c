/**
 * Renders chat messages into the prompt text the model was trained on, with the model's own Jinja
 * chat template (`tokenizer_config.json`) through @huggingface/jinja, or a plain fallback.
 */
import { Template } from '@huggingface/jinja';
import type { TextTokenizer } from './tokenizer.ts';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  name?: string;
  /**
   * Assistant turns that called tools; `arguments` parsed (templates write them with `tojson`), or the
   * string as written when it is no JSON object (a cut call's).
   */
  tool_calls?: Array<{ id: string; type: 'function'; function: { name: string; arguments: unknown } }>;
  tool_call_id?: string;
}

/** A tool as templates take it (OpenAI's `tools` entries). */
export interface ChatTool {
  type: 'function';
  function: { name: string; description?: string; parameters: Record<string, unknown> };
}

/**
 * How the model writes tool calls, read from its template: Hermes/Qwen `<tool_call>{json}</tool_call>`,
 * or Llama 3.x's bare `{"name": ..., "parameters": ...}`.
 */
export type ToolCallFormat = 'hermes' | 'llama3_json';

/**
 * For models without a chat template: one `role: content` line per message, then `assistant:` for
 * the reply. Generation also stops at a new `\nuser:` line (see FALLBACK_STOP).
 */
export const FALLBACK_TEMPLATE =
  "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}";

export const FALLBACK_STOP = ['\nuser:'];

export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError';
}

export class ChatTemplate {
  private constructor(
    private readonly template: Template,
    /** 'model' when the tokenizer ships one; 'fallback' otherwise (or when it does not compile). */
    readonly source: 'model' | 'fallback',
    private readonly bosToken: string,
    private readonly eosToken: string,
    /** Why the model's template was not used, when it did not compile. */
    readonly compileError: string | null,
    /** The template renders `tools`, tool calls and tool messages itself. */
    readonly rendersTools: boolean,
    readonly toolCallFormat: ToolCallFormat,
  ) {}

  static forTokenizer(tokenizer: Pick<TextTokenizer, 'chatTemplate' | 'bosToken' | 'eosToken'>): ChatTemplate {
    const bos = tokenizer.bosToken ?? '';
    const eos = tokenizer.eosToken ?? '';
    const source = tokenizer.chatTemplate;
    if (source) {
      const format: ToolCallFormat | null = source.includes('<tool_call>') ? 'hermes' : source.includes('"parameters"') ? 'llama3_json' : null;
      const renders = format !== null && /\btools\b/.test(source) && source.includes('tool_calls');
      try {
        return new ChatTemplate(new Template(source), 'model', bos, eos, null, renders, format ?? 'hermes');
      } catch (error) {
        return new ChatTemplate(new Template(FALLBACK_TEMPLATE), 'fallback', bos, eos, (error as Error).message, false, 'hermes');
      }
    }
    return new ChatTemplate(new Template(FALLBACK_TEMPLATE), 'fallback', bos, eos, null, false, 'hermes');
  }

  /** Stop strings every chat request gets on top of its own (the fallback's next turn). */
  get implicitStops(): string[] {
    return this.source === 'fallback' ? FALLBACK_STOP : [];
  }

  /** The prompt text; throws ChatTemplateError when the template refuses the messages (raise_exception). */
  render(messages: readonly ChatMessage[], addGenerationPrompt = true, tools: readonly ChatTool[] = []): string {
    const native = this.rendersTools || (tools.length === 0 && messages.every((m) => m.role !== 'tool' && !m.tool_calls));
    const rendered = native ? messages : withToolsAsText(messages, tools);
    try {
      return this.template.render({
        messages: rendered.map((m) => (m.name === undefined && m.tool_calls === undefined && m.tool_call_id === undefined ? { role: m.role, content: m.content } : { ...m })),
        ...(native && tools.length > 0 ? { tools } : {}),
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.bosToken,
        eos_token: this.eosToken,
      });
    } catch (error) {
      throw new ChatTemplateError((error as Error).message);
    }
  }
}

/**
 * For templates that do not render tools: the Hermes prompt as plain messages. The tools go into the
 * system message, calls into the assistant's text as `<tool_call>` blocks, and results into a user turn
 * of `<tool_response>` blocks, so any template (and the line-per-message fallback) can carry them.
 */
function withToolsAsText(messages: readonly ChatMessage[], tools: readonly ChatTool[]): ChatMessage[] {
  const out: ChatMessage[] = [];
  if (tools.length > 0) {
    const listing = tools.map((t) => JSON.stringify(t)).join('\n');
    const instructions =
      `# Tools\n\nYou may call one or more functions to assist with the user query.\n\n<tools>\n${listing}\n</tools>\n\n` +
      'For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>';
    const first = messages[0];
    if (first?.role === 'system') out.push({ role: 'system', content: `${first.content}\n\n${instructions}` });
    else out.push({ role: 'system', content: instructions });
  }
  for (const [i, m] of messages.entries()) {
    if (i === 0 && m.role === 'system' && tools.length > 0) continue;
    if (m.role === 'tool') {
      const block = `<tool_response>\n${m.content}\n</tool_response>`;
      const last = out.at(-1);
      if (last?.role === 'user' && messages[i - 1]?.role === 'tool') last.content += `\n${block}`;
      else out.push({ role: 'user', content: block });
    } else if (m.tool_calls && m.tool_calls.length > 0) {
      // Arguments that are no JSON object come as the string the model wrote: they go in as written.
      const calls = m.tool_calls.map((c) => {
        const args = typeof c.function.arguments === 'string' ? c.function.arguments : JSON.stringify(c.function.arguments);
        return `<tool_call>\n{"name":${JSON.stringify(c.function.name)},"arguments":${args}}\n</tool_call>`;
      });
      out.push({ role: 'assistant', content: [m.content, ...calls].filter((s) => s !== '').join('\n') });
    } else out.push({ role: m.role, content: m.content, ...(m.name !== undefined ? { name: m.name } : {}) });
  }
  return out;
}

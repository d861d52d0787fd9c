/**
 * Renders chat messages into the prompt text the model was trained on, with the model's own Jinja
 * chat template (`tokenizer_config.json`) through @huggingface/jinja, or a plain fallback.
 */
import { Template } from '@huggingface/jinja';
import type { TextTokenizer } from './tokenizer.ts';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
  name?: string;
}

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
  ) {}

  static forTokenizer(tokenizer: Pick<TextTokenizer, 'chatTemplate' | 'bosToken' | 'eosToken'>): ChatTemplate {
    const bos = tokenizer.bosToken ?? '';
    const eos = tokenizer.eosToken ?? '';
    if (tokenizer.chatTemplate) {
      try {
        return new ChatTemplate(new Template(tokenizer.chatTemplate), 'model', bos, eos, null);
      } catch (error) {
        return new ChatTemplate(new Template(FALLBACK_TEMPLATE), 'fallback', bos, eos, (error as Error).message);
      }
    }
    return new ChatTemplate(new Template(FALLBACK_TEMPLATE), 'fallback', bos, eos, null);
  }

  /** Stop strings every chat request gets on top of its own (the fallback's next turn). */
  get implicitStops(): string[] {
    return this.source === 'fallback' ? FALLBACK_STOP : [];
  }

  /** The prompt text; throws ChatTemplateError when the template refuses the messages (raise_exception). */
  render(messages: readonly ChatMessage[], addGenerationPrompt = true): string {
    try {
      return this.template.render({
        messages: messages.map((m) => (m.name === undefined ? { role: m.role, content: m.content } : { ...m })),
        add_generation_prompt: addGenerationPrompt,
        bos_token: this.bosToken,
        eos_token: this.eosToken,
      });
    } catch (error) {
      throw new ChatTemplateError((error as Error).message);
    }
  }
}

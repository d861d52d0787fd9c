/**
 * Request bodies into engine requests: prompts and chat messages into token ids, OpenAI's sampling
 * fields with the model's defaults, the server's limits on max_tokens, stops and prompt length. Every
 * generation endpoint builds its job with `generationJob`; no HTTP here beyond the error kinds.
 */
import { randomBytes } from 'node:crypto';
import type { Config } from '../config.ts';
import { GREEDY } from '../engine/sampler.ts';
import type { GenerationRequest } from '../engine/types.ts';
import { ChatTemplateError, type ChatMessage, type ChatTool } from '../model/chat-template.ts';
import { chatMessages } from './chat-messages.ts';
import { toolPlanOf, type ToolPlan } from './tool-calls.ts';
import type { Transcript } from '../responses/store.ts';
import type { Serving } from '../serving.ts';
import { ApiError } from './errors.ts';
import { checkScorable } from './prompt-logprobs.ts';
import type { GenerationJob, ResponseFormat } from './generation.ts';
import { checkTokenId, grammarOf, samplingOf, type GenerationFields, type ResponseFields } from './sampling-fields.ts';
import { checkSessionId, type AppendBody, type ChatBody, type CompletionBody, type CreateSessionBody, type DetokenizeBody, type TokenizeBody } from './schemas.ts';

/** OpenAI's default for /v1/completions. */
const COMPLETIONS_DEFAULT_MAX_TOKENS = 16;
/** Default MAX_PROMPT_TOKENS, as a multiple of the model's context. */
export const PROMPT_CONTEXT_MULTIPLE = 4;

/** Who asks: the request id (logs, spans) and the owner (whose sessions). */
export interface Caller {
  requestId: string;
  owner: string;
}

/** A parent response's transcript, and where its reply sits among the child's messages. */
export interface ParentTranscript extends Transcript {
  replyIndex: number;
}

/** `session_id` from the body or the X-Session-Id header (they must agree). */
export function sessionIdOf(header: string | undefined, fromBody: string | null | undefined): string | undefined {
  if (header !== undefined) checkSessionId(header);
  if (header !== undefined && fromBody != null && header !== fromBody) {
    throw new ApiError('invalid_request', 'session_id in the body and the X-Session-Id header differ.', 'session_id');
  }
  return fromBody ?? header;
}

type EngineRequest = Omit<GenerationRequest, 'signal'>;

/**
 * The one prefill request: fill `sessionId`'s cache with `input`, generate nothing. POST /v1/sessions
 * with a prompt builds it (Translator.prefill), and so does the shared prompt of n choices (choices.ts).
 */
export function prefillRequest(caller: Caller, sessionId: string, input: number[], truncation: 'auto' | 'error'): EngineRequest {
  return { ...caller, sessionId, onUnknownSession: 'create', mode: 'replace', input, maxTokens: 0, sampling: GREEDY, stop: [], ignoreEos: true, truncation };
}

/** The n requests of one prompt: choice i samples with `seed + i` (each its own random stream without a seed); choices.ts fanOut runs them. */
function choicesOf(job: GenerationJob, n: number): GenerationJob {
  if (n <= 1) return job;
  const extraChoices = Array.from({ length: n - 1 }, (_, k) => {
    const index = k + 1;
    const request: EngineRequest = {
      ...job.request,
      requestId: `${job.request.requestId}-${index}`,
      seed: job.request.seed === undefined ? undefined : job.request.seed + index,
    };
    return { request, echo: job.echo };
  });
  return { ...job, extraChoices, shared: { sessionId: job.request.sessionId, prefill: null, release: () => {} } };
}

/** Turns one endpoint's body into the engine's terms, for one server config and loaded model. */
export class Translator {
  constructor(
    private readonly config: Config,
    private readonly parts: Serving,
  ) {}

  /** POST /v1/completions: one prompt, or several (each its own choice, batched by the engine). */
  completion(caller: Caller, b: CompletionBody, sessionId: string | undefined): GenerationJob {
    if (Array.isArray(b.prompt) && b.prompt.length === 0) throw new ApiError('invalid_request', "Invalid value for 'prompt': must not be empty.", 'prompt');
    const prompts: Array<string | number[]> =
      typeof b.prompt === 'string' || typeof b.prompt[0] === 'number' ? [b.prompt as string | number[]] : (b.prompt as Array<string | number[]>);
    if (prompts.length > 1 && sessionId !== undefined) {
      throw new ApiError('unsupported_parameter', 'Several prompts cannot share one session; send them without session_id, or one per request.', 'session_id');
    }
    const maxTokens = this.maxTokensOf(b.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, 'max_tokens');
    const stop = this.stopsOf(b.stop);
    const jobs = prompts.map((prompt, i) => {
      const input = this.encodePrompt(prompt, true);
      this.checkPromptLength(input, prompts.length > 1 ? `prompt[${i}]` : 'prompt');
      if (b.echo && b.logprobs != null) checkScorable(input, this.parts.model.contextLength, prompts.length > 1 ? `prompt[${i}]` : 'prompt');
      const echo = b.echo ? this.echoOf(prompt) : '';
      // Choice 0 keeps the request's id; the others are told apart in logs and spans by a suffix.
      const choiceCaller = i === 0 ? caller : { ...caller, requestId: `${caller.requestId}-${i}` };
      return this.generationJob(choiceCaller, b, { format: 'completion', route: 'completions', echo, sessionId, mode: 'replace', input, maxTokens, stop, logprobs: b.logprobs ?? undefined });
    });
    const [first, ...rest] = jobs;
    if (b.echo && b.logprobs != null) first.echoLogprobs = true;
    if (rest.length === 0) return choicesOf(first, this.choiceCountOf(b.n));
    if ((b.n ?? 1) !== 1) throw new ApiError('unsupported_parameter', "'n' above 1 together with several prompts is not supported; send one prompt per request.", 'n');
    return { ...first, extraChoices: rest.map((j) => ({ request: j.request, echo: j.echo })) };
  }

  /** POST /v1/chat/completions. */
  chat(caller: Caller, b: ChatBody, sessionId: string | undefined): GenerationJob {
    const tools = toolPlanOf(b.tools, b.tool_choice, b.parallel_tool_calls, this.parts.model.chatTemplate.toolCallFormat);
    if (tools?.grammar && b.response_format && b.response_format.type !== 'text') {
      throw new ApiError('unsupported_parameter', "'response_format' cannot be combined with a 'tool_choice' that requires a call.", 'response_format');
    }
    const input = this.renderChat(chatMessages(b.messages), true, 'messages', false, tools?.tools);
    this.checkPromptLength(input, 'messages');
    const param = b.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
    const truncation = this.truncationOf(b.truncation, sessionId);
    // Without an explicit limit under truncation "error", the default shrinks to what the context has left.
    const room = truncation === 'error' ? Math.max(1, this.parts.model.contextLength - input.length) : Infinity;
    const maxTokens = this.maxTokensOf(b.max_completion_tokens ?? b.max_tokens, Math.min(this.config.defaultChatMaxTokens, room), param);
    const stop = [...this.stopsOf(b.stop), ...this.parts.model.chatTemplate.implicitStops];
    if (b.top_logprobs != null && b.logprobs !== true) {
      throw new ApiError('invalid_request', "Invalid value for 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is given.", 'top_logprobs');
    }
    const logprobs = b.logprobs === true ? (b.top_logprobs ?? 0) : undefined;
    const job = this.generationJob(caller, b, { format: 'chat', route: 'chat', echo: '', sessionId, mode: 'replace', input, maxTokens, stop, logprobs });
    return choicesOf(withTools(job, tools), this.choiceCountOf(b.n));
  }

  /** `n`: 1 to MAX_N choices. */
  private choiceCountOf(n: number | null | undefined): number {
    if (n == null) return 1;
    if (n < 1 || n > this.config.maxN) throw new ApiError('invalid_request', `Invalid value for 'n': must be between 1 and ${this.config.maxN} on this server (MAX_N).`, 'n');
    return n;
  }

  /**
   * POST /v1/responses: the whole conversation (instructions, the chain so far, this input) rendered
   * with the chat template, as one replace-mode request on the chain's session. A child continues its
   * parent's exact tokens (`parent`, whose reply is `messages[parent.replyIndex]`) with the template's
   * text after that reply, so a chain never loses its cache to a re-tokenization of the model's own
   * output; when the template renders the earlier turns differently, the prompt is rendered afresh.
   * `tools` (responses-tools.ts) are rendered, enforced and read as in chat.
   */
  response(caller: Caller, messages: ChatMessage[], b: ResponseFields, sessionId: string | undefined, parent: ParentTranscript | null, tools: ToolPlan | null = null): { job: GenerationJob; promptText: string } {
    if (tools?.grammar && b.response_format && b.response_format.type !== 'text') {
      throw new ApiError('unsupported_parameter', "'text.format' cannot be combined with a 'tool_choice' that requires a call.", 'text.format');
    }
    const declared = tools?.tools ?? [];
    const promptText = this.renderText(messages, true, 'input', declared);
    const input = (parent && this.continuation(messages, parent, declared, promptText)) ?? this.parts.model.loaded.tokenizer.encode(promptText, false);
    this.checkPromptLength(input, 'input');
    // OpenAI's truncation "disabled" (its default) refuses what does not fit; "auto" slides the window.
    const truncation = b.truncation === 'auto' ? 'auto' : 'error';
    const room = truncation === 'error' ? Math.max(1, this.parts.model.contextLength - input.length) : Infinity;
    const maxTokens = this.maxTokensOf(b.max_output_tokens, Math.min(this.config.defaultChatMaxTokens, room), 'max_output_tokens');
    const fields = { ...b, truncation } as const;
    const stop = [...this.stopsOf(b.stop), ...this.parts.model.chatTemplate.implicitStops];
    const job = this.generationJob(caller, fields, { format: 'chat', route: 'responses', echo: '', sessionId, mode: 'replace', input, maxTokens, stop });
    return { job: withTools(job, tools), promptText };
  }

  /**
   * The parent's tokens plus the tokens of what the template writes after the parent's reply, when the
   * template renders everything before that reply as the parent's prompt (up to trailing whitespace,
   * such as the space a fallback template puts after "assistant:"); null otherwise. A reply that made
   * tool calls is rendered from its structured calls: it continues only where that rendering is exactly
   * the text the model wrote (a grammar-constrained call in the template's own format is).
   */
  private continuation(messages: ChatMessage[], parent: ParentTranscript, tools: ChatTool[], promptText: string): number[] | null {
    const encode = (text: string) => this.parts.model.loaded.tokenizer.encode(text, false);
    if (parent.replyText !== undefined) {
      const head = parent.promptText + parent.replyText;
      return promptText.startsWith(head) ? parent.tokens.concat(encode(promptText.slice(head.length))) : null;
    }
    const marker = `\u0000warmkv-reply-${randomBytes(8).toString('hex')}\u0000`;
    const marked = messages.map((m, i) => (i === parent.replyIndex ? { ...m, content: marker } : m));
    const parts = this.renderText(marked, true, 'input', tools).split(marker);
    if (parts.length !== 2 || parts[0].trimEnd() !== parent.promptText.trimEnd()) return null;
    return parent.tokens.concat(encode(parts[1]));
  }

  /** POST /v1/sessions/{id}/completions: the prompt continues the session's transcript. */
  append(caller: Caller, sessionId: string, b: AppendBody): GenerationJob {
    const input = this.encodePrompt(b.prompt, false);
    this.checkPromptLength(input, 'prompt');
    const echo = b.echo ? this.echoOf(b.prompt) : '';
    const maxTokens = this.maxTokensOf(b.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS, 'max_tokens');
    return this.generationJob(caller, b, { format: 'completion', route: 'session_completions', echo, sessionId, mode: 'append', input, maxTokens, stop: this.stopsOf(b.stop) });
  }

  /** The prompt of POST /v1/sessions, as token ids. */
  prefillInput(b: CreateSessionBody): number[] {
    const input = b.messages != null ? this.renderChat(chatMessages(b.messages), b.add_generation_prompt ?? false, 'messages') : this.encodePrompt(b.prompt!, true);
    this.checkPromptLength(input, b.messages != null ? 'messages' : 'prompt');
    return input;
  }

  /** POST /tokenize: the ids a generation would see for this prompt or these messages (no length limit). */
  tokenize(b: TokenizeBody): number[] {
    if (b.messages != null) return this.renderChat(chatMessages(b.messages), b.add_generation_prompt ?? true, 'messages', b.add_special_tokens ?? false);
    return this.parts.model.loaded.tokenizer.encode(b.prompt!, b.add_special_tokens ?? true);
  }

  /** POST /detokenize: ids outside the vocabulary are a 400 naming the first one. */
  detokenize(b: DetokenizeBody): string {
    const vocab = this.parts.model.loaded.vocabSize;
    const bad = b.tokens.findIndex((id) => id >= vocab);
    if (bad !== -1) throw new ApiError('invalid_request', `Invalid value for 'tokens[${bad}]': ${b.tokens[bad]} is not below the vocabulary size ${vocab}.`, `tokens[${bad}]`);
    return this.parts.model.loaded.tokenizer.decode(b.tokens, false);
  }

  /** POST /v1/sessions with a prompt: prefill the session's cache, generate nothing. */
  prefill(caller: Caller, sessionId: string, input: number[]): EngineRequest {
    return prefillRequest(caller, sessionId, input, this.truncationOf(undefined, sessionId));
  }

  /** The one builder of a generation: the endpoint's parts plus what every body shares. */
  private generationJob(
    caller: Caller,
    b: GenerationFields,
    job: {
      format: ResponseFormat;
      route: string;
      echo: string;
      sessionId: string | undefined;
      mode: 'replace' | 'append';
      input: number[];
      maxTokens: number;
      stop: string[];
      logprobs?: number;
    },
  ): GenerationJob {
    const stream = b.stream ?? false;
    const minTokens = b.min_tokens ?? 0;
    if (minTokens > job.maxTokens) {
      throw new ApiError('invalid_request', `Invalid value for 'min_tokens': ${minTokens} is more than the request's maximum of ${job.maxTokens} tokens.`, 'min_tokens');
    }
    // min_tokens holds EOS back even where the grammar allows nothing else.
    if (minTokens > 0 && b.response_format && b.response_format.type !== 'text') {
      throw new ApiError('unsupported_parameter', "'min_tokens' cannot be combined with a JSON 'response_format'.", 'min_tokens');
    }
    const stopTokenIds = b.stop_token_ids ?? [];
    stopTokenIds.forEach((id, i) => checkTokenId(id, `stop_token_ids[${i}]`, this.parts.model.loaded.vocabSize));
    return {
      format: job.format,
      route: job.route,
      stream,
      includeUsage: stream && (b.stream_options?.include_usage ?? false),
      includeStepStats: stream && (b.stream_options?.include_step_stats ?? false),
      echo: job.echo,
      request: {
        ...caller,
        sampling: samplingOf(b, this.parts.model.loaded.folder.generationDefaults, this.parts.model.loaded.vocabSize),
        seed: b.seed ?? undefined,
        ignoreEos: b.ignore_eos ?? false,
        truncation: this.truncationOf(b.truncation, job.sessionId),
        sessionId: job.sessionId,
        // The append API names a session that must exist; the others create it (admission.ts does).
        onUnknownSession: job.mode === 'append' ? 'fail' : 'create',
        mode: job.mode,
        input: job.input,
        maxTokens: job.maxTokens,
        stop: job.stop,
        stopTokenIds,
        minTokens,
        includeStopInOutput: b.include_stop_str_in_output ?? false,
        ...(job.logprobs !== undefined ? { logprobs: job.logprobs } : {}),
        grammar: grammarOf(b.response_format),
      },
    };
  }

  private echoOf(prompt: string | number[]): string {
    return typeof prompt === 'string' ? prompt : this.parts.model.loaded.tokenizer.decode(prompt, false);
  }

  /**
   * The request's truncation, else DEFAULT_TRUNCATION, else by kind: a session slides its window
   * (`auto`); a request without one is refused when it does not fit the context (`error`, as OpenAI).
   */
  private truncationOf(requested: 'auto' | 'error' | null | undefined, sessionId: string | undefined): 'auto' | 'error' {
    return requested ?? this.config.defaultTruncation ?? (sessionId === undefined ? 'error' : 'auto');
  }

  /**
   * MAX_PROMPT_TOKENS, by default PROMPT_CONTEXT_MULTIPLE times the context: a prompt far beyond the
   * context would only slide through the window, holding the prefill (and everyone behind it) for long.
   */
  private checkPromptLength(input: number[], param: string): void {
    const limit = this.config.maxPromptTokens ?? PROMPT_CONTEXT_MULTIPLE * this.parts.model.contextLength;
    if (input.length > limit) {
      throw new ApiError(
        'context_length_exceeded',
        `The prompt has ${input.length} tokens; this server accepts at most ${limit} (MAX_PROMPT_TOKENS; the model's context is ${this.parts.model.contextLength} tokens).`,
        param,
      );
    }
  }

  private maxTokensOf(requested: number | null | undefined, fallback: number, param: string): number {
    const limit = this.config.maxTokensLimit;
    if (requested != null) {
      if (requested > limit) throw new ApiError('invalid_request', `Invalid value for '${param}': at most ${limit} on this server.`, param);
      return requested;
    }
    return Math.min(fallback, limit);
  }

  private stopsOf(stop: string | string[] | null | undefined): string[] {
    const list = (stop == null ? [] : Array.isArray(stop) ? stop : [stop]).filter((s) => s.length > 0);
    if (list.length > this.config.maxStopSequences) {
      throw new ApiError('invalid_request', `Invalid value for 'stop': at most ${this.config.maxStopSequences} stop sequences.`, 'stop');
    }
    return list;
  }

  private encodePrompt(prompt: string | number[], atStart: boolean): number[] {
    if (typeof prompt !== 'string') return prompt;
    const ids = this.parts.model.loaded.tokenizer.encode(prompt, atStart);
    // An empty prompt conditions on the start of a document, as OpenAI's models do.
    const bos = this.parts.model.loaded.folder.bosTokenId;
    if (ids.length === 0 && atStart && bos !== null) return [bos];
    return ids;
  }

  private renderChat(messages: ChatMessage[], addGenerationPrompt: boolean, param: string, addSpecialTokens = false, tools: ChatTool[] = []): number[] {
    return this.parts.model.loaded.tokenizer.encode(this.renderText(messages, addGenerationPrompt, param, tools), addSpecialTokens);
  }

  private renderText(messages: ChatMessage[], addGenerationPrompt: boolean, param: string, tools: ChatTool[] = []): string {
    try {
      return this.parts.model.chatTemplate.render(messages, addGenerationPrompt, tools);
    } catch (error) {
      if (error instanceof ChatTemplateError) {
        throw new ApiError('invalid_request', `The model's chat template cannot render these messages: ${error.message}`, param);
      }
      throw error;
    }
  }
}

/** A chat or Responses job with tools: its reply is read for calls, under the plan's grammar if it has one. */
function withTools(job: GenerationJob, tools: ToolPlan | null): GenerationJob {
  if (!tools?.parse) return job;
  return { ...job, toolCallFormat: tools.format, request: tools.grammar ? { ...job.request, grammar: tools.grammar } : job.request };
}

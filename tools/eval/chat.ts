/**
 * The chat suite (`npm run eval -- --suite chat [--model DIR]`): the model's held-out chat cases
 * (`eval.json` in the model folder, written by tools/train/chat_prepare.py) asked through warmkv's HTTP
 * API on a real listening socket, greedy (temperature 0), with warm sessions.
 *
 * - facts: exact answer contained in the reply, for unseen phrasings of seen countries (and, as references,
 *   seen phrasings and unseen countries), plus arithmetic;
 * - memory: 3-6 user turns; the last asks for something said in turn 1 or 2. Each conversation runs three
 *   ways: native append (POST /v1/sessions/{id}/completions with the template's text for each turn),
 *   OpenAI-style resend with `session_id`, and a full recompute (no session, the whole history every turn).
 *   Every reply of the warm runs must equal the recompute's, answer for answer;
 * - tools: the tool list in the system turn (the text the template renders for `tools`), one request;
 *   the reply must be one `<tool_call>` whose JSON names the right tool with schema-valid arguments.
 *   Then the tool's result comes back as a `<tool_response>` turn and the final answer must use it.
 *   The same question runs again with constrained decoding: `/v1/completions` on the template's text
 *   up to the assistant's `<tool_call>\n`, with a `response_format` JSON schema that admits a call to
 *   one of the offered tools with schema-valid arguments, so what is left to the model is the choice of
 *   tool and the argument values.
 */
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import OpenAI from 'openai';
import { loadConfig } from '../../src/config.ts';
import { Runtime } from '../../src/runtime.ts';
import { createApp } from '../../src/server/app.ts';

type Message = { role: 'system' | 'user' | 'assistant'; content: string };
interface FactCase { question: string; answer: string; relation?: string }
interface MemoryCase { system: string | null; user_turns: string[]; slot: string; answer: string }
interface JsonSchema { type?: string; enum?: unknown[]; properties?: Record<string, JsonSchema>; required?: string[] }
interface ToolDef { type: 'function'; function: { name: string; description?: string; parameters: JsonSchema } }
interface ToolCase { tools: ToolDef[]; system_text: string; question: string; tool: string; arguments: Record<string, unknown>; result: string; final_answer: string }
export interface ChatEvalCases {
  facts: FactCase[];
  facts_seen_phrasing: FactCase[];
  facts_unseen_entities: FactCase[];
  arithmetic: FactCase[];
  memory: MemoryCase[];
  tools: ToolCase[];
}

const MAX_TOKENS = 64;
/** The served model's id (requests must name it); set when the server starts. */
let servedModel = '';
const TOOL_MAX_TOKENS = 96;

export interface Share { correct: number; total: number; share: number }
const share = (correct: number, total: number): Share => ({ correct, total, share: total ? correct / total : 0 });
const contains = (reply: string, answer: string) => reply.toLowerCase().includes(answer.toLowerCase());

/** Checks `value` against the subset of JSON Schema that tool parameters use here. */
export function schemaErrors(value: unknown, schema: JsonSchema, path = '$'): string[] {
  const errors: string[] = [];
  if (schema.enum && !schema.enum.includes(value)) errors.push(`${path}: not one of ${JSON.stringify(schema.enum)}`);
  switch (schema.type) {
    case 'object': {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return [`${path}: not an object`];
      const record = value as Record<string, unknown>;
      for (const key of schema.required ?? []) if (!(key in record)) errors.push(`${path}.${key}: missing`);
      for (const [key, v] of Object.entries(record)) {
        const sub = schema.properties?.[key];
        if (!sub) errors.push(`${path}.${key}: unknown property`);
        else errors.push(...schemaErrors(v, sub, `${path}.${key}`));
      }
      break;
    }
    case 'string':
      if (typeof value !== 'string') errors.push(`${path}: not a string`);
      break;
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) errors.push(`${path}: not a number`);
      break;
  }
  return errors;
}

/** One Hermes/Qwen tool call as the whole reply: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`. */
export function parseToolCall(reply: string): { name: string; arguments: unknown } | null {
  const match = /^\s*<tool_call>\s*([\s\S]*?)\s*<\/tool_call>\s*$/.exec(reply);
  if (!match) return null;
  try {
    const call = JSON.parse(match[1]!) as { name?: unknown; arguments?: unknown };
    return typeof call.name === 'string' && 'arguments' in call ? { name: call.name, arguments: call.arguments } : null;
  } catch {
    return null;
  }
}

function sameJson(a: unknown, b: unknown): boolean {
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return a === b;
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && sameJson((a as never)[k], (b as never)[k]));
}

async function withServer<T>(modelDir: string, run: (url: string, client: OpenAI, runtime: Runtime) => Promise<T>): Promise<T> {
  const config = loadConfig({}, ['--model', modelDir, '--log-level', 'silent']);
  const runtime = new Runtime(config, { processMetrics: false });
  await runtime.ready;
  servedModel = runtime.modelId;
  const app = createApp(runtime);
  const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  try {
    return await run(url, client, runtime);
  } finally {
    (server as { closeAllConnections?: () => void }).closeAllConnections?.();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await runtime.drain(1000);
  }
}

interface Reply { text: string; finish: string; cached: number; prompt: number }

async function chat(client: OpenAI, messages: Message[], sessionId?: string, maxTokens = MAX_TOKENS): Promise<Reply> {
  const body = { model: servedModel, messages, temperature: 0, max_completion_tokens: maxTokens, ...(sessionId ? { session_id: sessionId } : {}) };
  const r = await client.chat.completions.create(body as OpenAI.ChatCompletionCreateParamsNonStreaming);
  return {
    text: r.choices[0]!.message.content ?? '',
    finish: r.choices[0]!.finish_reason,
    cached: r.usage?.prompt_tokens_details?.cached_tokens ?? 0,
    prompt: r.usage?.prompt_tokens ?? 0,
  };
}

async function post(url: string, path: string, body: unknown): Promise<Record<string, unknown>> {
  const r = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const json = (await r.json()) as Record<string, unknown>;
  if (!r.ok) throw new Error(`${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

async function askAll(client: OpenAI, cases: FactCase[]) {
  const results: Array<{ question: string; answer: string; relation?: string; reply: string; ok: boolean }> = [];
  for (const c of cases) {
    const reply = await chat(client, [{ role: 'user', content: c.question }]);
    results.push({ question: c.question, answer: c.answer, relation: c.relation, reply: reply.text, ok: contains(reply.text, c.answer) });
  }
  return { ...share(results.filter((r) => r.ok).length, cases.length), results };
}

/** ChatML text of one user turn and the assistant opening; after a reply cut by max_tokens, its end first. */
function appendText(content: string, previous: Reply | null): string {
  const close = previous === null ? '' : previous.finish === 'length' ? '<|im_end|>\n' : '\n';
  return `${close}<|im_start|>user\n${content}<|im_end|>\n<|im_start|>assistant\n`;
}

/** The first position at which two token sequences differ (a prefix differs at the shorter one's end); -1 when equal. */
export function firstDifference(a: readonly number[], b: readonly number[]): number {
  const shorter = Math.min(a.length, b.length);
  for (let i = 0; i < shorter; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : shorter;
}

async function memoryCase(url: string, client: OpenAI, runtime: Runtime, c: MemoryCase, index: number) {
  const base: Message[] = c.system ? [{ role: 'system', content: c.system }] : [];
  const runMessages = async (sessionId?: string) => {
    const history = [...base];
    const replies: Reply[] = [];
    const prompts: Message[][] = [];
    for (const turn of c.user_turns) {
      history.push({ role: 'user', content: turn });
      prompts.push([...history]);
      const reply = await chat(client, history, sessionId);
      replies.push(reply);
      history.push({ role: 'assistant', content: reply.text });
    }
    return { replies, prompts };
  };
  const { replies: recompute, prompts: recomputePrompts } = await runMessages();
  const { replies: resend } = await runMessages(`eval-resend-${index}`);
  const nativeId = `eval-native-${index}`;
  await post(url, '/v1/sessions', c.system ? { session_id: nativeId, messages: base } : { session_id: nativeId });
  const native: Reply[] = [];
  for (const turn of c.user_turns) {
    const r = await post(url, `/v1/sessions/${nativeId}/completions`, { prompt: appendText(turn, native.at(-1) ?? null), temperature: 0, max_tokens: MAX_TOKENS });
    const choice = (r.choices as Array<{ text: string; finish_reason: string }>)[0]!;
    const usage = r.usage as { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
    native.push({ text: choice.text, finish: choice.finish_reason, cached: usage.prompt_tokens_details.cached_tokens, prompt: usage.prompt_tokens });
  }
  const same = (a: Reply[]) => a.every((r, i) => r.text === recompute[i]!.text);
  // A native session keeps the tokens the model generated; a resend (and the recompute) re-tokenizes the
  // reply's text, which can give another token sequence, often of the same length (` W` `ead` `s`
  // against ` We` `ad` `s`), so the ids are compared: the native prompt of turn i is the first
  // prompt_tokens ids of the session's transcript, the recompute's is what /tokenize gives for its messages.
  // A difference up to the first differing reply shows that the two runs conditioned on different
  // tokens, not that the cache is wrong.
  const transcript = runtime.serving!.store.get('', nativeId)?.tokens.slice() ?? [];
  const tokenDiffs: number[] = [];
  for (const [i, r] of native.entries()) {
    const ids = (await post(url, '/tokenize', { messages: recomputePrompts[i] })).tokens as number[];
    tokenDiffs.push(firstDifference(transcript.slice(0, r.prompt), ids));
  }
  const firstDiff = native.findIndex((r, i) => r.text !== recompute[i]!.text);
  const nativeTokensDiffer = firstDiff >= 0 && tokenDiffs.slice(0, firstDiff + 1).some((d) => d >= 0);
  const diffTurn = tokenDiffs.findIndex((d) => d >= 0);
  const nativeFirstTokenDifference = diffTurn < 0 ? null : { turn: diffTurn, position: tokenDiffs[diffTurn]! };
  return { recompute, resend, native, tokenDiffs, sameResend: same(resend), sameNative: same(native), nativeTokensDiffer, nativeFirstTokenDifference, answer: c.answer };
}

/** A schema for `{"name": ..., "arguments": {...}}` that admits exactly the valid calls to the offered tools. */
export function toolCallSchema(tools: ToolDef[]): Record<string, unknown> {
  return {
    anyOf: tools.map((t) => ({
      type: 'object',
      properties: { name: { const: t.function.name }, arguments: { ...t.function.parameters, additionalProperties: false } },
      required: ['name', 'arguments'],
      additionalProperties: false,
    })),
  };
}

/** The call under constrained decoding: the prompt ends with the assistant's `<tool_call>\n`, the grammar writes the JSON. */
async function constrainedToolCall(url: string, c: ToolCase) {
  const prompt = `<|im_start|>system\n${c.system_text}<|im_end|>\n<|im_start|>user\n${c.question}<|im_end|>\n<|im_start|>assistant\n<tool_call>\n`;
  const r = await post(url, '/v1/completions', {
    model: servedModel, prompt, temperature: 0, max_tokens: TOOL_MAX_TOKENS,
    response_format: { type: 'json_schema', json_schema: { name: 'tool_call', schema: toolCallSchema(c.tools) } },
  });
  const text = (r.choices as Array<{ text: string }>)[0]!.text;
  const call = parseToolCall(`<tool_call>\n${text}\n</tool_call>`);
  const def = c.tools.find((t) => t.function.name === call?.name);
  const rightTool = call !== null && call.name === c.tool;
  const schemaValid = rightTool && def !== undefined && schemaErrors(call.arguments, def.function.parameters).length === 0;
  return { rightTool, schemaValid, exactArguments: schemaValid && sameJson(call.arguments, c.arguments), reply: text };
}

async function toolCase(url: string, client: OpenAI, c: ToolCase) {
  const messages: Message[] = [{ role: 'system', content: c.system_text }, { role: 'user', content: c.question }];
  const first = await chat(client, messages, undefined, TOOL_MAX_TOKENS);
  const call = parseToolCall(first.text);
  const def = c.tools.find((t) => t.function.name === call?.name);
  const parsed = call !== null;
  const rightTool = parsed && call.name === c.tool;
  const schemaValid = rightTool && def !== undefined && schemaErrors(call.arguments, def.function.parameters).length === 0;
  const exactArguments = schemaValid && sameJson(call.arguments, c.arguments);
  // the result comes back as the template renders a `tool` message: a user turn holding <tool_response>
  const expectedCall = `<tool_call>\n{"name": "${c.tool}", "arguments": ${pyJson(c.arguments)}}\n</tool_call>`;
  const final = await chat(client, [...messages, { role: 'assistant', content: expectedCall }, { role: 'user', content: `<tool_response>\n${c.result}\n</tool_response>` }]);
  const resultValues = Object.values(JSON.parse(c.result) as Record<string, unknown>).filter((v) => typeof v !== 'boolean').map(String);
  const usesResult = resultValues.every((v) => final.text.includes(v));
  const constrained = await constrainedToolCall(url, c);
  return {
    parsed, rightTool, schemaValid, exactArguments, usesResult, reply: first.text, final: final.text,
    constrainedRightTool: constrained.rightTool, constrainedValid: constrained.schemaValid,
    constrainedExact: constrained.exactArguments, constrainedReply: constrained.reply,
  };
}

/** JSON with Python's default separators (", ", ": "), as the template's `tojson` and the training data. */
export function pyJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(pyJson).join(', ')}]`;
  if (typeof value === 'object' && value !== null) return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pyJson(v)}`).join(', ')}}`;
  return JSON.stringify(value);
}

export async function runChatSuite(modelDir: string, cases: ChatEvalCases) {
  return withServer(modelDir, async (url, client, runtime) => {
    const started = performance.now();
    const progress = (what: string) => console.error(`chat suite: ${what} (${((performance.now() - started) / 1000).toFixed(0)} s)`);
    const facts = await askAll(client, cases.facts);
    progress('facts');
    const factsSeenPhrasing = await askAll(client, cases.facts_seen_phrasing);
    const factsUnseenEntities = await askAll(client, cases.facts_unseen_entities);
    const arithmetic = await askAll(client, cases.arithmetic);
    const byRelation: Record<string, Share> = {};
    for (const relation of new Set(cases.facts.map((f) => f.relation!))) {
      const sub = facts.results.filter((f) => f.relation === relation);
      byRelation[relation] = share(sub.filter((f) => f.ok).length, sub.length);
    }
    progress('reference facts and arithmetic');
    const memoryRuns: Array<Awaited<ReturnType<typeof memoryCase>>> = [];
    for (const [i, c] of cases.memory.entries()) memoryRuns.push(await memoryCase(url, client, runtime, c, i));
    const recall = (pick: (r: (typeof memoryRuns)[number]) => Reply[]) => share(memoryRuns.filter((r) => contains(pick(r).at(-1)!.text, r.answer)).length, memoryRuns.length);
    progress('memory');
    const toolRuns: Array<Awaited<ReturnType<typeof toolCase>>> = [];
    for (const c of cases.tools) toolRuns.push(await toolCase(url, client, c));
    type ToolKey = 'parsed' | 'rightTool' | 'schemaValid' | 'exactArguments' | 'usesResult' | 'constrainedRightTool' | 'constrainedValid' | 'constrainedExact';
    const count = (key: ToolKey) => share(toolRuns.filter((t) => t[key]).length, toolRuns.length);
    const lastNative = memoryRuns.at(-1)!.native;
    return {
      facts: { heldOutPhrasings: facts, byRelation, seenPhrasings: factsSeenPhrasing, unseenCountries: factsUnseenEntities },
      arithmetic,
      memory: {
        conversations: memoryRuns.length,
        turns: memoryRuns.reduce((n, r) => n + r.recompute.length, 0),
        recallRecompute: recall((r) => r.recompute),
        recallResend: recall((r) => r.resend),
        recallNative: recall((r) => r.native),
        repliesEqualResendVsRecompute: share(memoryRuns.filter((r) => r.sameResend).length, memoryRuns.length),
        repliesEqualNativeVsRecompute: share(memoryRuns.filter((r) => r.sameNative).length, memoryRuns.length),
        nativeDifferencesWithOtherTokens: share(memoryRuns.filter((r) => r.nativeTokensDiffer).length, memoryRuns.filter((r) => !r.sameNative).length),
        // per conversation whose native prompt ids ever left the recompute's: the first such turn, and the position in its prompt
        nativeFirstTokenDifferences: memoryRuns.flatMap((r, conversation) => (r.nativeFirstTokenDifference ? [{ conversation, ...r.nativeFirstTokenDifference }] : [])),
        cachedTokensLastTurnNative: lastNative.map((r) => ({ prompt: r.prompt, cached: r.cached })),
        cachedTokensLastTurnResend: memoryRuns.at(-1)!.resend.map((r) => ({ prompt: r.prompt, cached: r.cached })),
        examples: memoryRuns.slice(0, 3).map((r, i) => ({ turns: cases.memory[i]!.user_turns, replies: r.native.map((x) => x.text), answer: r.answer })),
        // every warm reply that differs from the recompute's: which conversation, turn and run, and both texts
        mismatches: memoryRuns.flatMap((r, i) => (['resend', 'native'] as const).flatMap((run) => r[run]
          .map((reply, turn) => ({
            conversation: i, turn, run, warm: reply.text, recompute: r.recompute[turn]!.text, warmPromptTokens: reply.prompt, recomputePromptTokens: r.recompute[turn]!.prompt,
            // native only: where its prompt ids first differ from the recompute's (null: the same ids)
            ...(run === 'native' ? { firstDifferentPromptToken: r.tokenDiffs[turn]! >= 0 ? r.tokenDiffs[turn]! : null } : {}),
          }))
          .filter((m) => m.warm !== m.recompute))),
      },
      tools: {
        cases: toolRuns.length,
        parsedToolCall: count('parsed'),
        rightTool: count('rightTool'),
        validCall: count('schemaValid'),
        exactArguments: count('exactArguments'),
        finalAnswerUsesResult: count('usesResult'),
        constrained: { rightTool: count('constrainedRightTool'), validCall: count('constrainedValid'), exactArguments: count('constrainedExact') },
        examples: toolRuns.slice(0, 4).map((t) => ({ reply: t.reply, final: t.final, constrained: t.constrainedReply })),
      },
      seconds: (performance.now() - started) / 1000,
    };
  });
}

export function chatMarkdown(model: string, r: Awaited<ReturnType<typeof runChatSuite>>, brownPerplexity: number | null): string {
  const pct = (s: Share) => `${(s.share * 100).toFixed(1)}% (${s.correct}/${s.total})`;
  const rows = [
    ['facts, held-out phrasings, seen countries', pct(r.facts.heldOutPhrasings)],
    ...Object.entries(r.facts.byRelation).map(([k, v]) => [`  ${k}`, pct(v)]),
    ['facts, training phrasings (reference)', pct(r.facts.seenPhrasings)],
    ['facts, held-out countries (never seen; reference)', pct(r.facts.unseenCountries)],
    ['arithmetic, held-out phrasings', pct(r.arithmetic)],
    ['memory recall, full recompute', pct(r.memory.recallRecompute)],
    ['memory recall, OpenAI-style resend with session_id (warm)', pct(r.memory.recallResend)],
    ['memory recall, native append (warm)', pct(r.memory.recallNative)],
    ['conversations with every reply equal: resend vs recompute', pct(r.memory.repliesEqualResendVsRecompute)],
    ['conversations with every reply equal: native vs recompute', pct(r.memory.repliesEqualNativeVsRecompute)],
    ['  of the differing ones: the native prompt had other token ids (the model\'s own tokens, not the re-tokenized text)', pct(r.memory.nativeDifferencesWithOtherTokens)],
    ['tool calls: parsable <tool_call> JSON', pct(r.tools.parsedToolCall)],
    ['tool calls: valid call (right tool, schema-valid arguments)', pct(r.tools.validCall)],
    ['tool calls: exact arguments', pct(r.tools.exactArguments)],
    ['tool calls: final answer uses the tool result', pct(r.tools.finalAnswerUsesResult)],
    ['tool calls, constrained decoding: right tool', pct(r.tools.constrained.rightTool)],
    ['tool calls, constrained decoding: valid call (right tool, schema-valid arguments)', pct(r.tools.constrained.validCall)],
    ['tool calls, constrained decoding: exact arguments', pct(r.tools.constrained.exactArguments)],
  ];
  if (brownPerplexity !== null) rows.push(['Brown held-out perplexity (independent 512-token chunks, 84,778 predictions)', brownPerplexity.toFixed(2)]);
  return [`model ${model}, greedy, through the HTTP API`, '', '| measure | result |', '| --- | ---: |', ...rows.map(([a, b]) => `| ${a} | ${b} |`)].join('\n');
}

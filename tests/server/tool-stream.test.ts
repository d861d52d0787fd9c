/**
 * The incremental tool-call reader (src/server/tool-stream.ts): what each format streams and when, and
 * that its events add up to its final reply for any split of the text (char by char, random pieces,
 * the whole text at once), including broken, cut and held-back calls.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import type { ToolCallFormat } from '../../src/model/chat-template.ts';
import { ToolCallReader, type ToolReply, type ToolStreamEvent } from '../../src/server/tool-stream.ts';

interface Read {
  reply: ToolReply;
  /** Every event, in order, with the index of the piece that made it (pieces.length: finish). */
  events: Array<ToolStreamEvent & { piece: number }>;
}

function read(pieces: readonly string[], format: ToolCallFormat): Read {
  const reader = new ToolCallReader(format);
  const events = pieces.flatMap((piece, i) => reader.push(piece).map((e) => ({ ...e, piece: i })));
  const { events: last, ...reply } = reader.finish();
  return { reply, events: [...events, ...last.map((e) => ({ ...e, piece: pieces.length }))] };
}

const chars = (text: string) => [...text];

/** The reply without its random call ids. */
const shape = (reply: ToolReply) => ({ content: reply.content, calls: reply.calls.map((c) => [c.function.name, c.function.arguments]) });

/** What a client assembles from the events alone: the text, and per call its id, name and arguments. */
function assembled(events: readonly ToolStreamEvent[]) {
  let content = '';
  const calls: Array<{ id: string; name: string; args: string; ended: boolean }> = [];
  for (const e of events) {
    if (e.type === 'content') content += e.text;
    else if (e.type === 'call') {
      assert.equal(e.index, calls.length, 'calls start in index order');
      calls.push({ id: e.id, name: e.name, args: '', ended: false });
    } else if (e.type === 'arguments') {
      assert.equal(calls[e.index].ended, false, 'no arguments after a call ended');
      calls[e.index].args += e.text;
    } else {
      assert.equal(e.call.function.arguments, calls[e.index].args, 'call_end carries the streamed arguments');
      calls[e.index].ended = true;
    }
  }
  return { content, calls };
}

/** The streamed events add up to exactly the final reply, every call ends once, ids are OpenAI's shape. */
function assertConsistent({ reply, events }: Read): void {
  const { content, calls } = assembled(events);
  assert.equal(content, reply.content ?? '');
  assert.notEqual(reply.content, '', 'empty content is null');
  assert.deepEqual(
    calls.map((c) => [c.id, c.name, c.args]),
    reply.calls.map((c) => [c.id, c.function.name, c.function.arguments]),
  );
  assert.ok(calls.every((c) => c.ended));
  for (const call of reply.calls) {
    assert.match(call.id, /^call_[0-9a-f]{24}$/);
    assert.equal(call.type, 'function');
  }
}

/** Splits `text` at `cuts` (positions, any order). */
function split(text: string, cuts: readonly number[]): string[] {
  const at = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b);
  return [0, ...at].map((from, i) => text.slice(from, at[i] ?? text.length)).filter((p, i) => p !== '' || i === 0);
}

/** Any split of the text reads to the same reply, consistent with its events. */
function assertSplitFree(text: string, format: ToolCallFormat, cuts: readonly number[]): ToolReply {
  const whole = read([text], format);
  assertConsistent(whole);
  for (const pieces of [chars(text), split(text, cuts)]) {
    const other = read(pieces, format);
    assertConsistent(other);
    assert.deepEqual(shape(other.reply), shape(whole.reply), JSON.stringify(pieces));
  }
  return whole.reply;
}

const HERMES_CALL = (name: string, args: string) => `<tool_call>\n{"name": "${name}", "arguments": ${args}}\n</tool_call>`;

describe('hermes', () => {
  test('text before, between and after calls: trimmed as a whole, calls with their raw arguments', () => {
    const text = `  Let me look.\n${HERMES_CALL('get_weather', '{"city": "Oslo", "days": 3}')}\n${HERMES_CALL('search', '{"query":"cats"}')}\nDone. \n`;
    const reply = assertSplitFree(text, 'hermes', [5, 40, 41, 90]);
    assert.deepEqual(shape(reply), {
      content: 'Let me look.\n\n\nDone.',
      calls: [
        ['get_weather', '{"city": "Oslo", "days": 3}'],
        ['search', '{"query":"cats"}'],
      ],
    });
    // The text around the blocks, as trim() of the reply without them would give it.
    assert.equal(reply.content, text.replace(/<tool_call>\s*[\s\S]*?\s*<\/tool_call>/g, '').trim());
  });

  test('a call starts when its name closes, its arguments stream before its object closes', () => {
    const text = HERMES_CALL('get_weather', '{"city": "Oslo"}');
    const { events } = read(chars(text), 'hermes');
    const start = events.find((e) => e.type === 'call')!;
    assert.equal(text[start.piece], '"', 'on the closing quote of the name');
    assert.equal(text.slice(0, start.piece + 1), '<tool_call>\n{"name": "get_weather"');
    const args = events.filter((e) => e.type === 'arguments');
    assert.equal(args.length, '{"city": "Oslo"}'.length, 'one delta per character fed');
    assert.ok(args[0].piece < text.indexOf('}}'));
    const end = events.find((e) => e.type === 'call_end')!;
    assert.equal(end.piece, text.lastIndexOf('}'), 'the call ends with its object, not at </tool_call>');
    assert.equal(end.type === 'call_end' && end.closed, true);
  });

  test('text streams at once except a suffix that may open a block; a `<tool` that is text stays text', () => {
    const { events, reply } = read(['Hi <', 'b>, 1 <tool', ' x'], 'hermes');
    assert.deepEqual(
      events.map((e) => [e.type, e.type === 'content' ? e.text : '', e.piece]),
      [
        ['content', 'Hi', 0],
        ['content', ' <b>, 1', 1],
        ['content', ' <tool x', 2],
      ],
    );
    assert.deepEqual(shape(reply), { content: 'Hi <b>, 1 <tool x', calls: [] });
    assert.equal(read(['x <tool_ca'], 'hermes').reply.content, 'x <tool_ca', 'an unfinished tag at the end is text');
  });

  test('an object that does not start with its name is held back, then sent whole when it closes', () => {
    const text = '<tool_call>\n{"arguments": {"q": "a"}, "name": "search"}\n</tool_call>';
    const { events, reply } = read(chars(text), 'hermes');
    assert.deepEqual(shape(reply), { content: null, calls: [['search', '{"q": "a"}']] });
    const close = text.indexOf('}\n<');
    assert.deepEqual(
      events.map((e) => [e.type, e.piece]),
      [
        ['call', close],
        ['arguments', close],
        ['call_end', close],
      ],
    );
  });

  test('blocks that hold no call are text as written; a call without arguments takes {}', () => {
    const reply = assertSplitFree('A <tool_call>\nnope</tool_call> B <tool_call>\n{"x": 1}\n</tool_call>', 'hermes', [3, 20]);
    assert.deepEqual(shape(reply), { content: 'A <tool_call>\nnope</tool_call> B <tool_call>\n{"x": 1}\n</tool_call>', calls: [] });
    assert.deepEqual(shape(assertSplitFree('<tool_call>\n{"name": "now"}\n</tool_call>', 'hermes', [15])), { content: null, calls: [['now', '{}']] });
  });

  test('broken JSON after the name: the call keeps its arguments as written, the block ends at </tool_call>', () => {
    // An extra brace, a missing one, a string left open: each ends with its block.
    const text = '<tool_call>\n{"name": "a", "arguments": {"x": 1}}}\n</tool_call>' + '<tool_call>\n{"name": "b", "arguments": {"y": [1, 2}\n</tool_call>' + 'ok <tool_call>\n{"name": "c", "arguments": {"z": "open</tool_call> after';
    const reply = assertSplitFree(text, 'hermes', [30, 70, 71, 140]);
    assert.deepEqual(shape(reply), {
      content: 'ok  after',
      calls: [
        ['a', '{"x": 1}'],
        ['b', '{"y": [1, 2}\n'],
        ['c', '{"z": "open'],
      ],
    });
  });

  test('a reply cut inside a call (the token limit): the call as written so far', () => {
    const text = 'Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Os';
    const { reply, events } = read(chars(text), 'hermes');
    assert.deepEqual(shape(reply), { content: 'Sure.', calls: [['get_weather', '{"city": "Os']] });
    const end = events.at(-1)!;
    assert.equal(end.type, 'call_end');
    assert.equal(end.piece, chars(text).length, 'ended by finish()');
    assert.equal(end.type === 'call_end' && end.closed, false, 'its object never closed');
    assert.deepEqual(shape(read([text.slice(0, 30)], 'hermes').reply), { content: text.slice(0, 30), calls: [] }, 'no call before its name closed');
    assert.deepEqual(shape(read([text.slice(0, 45)], 'hermes').reply), { content: 'Sure.', calls: [['get_weather', '']] }, 'no arguments written yet');
  });

  test('a block left open ends where the next opens; what follows a call in an unclosed block is text', () => {
    const text = '<tool_call>\n{"name": "a", "arguments": {}}\n<tool_call>\n{"name": "b", "arguments": {}}\nthen text';
    assert.deepEqual(shape(assertSplitFree(text, 'hermes', [45, 50])), {
      content: 'then text',
      calls: [
        ['a', '{}'],
        ['b', '{}'],
      ],
    });
  });

  test('strings in arguments hold braces, quotes, tags and non-ASCII text', () => {
    const args = '{"q": "}{\\"<tool_call>", "w": ["é, 😀", {"k": null}], "n": -1.5e3, "t": true}';
    const reply = assertSplitFree(HERMES_CALL('f', args), 'hermes', [20, 33, 34, 60]);
    assert.deepEqual(shape(reply), { content: null, calls: [['f', args]] });
    assert.deepEqual(JSON.parse(reply.calls[0].function.arguments), { q: '}{"<tool_call>', w: ['é, 😀', { k: null }], n: -1500, t: true });
  });
});

describe('llama 3.x JSON', () => {
  test('calls after <|python_tag|>, separated by "; ", raw parameters', () => {
    const text = '<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {"y": "two"}}';
    const reply = assertSplitFree(text, 'llama3_json', [3, 14, 50, 53]);
    assert.deepEqual(shape(reply), {
      content: null,
      calls: [
        ['a', '{"x": 1}'],
        ['b', '{"y": "two"}'],
      ],
    });
    assert.deepEqual(shape(assertSplitFree(' {"name": "a", "parameters": {}}\n', 'llama3_json', [2])), { content: null, calls: [['a', '{}']] });
  });

  test('the first non-whitespace character decides: anything but a call is text, streamed as it comes', () => {
    const { events, reply } = read(['  The', ' answer {"x": 1}'], 'llama3_json');
    assert.deepEqual(shape(reply), { content: 'The answer {"x": 1}', calls: [] });
    assert.deepEqual(
      events.map((e) => e.piece),
      [0, 1],
    );
    assert.deepEqual(shape(assertSplitFree('{"answer": 42} and more', 'llama3_json', [5])), { content: '{"answer": 42} and more', calls: [] });
    assert.deepEqual(shape(assertSplitFree('<|python_tag|>print(1)', 'llama3_json', [5])), { content: '<|python_tag|>print(1)', calls: [] });
  });

  test('parameters first: held back to the close; a cut call keeps what was written', () => {
    assert.deepEqual(shape(assertSplitFree('{"parameters": {"x": 1}, "name": "a"}', 'llama3_json', [10])), { content: null, calls: [['a', '{"x": 1}']] });
    assert.deepEqual(shape(read(['{"name": "a", "parameters": {"x": [1, '], 'llama3_json').reply), { content: null, calls: [['a', '{"x": [1, ']] });
    assert.deepEqual(shape(read(['{"parameters": {"x": 1'], 'llama3_json').reply), { content: '{"parameters": {"x": 1', calls: [] }, 'no call without a name');
  });
});

describe('any split reads the same', () => {
  const fragments = [
    ' ',
    '\n',
    'Hi',
    'é😀',
    '<',
    '<tool',
    '<tool_call>',
    '</tool_call>',
    '<|python_tag|>',
    '{',
    '}',
    '[',
    ']',
    '"',
    '\\',
    ':',
    ',',
    ';',
    '"name"',
    '"arguments"',
    '"parameters"',
    ' "f"',
    '1',
    'true',
    HERMES_CALL('g', '{"a": [1, {"b": "}"}]}'),
    '{"name": "h", "parameters": {"c": "x"}}',
  ];
  for (const format of ['hermes', 'llama3_json'] as const) {
    test(`${format}: random replies of tags, JSON and text, in random pieces`, () => {
      fc.assert(
        fc.property(fc.array(fc.constantFrom(...fragments), { maxLength: 30 }), fc.array(fc.nat(), { maxLength: 12 }), (parts, cuts) => {
          assertSplitFree(parts.join(''), format, cuts);
        }),
        { numRuns: 400 },
      );
    });
  }
});

test('reading costs little per token: a 2,000-token reply fed char by char', () => {
  const args = JSON.stringify({ items: Array.from({ length: 400 }, (_, i) => ({ id: i, note: `item ${i}` })) }, null, 1);
  const text = `Here goes.\n${HERMES_CALL('store', args)}\nDone.`;
  const started = performance.now();
  const { reply } = read(chars(text), 'hermes');
  const ms = performance.now() - started;
  assert.equal(reply.calls[0].function.arguments, args);
  assert.ok(text.length > 8000, `${text.length} chars, over 2,000 tokens`);
  assert.ok(ms < 500, `${ms.toFixed(1)} ms`);
});

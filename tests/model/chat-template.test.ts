/** Chat rendering: the model's Jinja template, the documented fallback, and template errors. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ChatTemplate, ChatTemplateError, FALLBACK_STOP } from '../../src/model/chat-template.ts';

const messages = [
  { role: 'system' as const, content: 'Be brief.' },
  { role: 'user' as const, content: 'Hi' },
];

test('a model template gets messages, add_generation_prompt, bos_token and eos_token', () => {
  const template = ChatTemplate.forTokenizer({
    chatTemplate: "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
    bosToken: '<s>',
    eosToken: '</s>',
  });
  assert.equal(template.source, 'model');
  assert.equal(template.render(messages), '<s>[system]Be brief.</s>[user]Hi</s>[assistant]');
  assert.equal(template.render(messages, false), '<s>[system]Be brief.</s>[user]Hi</s>');
  assert.deepEqual(template.implicitStops, []);
});

test('models without a template get the plain fallback, which also stops at the next user line', () => {
  const template = ChatTemplate.forTokenizer({ chatTemplate: null, bosToken: null, eosToken: null });
  assert.equal(template.source, 'fallback');
  assert.equal(template.render(messages), 'system: Be brief.\nuser: Hi\nassistant:');
  assert.deepEqual(template.implicitStops, FALLBACK_STOP);
});

test('a template that does not compile falls back and says why; raise_exception becomes a ChatTemplateError', () => {
  const broken = ChatTemplate.forTokenizer({ chatTemplate: '{% for m in messages %}', bosToken: null, eosToken: null });
  assert.equal(broken.source, 'fallback');
  assert.ok(broken.compileError);
  const strict = ChatTemplate.forTokenizer({
    chatTemplate: "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}ok",
    bosToken: null,
    eosToken: null,
  });
  assert.throws(() => strict.render(messages), (e: unknown) => e instanceof ChatTemplateError && /must start with a user/.test((e as Error).message));
  assert.equal(strict.render([messages[1]]), 'ok');
});

test('the fallback tool rendering writes a call as compact JSON, and arguments that are no JSON object as written', () => {
  const template = ChatTemplate.forTokenizer({ chatTemplate: null, bosToken: null, eosToken: null });
  const call = (id: string, args: unknown) => ({ id, type: 'function' as const, function: { name: 'search', arguments: args } });
  const rendered = template.render([
    { role: 'user', content: 'Find cats' },
    { role: 'assistant', content: 'Looking.', tool_calls: [call('a', { query: 'cats' }), call('b', '{"query": "ca')] },
  ]);
  assert.ok(
    rendered.includes('assistant: Looking.\n<tool_call>\n{"name":"search","arguments":{"query":"cats"}}\n</tool_call>\n<tool_call>\n{"name":"search","arguments":{"query": "ca}\n</tool_call>\n'),
    rendered,
  );
});

// Loads models/<name>/tokenizer.json with @huggingface/tokenizers and compares against the Python encoder.
// usage: node tools/train/check_tokenizer.mjs <model dir> <cases.json>
// cases.json: [{"name": str, "text": str, "ids": [int]}]; exits 1 on any mismatch.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';

const [dir, casesPath] = process.argv.slice(2);
const tj = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
const tc = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
const tok = new Tokenizer(tj, tc);
const cases = JSON.parse(readFileSync(casesPath, 'utf8'));
let failures = 0;
let tokens = 0;
for (const c of cases) {
  const ids = tok.encode(c.text, { add_special_tokens: false }).ids;
  tokens += ids.length;
  const same = ids.length === c.ids.length && ids.every((v, i) => v === c.ids[i]);
  if (!same) {
    let i = 0;
    while (i < ids.length && ids[i] === c.ids[i]) i++;
    console.error(`ENCODE MISMATCH ${c.name}: first difference at ${i}: js ${ids.slice(i, i + 8)} py ${c.ids.slice(i, i + 8)}`);
    failures++;
  }
  const back = ids.length ? tok.decode(ids) : '';
  if (back !== c.text) {
    console.error(`ROUNDTRIP MISMATCH ${c.name}: ${JSON.stringify(back.slice(0, 200))}`);
    failures++;
  }
}
// specials
for (const [s, id] of [['<|endoftext|>', 0], ['<|im_start|>', 1], ['<|im_end|>', 2]]) {
  const ids = tok.encode(s).ids;
  if (ids.length !== 1 || ids[0] !== id) { console.error(`special ${s} -> ${ids}`); failures++; }
}
// chat template (ChatML-style) renders with @huggingface/jinja and encodes <|im_start|>/<|im_end|> as single ids
const chat = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello there' }];
const tpl = new Template(tc.chat_template);
const want = '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n';
const rendered = tpl.render({ messages: chat, add_generation_prompt: false, bos_token: tc.bos_token, eos_token: tc.eos_token });
const renderedGen = tpl.render({ messages: chat, add_generation_prompt: true, bos_token: tc.bos_token, eos_token: tc.eos_token });
if (rendered !== want || renderedGen !== want + '<|im_start|>assistant\n') {
  console.error(`chat template: ${JSON.stringify(rendered)} / ${JSON.stringify(renderedGen)}`);
  failures++;
}
const chatIds = tok.encode(renderedGen).ids;
if (chatIds[0] !== 1 || chatIds.filter((x) => x === 1).length !== 3 || chatIds.filter((x) => x === 2).length !== 2) {
  console.error(`chat ids: ${chatIds}`);
  failures++;
}
if (tok.decode(chatIds) !== renderedGen) { console.error('chat decode differs'); failures++; }
console.log(JSON.stringify({ cases: cases.length, tokens, failures }));
process.exit(failures ? 1 : 0);

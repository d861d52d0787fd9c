// Renders dialogues with the model's chat template through @huggingface/jinja (as the server does) and
// requires the text the Python renderer (tools/train/chatml.py) produced for training, character for character.
// usage: node tools/train/check_chat_template.mjs <model dir> <samples.json>; exits 1 on any difference.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';

const [dir, samplesPath] = process.argv.slice(2);
const config = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8'));
const template = new Template(config.chat_template);
const samples = JSON.parse(readFileSync(samplesPath, 'utf8'));
let failures = 0;
for (const [i, s] of samples.entries()) {
  const vars = { messages: s.messages, add_generation_prompt: false, bos_token: '', eos_token: config.eos_token };
  if (s.tools) vars.tools = s.tools;
  const text = template.render(vars);
  if (text !== s.text) {
    let k = 0;
    while (k < text.length && text[k] === s.text[k]) k++;
    console.error(`TEMPLATE MISMATCH ${i} at ${k}: js ${JSON.stringify(text.slice(k, k + 60))} py ${JSON.stringify(s.text.slice(k, k + 60))}`);
    failures++;
  }
}
console.log(`chat template: ${samples.length} dialogues rendered, ${failures} differences`);
process.exit(failures ? 1 : 0);

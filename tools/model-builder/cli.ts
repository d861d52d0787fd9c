/**
 * CLI: npm run build-test-model -- --family llama --out /tmp/m [--hidden 256 --layers 4 ...]
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { buildModelFolder, EXPORT_QUIRKS, type BuildOptions, type ExportQuirk } from './index.ts';

const USAGE = `Usage: npm run build-test-model -- --family gpt2|llama --out DIR [options]

  --seed N               PRNG seed (default 1)
  --vocab N              vocab_size (default: tokenizer size; larger pads the vocabulary)
  --hidden N             hidden size (default 64)
  --layers N             number of layers (default 2)
  --heads N              query heads (default 4)
  --kv-heads N           llama KV heads (GQA, default 2)
  --intermediate N       MLP size (default 4*hidden gpt2, ~8/3*hidden llama)
  --max-positions N      n_positions / max_position_embeddings (default 1024)
  --rope-theta X         llama rope_theta (default 10000)
  --kv-dtype T           float32|float16 (past_key_values / present; default float32)
  --logits-dtype T       float32|float16 (default float32)
  --no-position-ids      graph derives positions from attention_mask instead of a position_ids input
  --layout L             model (onnx/model.onnx) | merged (onnx/decoder_model_merged.onnx + use_cache_branch)
  --external-data        weights in onnx/<file>.onnx_data
  --chat-template FILE   read the jinja chat template from FILE
  --no-chat-template     no chat_template in tokenizer_config.json
  --merges N             BPE merges learned for the tokenizer (default 400, at most 971)
  --stacked-kv           one past_N/present_N [2,batch,heads,seq,head] per layer (ORT's GPT-2 exporter)
  --float-mask           attention_mask is float32 (ORT's GPT-2 exporter)
  --quirk Q              reproduce a real export's limitation (repeatable): no-multi-token-past
                         (ORT GenAI mask subgraph), no-batch, right-padding-only
  --json                 print the build summary as JSON`;

export function parseCliArgs(argv: string[]): { out: string; options: BuildOptions; json: boolean } {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      family: { type: 'string' },
      out: { type: 'string' },
      seed: { type: 'string' },
      vocab: { type: 'string' },
      hidden: { type: 'string' },
      layers: { type: 'string' },
      heads: { type: 'string' },
      'kv-heads': { type: 'string' },
      intermediate: { type: 'string' },
      'max-positions': { type: 'string' },
      'rope-theta': { type: 'string' },
      'kv-dtype': { type: 'string' },
      'logits-dtype': { type: 'string' },
      'no-position-ids': { type: 'boolean' },
      layout: { type: 'string' },
      'external-data': { type: 'boolean' },
      'chat-template': { type: 'string' },
      'no-chat-template': { type: 'boolean' },
      merges: { type: 'string' },
      'stacked-kv': { type: 'boolean' },
      'float-mask': { type: 'boolean' },
      quirk: { type: 'string', multiple: true },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) throw new UsageError('');
  if (values.family !== 'gpt2' && values.family !== 'llama') throw new UsageError('--family gpt2|llama is required');
  if (!values.out) throw new UsageError('--out DIR is required');
  const num = (flag: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new UsageError(`--${flag}: not a number: ${v}`);
    return n;
  };
  const dtype = (flag: string, v: string | undefined): 'float32' | 'float16' | undefined => {
    if (v === undefined) return undefined;
    if (v !== 'float32' && v !== 'float16') throw new UsageError(`--${flag}: float32 or float16`);
    return v;
  };
  const layout = values.layout;
  if (layout !== undefined && layout !== 'model' && layout !== 'merged') throw new UsageError('--layout model|merged');
  const options: BuildOptions = {
    family: values.family,
    seed: num('seed', values.seed),
    vocabSize: num('vocab', values.vocab),
    hiddenSize: num('hidden', values.hidden),
    numLayers: num('layers', values.layers),
    numHeads: num('heads', values.heads),
    numKvHeads: num('kv-heads', values['kv-heads']),
    intermediateSize: num('intermediate', values.intermediate),
    maxPositions: num('max-positions', values['max-positions']),
    ropeTheta: num('rope-theta', values['rope-theta']),
    kvDtype: dtype('kv-dtype', values['kv-dtype']),
    logitsDtype: dtype('logits-dtype', values['logits-dtype']),
    positionIds: values['no-position-ids'] ? false : undefined,
    layout,
    externalData: values['external-data'] ?? undefined,
    tokenizerMerges: num('merges', values.merges),
    kvPacking: values['stacked-kv'] ? 'stacked' : undefined,
    maskDtype: values['float-mask'] ? 'float32' : undefined,
    quirks: values.quirk?.map((q) => {
      if (!(EXPORT_QUIRKS as readonly string[]).includes(q)) throw new UsageError(`--quirk: one of ${EXPORT_QUIRKS.join(', ')}`);
      return q as ExportQuirk;
    }),
  };
  if (values['no-chat-template']) options.chatTemplate = null;
  else if (values['chat-template']) options.chatTemplate = readFileSync(values['chat-template'], 'utf8');
  // Drop undefined keys so defaults apply.
  for (const k of Object.keys(options) as (keyof BuildOptions)[]) if (options[k] === undefined) delete options[k];
  return { out: resolve(values.out), options, json: values.json ?? false };
}

class UsageError extends Error {}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseCliArgs(argv);
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      if ((e as Error).message) console.error(`error: ${(e as Error).message}\n`);
      console.error(USAGE);
      return 2;
    }
    throw e;
  }
  const info = await buildModelFolder(parsed.out, parsed.options);
  const summary = {
    dir: info.dir,
    onnx: info.onnxPath,
    externalData: info.externalDataPath,
    family: info.options.family,
    parameters: info.numParameters,
    vocabSize: info.vocabSize,
    tokenizerSize: info.tokenizerSize,
    specialTokenIds: info.specialTokenIds,
    bytes: info.onnxBytes,
    buildMs: Math.round(info.buildMs),
  };
  if (parsed.json) console.log(JSON.stringify(summary, null, 2));
  else {
    const o = info.options;
    console.log(
      `wrote ${info.dir}: ${o.family} ${info.numParameters.toLocaleString('en-US')} params, hidden ${o.hiddenSize}, ` +
        `${o.numLayers} layers, ${o.numHeads}/${o.numKvHeads} heads, vocab ${o.vocabSize} (tokenizer ${info.tokenizerSize}), ` +
        `kv ${o.kvDtype}, ${info.files.join(' ')} in ${Math.round(info.buildMs)} ms`,
    );
  }
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err instanceof Error ? err.message : err);
      process.exit(1);
    },
  );
}

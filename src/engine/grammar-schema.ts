/**
 * The JSON Schema subset that constrained decoding enforces exactly. xgrammar's JSON-schema converter
 * accepts any schema but silently ignores keywords it does not implement (`format`, `not`, `oneOf`'s
 * exclusivity, `patternProperties`, `contains`, `if`/`then`, ...), which would let outputs through that
 * do not validate; those keywords are refused here, by name, before anything is compiled.
 * `minLength` / `maxLength` are refused too: xgrammar lets a string hold bytes that are not valid
 * UTF-8, which decode to U+FFFD each and break the character count.
 */

const ANNOTATIONS = ['title', 'description', '$schema', '$id', '$comment', 'default', 'examples', 'deprecated', 'readOnly', 'writeOnly'];
const KEYWORDS = new Set([
  ...ANNOTATIONS,
  'type', 'enum', 'const', 'anyOf', '$ref', '$defs', 'definitions',
  'properties', 'required', 'additionalProperties',
  'items', 'prefixItems', 'minItems', 'maxItems',
  'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum',
]);
const TYPES = new Set(['string', 'number', 'integer', 'boolean', 'null', 'object', 'array']);

export class SchemaError extends Error {
  constructor(
    message: string,
    /** The JSON pointer of the offending keyword inside the schema. */
    readonly pointer: string,
  ) {
    super(message);
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown) => Number.isInteger(v) && (v as number) >= 0;

/** Throws SchemaError naming the first keyword outside the supported subset (or malformed). */
export function checkSchema(schema: unknown): void {
  if (!isObject(schema)) throw new SchemaError('the schema must be a JSON object', '');
  const definitions = new Set<string>();
  for (const key of ['$defs', 'definitions'] as const) {
    const defs = schema[key];
    if (defs === undefined) continue;
    if (!isObject(defs)) throw new SchemaError(`'${key}' must be an object of schemas`, `/${key}`);
    for (const name of Object.keys(defs)) definitions.add(`#/${key}/${name}`);
  }
  checkNode(schema, '', definitions);
}

function checkNode(node: unknown, at: string, definitions: ReadonlySet<string>): void {
  if (node === true || isObject(node) && Object.keys(node).length === 0) return;
  if (!isObject(node)) throw new SchemaError('a subschema must be an object (or true)', at);
  const sub = (value: unknown, path: string) => checkNode(value, `${at}/${path}`, definitions);
  for (const [key, value] of Object.entries(node)) {
    const here = `${at}/${key}`;
    if (!KEYWORDS.has(key)) throw new SchemaError(`the schema keyword '${key}' is not supported`, here);
    switch (key) {
      case 'type': {
        const types = Array.isArray(value) ? value : [value];
        if (types.length === 0 || !types.every((t) => typeof t === 'string' && TYPES.has(t))) throw new SchemaError(`'type' must be one of ${[...TYPES].join(', ')} or a list of them`, here);
        break;
      }
      case 'enum':
        if (!Array.isArray(value) || value.length === 0) throw new SchemaError("'enum' must be a non-empty array", here);
        break;
      case 'anyOf':
        if (!Array.isArray(value) || value.length === 0) throw new SchemaError("'anyOf' must be a non-empty array of schemas", here);
        value.forEach((s, i) => sub(s, `anyOf/${i}`));
        break;
      case '$ref':
        if (typeof value !== 'string' || !definitions.has(value)) throw new SchemaError(`'$ref' must point to a schema under the root's $defs or definitions (got ${JSON.stringify(value)})`, here);
        break;
      case '$defs':
      case 'definitions':
        if (at !== '') throw new SchemaError(`'${key}' is supported at the root only`, here);
        for (const [name, s] of Object.entries(value as Record<string, unknown>)) sub(s, `${key}/${name}`);
        break;
      case 'properties':
        if (!isObject(value)) throw new SchemaError("'properties' must be an object of schemas", here);
        for (const [name, s] of Object.entries(value)) sub(s, `properties/${name}`);
        break;
      case 'required':
        if (!Array.isArray(value) || !value.every((r) => typeof r === 'string')) throw new SchemaError("'required' must be an array of property names", here);
        break;
      case 'additionalProperties':
        if (typeof value !== 'boolean') throw new SchemaError("'additionalProperties' is supported as true or false only", here);
        break;
      case 'items':
        if (typeof value === 'boolean') break;
        sub(value, 'items');
        break;
      case 'prefixItems':
        if (!Array.isArray(value)) throw new SchemaError("'prefixItems' must be an array of schemas", here);
        value.forEach((s, i) => sub(s, `prefixItems/${i}`));
        break;
      case 'minItems':
      case 'maxItems':
        if (!isCount(value)) throw new SchemaError(`'${key}' must be a non-negative integer`, here);
        break;
      case 'minimum':
      case 'maximum':
      case 'exclusiveMinimum':
      case 'exclusiveMaximum':
        if (typeof value !== 'number' || !Number.isFinite(value)) throw new SchemaError(`'${key}' must be a number`, here);
        break;
    }
  }
}

/**
 * The schema with keywords sorted at every level, so equal schemas compile once; the order of
 * `properties` is kept, since it is the order the output writes them in.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value, false));
}

function sortKeys(value: unknown, keepOrder: boolean): unknown {
  if (Array.isArray(value)) return value.map((v) => sortKeys(v, false));
  if (!isObject(value)) return value;
  const out: Record<string, unknown> = {};
  const keys = keepOrder ? Object.keys(value) : Object.keys(value).sort();
  for (const key of keys) out[key] = sortKeys(value[key], !keepOrder && key === 'properties');
  return out;
}

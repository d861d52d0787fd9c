/**
 * One tool call's JSON object read as it is written (tool-stream.ts feeds it a character at a time):
 * structure only, so a call streams from its name on and broken JSON still ends where its brackets say.
 */

const SPACE = /\s/;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The name of a call object written without its name first, or null when the text is no such object. */
export function nameOf(raw: string): string | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return null;
  }
  return isObject(parsed) && typeof parsed.name === 'string' ? parsed.name : null;
}

/**
 * One call's JSON object as it is written, from its `{`: the keys of its top level, a first `"name"`
 * string (reported when it closes) and the raw text of its first `arguments` or `parameters` value
 * (reported as it grows). It reads structure only (strings, nesting, keys), never validity: broken
 * JSON still ends where its brackets say, and whoever holds a call back checks the whole with JSON.parse.
 */
export class CallObject {
  raw = '{';
  /** The arguments' raw text so far; null until their key has been read. */
  args: string | null = null;
  private slot: 'key' | 'key-string' | 'colon' | 'value' | 'value-body' | 'after' = 'key';
  private keyText = '';
  private keys = 0;
  private valueKey = '';
  private valueText = '';
  private valueKind: 'string' | 'nested' | 'primitive' = 'primitive';
  private readingArgs = false;
  private nesting = 0;
  private inString = false;
  private escaped = false;

  constructor(
    private readonly onName: (name: string) => void,
    private readonly onArguments: (text: string) => void,
  ) {}

  /** One character; true when it closed the object. */
  take(c: string): boolean {
    this.raw += c;
    return this.step(c);
  }

  private step(c: string): boolean {
    if (this.slot === 'value-body') return this.valueChar(c);
    if (this.slot === 'key-string') {
      this.keyText += c;
      if (this.stringEnds(c)) {
        this.valueKey = decoded(this.keyText) ?? '';
        this.keys++;
        this.slot = 'colon';
      }
      return false;
    }
    if (SPACE.test(c)) return false;
    if (this.slot === 'colon') {
      if (c === ':') this.slot = 'value';
      else {
        this.slot = 'key';
        return this.step(c);
      }
      return false;
    }
    if (this.slot === 'value') return this.beginValue(c);
    // key or after: commas and stray characters between members are skipped.
    if (c === '}') return true;
    // A quote after a value starts the next key, as if its comma were there.
    if (c === '"') {
      this.keyText = c;
      this.escaped = false;
      this.slot = 'key-string';
    } else if (c === ',') this.slot = 'key';
    return false;
  }

  private beginValue(c: string): boolean {
    if (c === '}') return true;
    if (c === ',') {
      this.slot = 'key';
      return false;
    }
    this.valueKind = c === '"' ? 'string' : c === '{' || c === '[' ? 'nested' : 'primitive';
    this.nesting = this.valueKind === 'nested' ? 1 : 0;
    this.inString = false;
    this.escaped = false;
    this.valueText = '';
    this.readingArgs = this.args === null && (this.valueKey === 'arguments' || this.valueKey === 'parameters');
    if (this.readingArgs) this.args = '';
    this.slot = 'value-body';
    this.append(c);
    return false;
  }

  private valueChar(c: string): boolean {
    let ends = false;
    if (this.valueKind === 'primitive') {
      if (c === ',' || c === '}' || c === ']' || SPACE.test(c)) {
        this.valueEnded();
        return this.step(c);
      }
    } else if (this.valueKind === 'string') ends = this.stringEnds(c);
    else if (this.inString) this.inString = !this.stringEnds(c);
    else if (c === '"') this.inString = true;
    else if (c === '{' || c === '[') this.nesting++;
    else if (c === '}' || c === ']') ends = --this.nesting === 0;
    this.append(c);
    if (ends) this.valueEnded();
    return false;
  }

  /** Inside a string (its opening quote read): whether `c` is its closing quote. */
  private stringEnds(c: string): boolean {
    if (this.escaped) this.escaped = false;
    else if (c === '\\') this.escaped = true;
    else return c === '"';
    return false;
  }

  private append(c: string): void {
    this.valueText += c;
    if (!this.readingArgs) return;
    this.args += c;
    this.onArguments(c);
  }

  private valueEnded(): void {
    this.slot = 'after';
    this.readingArgs = false;
    if (this.keys !== 1 || this.valueKey !== 'name' || this.valueKind !== 'string') return;
    const name = decoded(this.valueText);
    if (typeof name === 'string') this.onName(name);
  }
}

function decoded(literal: string): string | null {
  try {
    const value: unknown = JSON.parse(literal);
    return typeof value === 'string' ? value : null;
  } catch {
    return null;
  }
}

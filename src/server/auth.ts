/**
 * API keys: `Authorization: Bearer <key>` against the keys from `API_KEYS` and `API_KEYS_FILE`.
 *
 * - Keys are checked at start (at least 16 visible ASCII characters, no spaces); a bad key, an unreadable or
 *   empty keys file stops the server with a ConfigError that names the setting and the line, never the key.
 * - Only SHA-256 digests of the keys stay in memory. A presented key is hashed and compared with every
 *   configured digest by `timingSafeEqual`, with no early exit: the time does not depend on which key
 *   matched, or on how much of a wrong key is right.
 * - A key's owner id is `key_` + the first 16 hex digits of its SHA-256. Sessions, snapshot files and log
 *   lines carry that id, never the key. Without keys the server runs open and every client is owner "".
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ConfigError, type Config } from '../config.ts';
import { ApiError } from './errors.ts';

export const MIN_API_KEY_LENGTH = 16;
/** Visible ASCII: what fits in an Authorization header without quoting. */
const KEY_PATTERN = /^[\x21-\x7e]+$/;
/** `Bearer <token>`; the scheme is case-insensitive (RFC 9110). */
const BEARER = /^Bearer[ \t]+([^ \t]+)[ \t]*$/i;

/** The owner id of a key: `key_` + 64 bits of its SHA-256. Safe to log and to store. */
export function keyId(key: string): string {
  return `key_${digest(key).toString('hex').slice(0, 16)}`;
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

function checkKey(key: string, where: string): void {
  if (!KEY_PATTERN.test(key)) {
    throw new ConfigError(`${where}: an API key may hold only visible ASCII characters, without spaces (comments go on their own line, starting with #)`);
  }
  if (key.length < MIN_API_KEY_LENGTH) {
    throw new ConfigError(`${where}: an API key must be at least ${MIN_API_KEY_LENGTH} characters long (this one has ${key.length})`);
  }
}

/** One key per line; blank lines and lines starting with `#` are skipped. */
export function parseKeysFile(text: string, path: string): string[] {
  const keys: string[] = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    checkKey(line, `API_KEYS_FILE ${path}, line ${index + 1}`);
    keys.push(line);
  });
  if (keys.length === 0) throw new ConfigError(`API_KEYS_FILE ${path} holds no API key (one key per line, # for comments)`);
  return keys;
}

/**
 * The keys from `API_KEYS` and `API_KEYS_FILE` together, checked and without duplicates. An empty list
 * means the server runs open. Throws ConfigError.
 */
export function loadApiKeys(config: Pick<Config, 'apiKeys' | 'apiKeysFile'>, readFile: (path: string) => string = (p) => readFileSync(p, 'utf8')): string[] {
  const keys: string[] = [];
  config.apiKeys.forEach((key, index) => {
    checkKey(key, `API_KEYS / --api-keys, entry ${index + 1}`);
    keys.push(key);
  });
  if (config.apiKeysFile !== undefined) {
    let text: string;
    try {
      text = readFile(config.apiKeysFile);
    } catch (error) {
      throw new ConfigError(`API_KEYS_FILE / --api-keys-file: cannot read ${config.apiKeysFile}: ${(error as Error).message}`);
    }
    keys.push(...parseKeysFile(text, config.apiKeysFile));
  }
  const unique = [...new Set(keys)];
  const ids = new Set(unique.map(keyId));
  if (ids.size !== unique.length) throw new ConfigError('two different API keys share a key id (the first 64 bits of their SHA-256); replace one of them');
  return unique;
}

interface KeyEntry {
  digest: Buffer;
  id: string;
}

export type AuthFailure = 'missing' | 'invalid';

/** Checks bearer tokens against the configured keys. Holds digests only; `replace` swaps the set (SIGHUP). */
export class ApiKeyAuth {
  private entries: readonly KeyEntry[];

  constructor(keys: readonly string[]) {
    this.entries = ApiKeyAuth.entriesOf(keys);
  }

  private static entriesOf(keys: readonly string[]): KeyEntry[] {
    return keys.map((key) => ({ digest: digest(key), id: keyId(key) }));
  }

  /** Without keys every request is let through as owner "". */
  get enabled(): boolean {
    return this.entries.length > 0;
  }

  get size(): number {
    return this.entries.length;
  }

  /** Replaces the key set (a reload). Requests already authenticated keep their owner. */
  replace(keys: readonly string[]): void {
    this.entries = ApiKeyAuth.entriesOf(keys);
  }

  /** The owner id for an `Authorization` header value, or why there is none. */
  check(authorization: string | undefined): { ok: true; owner: string } | { ok: false; reason: AuthFailure } {
    const entries = this.entries;
    if (entries.length === 0) return { ok: true, owner: '' };
    if (authorization === undefined || authorization.trim() === '') return { ok: false, reason: 'missing' };
    const token = BEARER.exec(authorization)?.[1];
    // A malformed header is hashed and compared all the same, so it takes as long as a wrong key.
    const presented = digest(token ?? authorization);
    let match: KeyEntry | null = null;
    for (const entry of entries) {
      const equal = timingSafeEqual(presented, entry.digest);
      match = equal && match === null ? entry : match;
    }
    if (token === undefined || match === null) return { ok: false, reason: 'invalid' };
    return { ok: true, owner: match.id };
  }

  /** The owner id, or a 401 `invalid_api_key` ApiError (with `WWW-Authenticate: Bearer`). */
  ownerFor(authorization: string | undefined): string {
    const result = this.check(authorization);
    if (result.ok) return result.owner;
    throw unauthorized(result.reason);
  }
}

/** OpenAI's wording, without echoing any part of the key. */
export function unauthorized(reason: AuthFailure): ApiError {
  const message =
    reason === 'missing'
      ? "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
      : 'Incorrect API key provided. Send a key configured on this server in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).';
  return new ApiError('invalid_api_key', message);
}

/**
 * Paths anyone may call: liveness and readiness, `/metrics` unless `METRICS_REQUIRE_KEY`, and with the
 * playground on its static page and assets (the page asks for a key and sends it to the API itself).
 */
export function isPublicPath(path: string, metricsRequireKey: boolean, playground = false): boolean {
  if (playground && (path === '/' || path === '/playground' || path.startsWith('/playground/'))) return true;
  return path === '/healthz' || path === '/readyz' || (path === '/metrics' && !metricsRequireKey);
}

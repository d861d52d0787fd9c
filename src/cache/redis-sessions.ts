/** SharedSessions on Redis (ioredis): see shared-sessions.ts for the semantics. */
import { Redis } from 'ioredis';
import {
  newLeaseToken,
  recordFields,
  recordFromFields,
  sessionKey,
  SessionStoreUnavailableError,
  type CommitResult,
  type SessionLease,
  type SessionRecord,
  type SharedSessions,
} from './shared-sessions.ts';

/**
 * KEYS: the session hash, its lease. ARGV: lease token, expected version, TTL ms (0 = none), fields...
 * Commits only while the lease is ours and the version is the one the turn started from; returns 1,
 * 0 for a conflict.
 */
const COMMIT_SCRIPT = `
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local current = redis.call('HGET', KEYS[1], 'version')
if (current or '0') ~= ARGV[2] then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) else redis.call('PERSIST', KEYS[1]) end
redis.call('DEL', KEYS[2])
return 1
`;

/** Deletes or renews the lease only if it is still ours. ARGV: token, TTL ms (0 = delete). */
const LEASE_SCRIPT = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) else redis.call('DEL', KEYS[1]) end
return 1
`;

export interface RedisSessionsOptions {
  url: string;
  /** How long a turn's lease lasts without renewal: a crashed replica blocks its session this long. */
  leaseMs: number;
  /** Sessions unused this long expire in Redis; 0 = never. */
  ttlMs: number;
  /** Time one command may take before the store counts as unreachable. */
  commandTimeoutMs?: number;
}

export class RedisSessions implements SharedSessions {
  readonly shared = true;
  private readonly client: Redis;
  private readonly renewals = new Map<string, NodeJS.Timeout>();

  constructor(private readonly options: RedisSessionsOptions) {
    this.client = new Redis(options.url, {
      lazyConnect: true,
      // Fail at once while disconnected (503) instead of queueing turns behind a dead store.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.commandTimeoutMs ?? 2000,
      connectTimeout: 3000,
      retryStrategy: (times) => Math.min(times * 100, 1000),
    });
    // Errors surface on each command; the client reconnects by itself.
    this.client.on('error', () => {});
    this.client.defineCommand('warmkvCommit', { numberOfKeys: 2, lua: COMMIT_SCRIPT });
    this.client.defineCommand('warmkvLease', { numberOfKeys: 1, lua: LEASE_SCRIPT });
  }

  /** The URL without its password, for messages. */
  get where(): string {
    return this.options.url.replace(/\/\/[^@/]*@/, '//***@');
  }

  async connect(): Promise<void> {
    try {
      await this.client.connect();
      await this.client.ping();
    } catch (error) {
      this.client.disconnect();
      throw new SessionStoreUnavailableError(`cannot reach the session store at ${this.where}: ${(error as Error).message}`);
    }
  }

  async load(owner: string, id: string): Promise<SessionRecord | null> {
    const fields = await this.run(() => this.client.hgetall(sessionKey(owner, id)));
    return recordFromFields(owner, id, fields);
  }

  async acquire(owner: string, id: string): Promise<SessionLease | null> {
    const lease = { owner, id, token: newLeaseToken() };
    const key = `${sessionKey(owner, id)}:lease`;
    const ok = await this.run(() => this.client.set(key, lease.token, 'PX', this.options.leaseMs, 'NX'));
    if (ok !== 'OK') return null;
    // Renewed while the turn runs, so only a replica that stopped lets it lapse.
    const timer = setInterval(() => {
      void this.leaseCommand(lease, this.options.leaseMs).catch(() => {});
    }, Math.max(100, Math.floor(this.options.leaseMs / 3)));
    timer.unref();
    this.renewals.set(lease.token, timer);
    return lease;
  }

  async commit(lease: SessionLease, expectedVersion: number, record: SessionRecord): Promise<CommitResult> {
    this.stopRenewing(lease);
    const key = sessionKey(lease.owner, lease.id);
    const args = [key, `${key}:lease`, lease.token, String(expectedVersion), String(this.options.ttlMs), ...recordFields(record)];
    const result = await this.run(() => (this.client as unknown as { warmkvCommit(...args: string[]): Promise<number> }).warmkvCommit(...args));
    return result === 1 ? 'committed' : 'conflict';
  }

  async createIfAbsent(record: SessionRecord): Promise<boolean> {
    const key = sessionKey(record.owner, record.id);
    const fields = recordFields(record);
    const created = await this.run(async () => {
      const claimed = await this.client.hsetnx(key, 'version', String(record.version));
      if (claimed !== 1) return false;
      await this.client.hset(key, ...fields);
      if (this.options.ttlMs > 0) await this.client.pexpire(key, this.options.ttlMs);
      return true;
    });
    return created;
  }

  async release(lease: SessionLease): Promise<void> {
    this.stopRenewing(lease);
    await this.leaseCommand(lease, 0);
  }

  async delete(owner: string, id: string): Promise<void> {
    const key = sessionKey(owner, id);
    await this.run(() => this.client.del(key, `${key}:lease`));
  }

  async close(): Promise<void> {
    for (const timer of this.renewals.values()) clearInterval(timer);
    this.renewals.clear();
    if (this.client.status === 'ready') await this.client.quit().catch(() => {});
    this.client.disconnect();
  }

  private stopRenewing(lease: SessionLease): void {
    clearInterval(this.renewals.get(lease.token));
    this.renewals.delete(lease.token);
  }

  private async leaseCommand(lease: SessionLease, ttlMs: number): Promise<void> {
    const key = `${sessionKey(lease.owner, lease.id)}:lease`;
    await this.run(() => (this.client as unknown as { warmkvLease(...args: string[]): Promise<number> }).warmkvLease(key, lease.token, String(ttlMs)));
  }

  /** Every failure to talk to Redis becomes one error the server answers with 503. */
  private async run<T>(command: () => Promise<T>): Promise<T> {
    try {
      return await command();
    } catch (error) {
      throw new SessionStoreUnavailableError(`the session store at ${this.where} is unreachable: ${(error as Error).message}`);
    }
  }
}

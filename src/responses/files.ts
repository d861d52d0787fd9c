/**
 * Stored responses on disk under SNAPSHOT_DIR/responses/, so a chain survives a restart (its KV comes
 * back through the session snapshots). One small JSON file per response, written when the response
 * ends (to a temporary name, then renamed), found by name (a hash of owner and id), never by listing
 * the directory, so a mounted bucket works as it does for session snapshots.
 *
 * Writes are synchronous: a record is a few kilobytes, and a response that ended before a SIGTERM is
 * then on disk before the process exits, without a flush to await.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { StoredResponse } from './store.ts';

const VERSION = 1;

export class ResponseFiles {
  private made = false;

  constructor(private readonly dir: string) {}

  save(record: StoredResponse): void {
    if (!this.made) {
      mkdirSync(this.dir, { recursive: true });
      this.made = true;
    }
    const { abort: _running, ...fields } = record;
    const path = this.pathOf(record.owner, record.id);
    const temporary = `${path}.${randomBytes(4).toString('hex')}.tmp`;
    writeFileSync(temporary, JSON.stringify({ version: VERSION, ...fields }));
    renameSync(temporary, path);
  }

  /** The response, or undefined when there is no readable file for this owner and id. */
  load(owner: string, id: string): StoredResponse | undefined {
    let data: Record<string, unknown>;
    try {
      data = JSON.parse(readFileSync(this.pathOf(owner, id), 'utf8')) as Record<string, unknown>;
    } catch {
      return undefined;
    }
    // The name is a hash: check that the file is this owner's response, in a format this build reads.
    if (data.version !== VERSION || data.owner !== owner || data.id !== id) return undefined;
    const { version: _version, ...fields } = data;
    return { ...(fields as unknown as Omit<StoredResponse, 'abort'>), abort: null };
  }

  remove(owner: string, id: string): void {
    rmSync(this.pathOf(owner, id), { force: true });
  }

  private pathOf(owner: string, id: string): string {
    const name = createHash('sha256').update(owner).update('\u0000').update(id).digest('hex').slice(0, 40);
    return join(this.dir, `${name}.json`);
  }
}

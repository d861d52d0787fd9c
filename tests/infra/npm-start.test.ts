/**
 * `npm start` hands signals to the server: SIGTERM to the npm process (what a supervisor or
 * `kill <pid>` sends) stops node too, instead of leaving it serving behind a dead npm and sh.
 * Real processes and sockets: npm, the server on the committed default model, fetch.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT, freePort } from './helpers.ts';

async function answers(url: string): Promise<boolean> {
  try {
    return (await fetch(url, { signal: AbortSignal.timeout(1000) })).ok;
  } catch {
    return false;
  }
}

describe('npm start', () => {
  let npm: ChildProcess | undefined;
  after(() => {
    // Whatever happened, leave nothing running: the whole process group npm started.
    if (npm?.pid !== undefined) {
      try {
        process.kill(-npm.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  });

  it('stops the server when the npm process gets SIGTERM', { timeout: 120_000 }, async () => {
    const port = await freePort();
    const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(port), HOST: '127.0.0.1', DRAIN_SECONDS: '0', LOG_LEVEL: 'warn' };
    delete env.SNAPSHOT_DIR;
    npm = spawn('npm', ['start', '--silent'], { cwd: ROOT, env, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    npm.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = once(npm, 'exit');

    const healthz = `http://127.0.0.1:${port}/healthz`;
    const deadline = Date.now() + 90_000;
    while (!(await answers(healthz))) {
      assert.ok(Date.now() < deadline, `the server never answered on port ${port}: ${stderr}`);
      assert.equal(npm.exitCode, null, `npm start exited early: ${stderr}`);
      await sleep(250);
    }

    process.kill(npm.pid!, 'SIGTERM');
    await exited;
    // npm is gone; the server must be gone too (it drains for DRAIN_SECONDS=0, then closes).
    const stopDeadline = Date.now() + 15_000;
    while (await answers(healthz)) {
      assert.ok(Date.now() < stopDeadline, 'the server still answers after SIGTERM to npm start');
      await sleep(250);
    }
  });
});

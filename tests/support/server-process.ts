/**
 * src/main.ts in a child process, the way `npm start` runs it: one place that spawns it, collects its
 * stdout (JSON log lines) and stderr, learns the port from the `listening` log line, waits for /readyz,
 * and kills it. Every test that needs a real server process goes through here.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';

export interface ServerProcessOptions {
  /** Command-line arguments after `src/main.ts`. */
  args?: string[];
  /** Added to (and overriding) this process's environment. */
  env?: Record<string, string>;
}

export interface ServerProcess {
  child: ChildProcessByStdio<null, Readable, Readable>;
  /** The exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  /** The port from the `listening` log line; rejects when the process exits before listening. */
  port: Promise<number>;
  /** Every stdout line parsed as JSON, in order (lines that are not JSON are only in `stdout()`). */
  logs: Array<Record<string, any>>;
  stdout(): string;
  stderr(): string;
  /** Waits until /readyz answers 200 and returns the base URL. */
  ready(timeoutMs?: number): Promise<string>;
  kill(signal: NodeJS.Signals): void;
  /** SIGKILLs the process if it still runs and waits for it to exit. */
  stop(): Promise<void>;
}

export function startServerProcess(options: ServerProcessOptions = {}): ServerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', ...(options.args ?? [])], {
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const logs: Array<Record<string, any>> = [];
  const port = new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      stdout += `${line}\n`;
      let entry: unknown;
      try {
        entry = JSON.parse(line);
      } catch {
        return; // --help and other plain text
      }
      if (entry === null || typeof entry !== 'object') return;
      const record = entry as Record<string, any>;
      logs.push(record);
      if (record.msg === 'listening') resolve(record.port as number);
    });
    void exited.then((code) => reject(new Error(`server exited (${code}) before listening: ${stderr}`)));
  });
  // A test that expects an early exit never awaits the port.
  port.catch(() => {});
  const ready = async (timeoutMs = 10_000): Promise<string> => {
    const url = `http://127.0.0.1:${await port}`;
    const deadline = Date.now() + timeoutMs;
    while ((await fetch(`${url}/readyz`)).status !== 200) {
      assert.ok(Date.now() < deadline, `ready within ${timeoutMs / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return url;
  };
  return {
    child,
    exited,
    port,
    logs,
    stdout: () => stdout,
    stderr: () => stderr,
    ready,
    kill: (signal) => {
      child.kill(signal);
    },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

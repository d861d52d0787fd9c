/**
 * The two scripts the image runs: the build-time CUDA provider check (driven here by fake ldd and
 * ldconfig programs, since neither CUDA nor a GPU is needed to test its decisions) and the
 * HEALTHCHECK client.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT, freePort } from './helpers.ts';

const CHECK = join(ROOT, 'infra/docker/check-cuda-provider.sh');
const HEALTHCHECK = join(ROOT, 'infra/docker/healthcheck.mjs');

describe('check-cuda-provider.sh', () => {
  let dir: string;
  let provider: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'warmkv-check-'));
    provider = join(dir, 'libonnxruntime_providers_cuda.so');
    writeFileSync(provider, '');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** Runs the script with `ldd -r` printing `lddOutput` and `ldconfig -p` printing `cache`. */
  function check(lddOutput: string, options: { cache?: string; cudaVersion?: string; path?: string } = {}) {
    const bin = mkdtempSync(join(dir, 'bin-'));
    writeFileSync(join(bin, 'ldd'), `#!/bin/sh\ncat <<'EOF'\n${lddOutput}\nEOF\n`);
    writeFileSync(join(bin, 'ldconfig'), `#!/bin/sh\ncat <<'EOF'\n${options.cache ?? '\tlibcudnn.so.9 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcudnn.so.9'}\nEOF\n`);
    chmodSync(join(bin, 'ldd'), 0o755);
    chmodSync(join(bin, 'ldconfig'), 0o755);
    const env: Record<string, string> = { PATH: `${bin}:${process.env.PATH}`, CUDA_COMPAT_DIR: join(dir, 'no-compat') };
    if (options.cudaVersion) env.CUDA_VERSION = options.cudaVersion;
    return spawnSync('sh', [CHECK, options.path ?? provider], { env, encoding: 'utf8' });
  }

  const cuda13 = [
    '\tlinux-vdso.so.1 (0x00007ffd)',
    '\tlibonnxruntime_providers_shared.so => /app/bin/libonnxruntime_providers_shared.so (0x00007f01)',
    '\tlibcublasLt.so.13 => /usr/local/cuda/lib64/libcublasLt.so.13 (0x00007f02)',
    '\tlibcublas.so.13 => /usr/local/cuda/lib64/libcublas.so.13 (0x00007f03)',
    '\tlibcurand.so.10 => /usr/local/cuda/lib64/libcurand.so.10 (0x00007f04)',
    '\tlibcudart.so.13 => /usr/local/cuda/lib64/libcudart.so.13 (0x00007f05)',
    '\tlibcuda.so.1 => not found',
    '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f06)',
    'undefined symbol: cuGetErrorString\t(/app/bin/libonnxruntime_providers_cuda.so)',
    'undefined symbol: cuDeviceGetAttribute\t(/app/bin/libonnxruntime_providers_cuda.so)',
  ].join('\n');

  it('passes when everything but the driver resolves and the CUDA majors agree', () => {
    const result = check(cuda13, { cudaVersion: '13.2.1' });
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /OK, provider links CUDA 13; image CUDA 13\.2\.1/);
  });

  it('fails with both majors named when the image has another CUDA major', () => {
    const onCuda12 = cuda13.replace(/=> \/usr\/local\/cuda\/lib64\/(libcu\w+\.so\.13) \(\w+\)/g, '=> not found');
    const result = check(onCuda12, { cudaVersion: '12.8.1' });
    assert.equal(result.status, 1);
    assert.match(result.stderr, /links CUDA 13 \(libcudart\.so\.13\) but this image has CUDA 12\.8\.1/);
  });

  it('fails on any other missing library, even without CUDA_VERSION', () => {
    const result = check(cuda13.replace('/usr/local/cuda/lib64/libcurand.so.10 (0x00007f04)', 'not found'));
    assert.equal(result.status, 1);
    assert.match(result.stderr, /libcurand\.so\.10 => not found/);
  });

  it('fails on undefined symbols other than the driver API', () => {
    const result = check(`${cuda13}\nundefined symbol: cublasLtMatmulAlgoGetHeuristic_v2\t(/app/bin/libonnxruntime_providers_cuda.so)`, { cudaVersion: '13.0.2' });
    assert.equal(result.status, 1);
    assert.match(result.stderr, /cublasLtMatmulAlgoGetHeuristic_v2/);
  });

  it('fails without cuDNN 9', () => {
    const result = check(cuda13, { cudaVersion: '13.2.1', cache: '\tlibcudnn.so.8 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcudnn.so.8' });
    assert.equal(result.status, 1);
    assert.match(result.stderr, /cuDNN 9/);
  });

  it('fails when the provider was never downloaded', () => {
    const result = check(cuda13, { path: join(dir, 'missing.so') });
    assert.equal(result.status, 1);
    assert.match(result.stderr, /ONNXRUNTIME_NODE_INSTALL=cuda12/);
  });
});

describe('healthcheck.mjs', () => {
  let dir: string;
  let standIn: string;
  const servers: ChildProcess[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'warmkv-health-'));
    // Listens where warmkv would for these arguments and environment (a --port flag wins over PORT),
    // and answers /healthz with STATUS.
    standIn = join(dir, 'main.js');
    writeFileSync(
      standIn,
      [
        "import { createServer } from 'node:http';",
        "const flag = process.argv.indexOf('--port');",
        'const port = Number(flag === -1 ? process.env.PORT : process.argv[flag + 1]);',
        "createServer((request, response) => { response.statusCode = request.url === '/healthz' ? Number(process.env.STATUS) : 404; response.end(); })",
        "  .listen(port, '127.0.0.1', () => console.log('listening'));",
      ].join('\n'),
    );
  });
  after(() => {
    for (const server of servers) server.kill();
    rmSync(dir, { recursive: true, force: true });
  });


  /** Starts the stand-in as `node --max-semi-space-size=64 --initial-old-space-size=128 main.js ARGS` and waits until it listens. */
  async function startServer(args: string[], env: Record<string, string>): Promise<number> {
    const child = spawn(process.execPath, ['--max-semi-space-size=64', '--initial-old-space-size=128', standIn, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    servers.push(child);
    await once(child.stdout!, 'data');
    return child.pid!;
  }

  function healthcheck(pid: number): Promise<number | null> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, ['--import', 'tsx', HEALTHCHECK, String(pid)], { stdio: 'ignore' });
      child.on('exit', (code) => resolve(code));
    });
  }

  it('probes the port given as --port, which wins over PORT, as in the server', async () => {
    const port = await freePort();
    const pid = await startServer(['--port', String(port)], { PORT: '1', HOST: '0.0.0.0', STATUS: '200' });
    assert.equal(await healthcheck(pid), 0);
  });

  it('probes PORT when no flag is given', async () => {
    const port = await freePort();
    const pid = await startServer([], { PORT: String(port), STATUS: '200' });
    assert.equal(await healthcheck(pid), 0);
  });

  it('exits 1 when /healthz answers an error', async () => {
    const port = await freePort();
    const pid = await startServer(['--port', String(port)], { STATUS: '503' });
    assert.equal(await healthcheck(pid), 1);
  });

  it('exits 1 when nothing listens where the configuration says', async () => {
    const port = await freePort();
    const pid = await startServer(['--port', String(port)], { STATUS: '200' });
    const unused = await freePort();
    // A process whose configuration names a port nobody listens on.
    const idle = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)', '--', 'main.js', '--port', String(unused)], { stdio: 'ignore' });
    servers.push(idle);
    assert.equal(await healthcheck(idle.pid!), 1);
    assert.equal(await healthcheck(pid), 0);
  });
});

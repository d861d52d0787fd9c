/**
 * Invariants of the Dockerfile that must not regress silently: pinned bases whose CUDA major is the
 * one onnxruntime-node's CUDA provider links, a supported Node LTS, npm ci --omit=dev with the CUDA
 * download switched on (GPU) or off (CPU), non-root users, HEALTHCHECK, the provider defaults and
 * the fallback, and a build context that carries what the COPY lines need.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { loadConfig } from '../../src/config.ts';
import { instructionsOf, parseDockerfile, readRepoFile, ROOT, SERVER_ENV, stageEnv, stageNamed, type Stage } from './helpers.ts';

const dockerfile = parseDockerfile(readRepoFile('Dockerfile'));
const runtimeStages = ['cpu', 'cuda'].map((name) => stageNamed(dockerfile, name));

/**
 * CUDA major that the NuGet package Microsoft.ML.OnnxRuntime.Gpu.Linux links, per onnxruntime
 * version (libcudart.so.N in the NEEDED entries of libonnxruntime_providers_cuda.so). Sources in
 * docs/deploy.md. A bump of onnxruntime-node fails this test until someone checks the new package
 * and records its CUDA major here and in the Dockerfile's CUDA_IMAGE.
 */
const ORT_CUDA_MAJOR: Record<string, number> = { '1.26.0': 12, '1.30.0': 13 };

function installedOnnxruntimeVersion(): string {
  const lock = JSON.parse(readRepoFile('package-lock.json')) as { packages: Record<string, { version: string }> };
  return lock.packages['node_modules/onnxruntime-node'].version;
}

function runCommands(stage: Stage): string {
  // Without RUN's own flags (--mount=type=cache,...): the command is what follows them.
  return instructionsOf(stage, 'RUN').map((i) => i.args.replace(/^(--\S+\s+)+/, '')).join('\n');
}

describe('Dockerfile: base images', () => {
  it('uses BuildKit syntax (COPY --chmod) and names every stage', () => {
    assert.match(dockerfile.syntax ?? '', /^docker\/dockerfile:1(\.\d+)*$/);
    for (const stage of dockerfile.stages) assert.ok(stage.name, `stage FROM ${stage.from} has no name`);
  });

  it('pins every external base image by an exact version tag', () => {
    const stageNames = new Set(dockerfile.stages.map((s) => s.name));
    for (const stage of dockerfile.stages) {
      if (stageNames.has(stage.image)) continue; // FROM an earlier stage
      assert.doesNotMatch(stage.image, /\$\{/, `FROM ${stage.from}: unresolved ARG`);
      const tag = stage.image.split('@')[0].split(':')[1];
      assert.ok(tag, `${stage.image} has no tag`);
      assert.notEqual(tag, 'latest');
      assert.match(tag, /^\d+\.\d+\.\d+-/, `${stage.image}: tag must carry a full x.y.z version`);
    }
  });

  it('runs a supported Node LTS (22 or 24; Node 20 is end-of-life)', () => {
    const node = dockerfile.globalArgs.get('NODE_IMAGE') ?? '';
    const match = /^node:(\d+)\.\d+\.\d+-(bookworm|trixie)-slim$/.exec(node);
    assert.ok(match, `NODE_IMAGE=${node}`);
    assert.ok(['22', '24'].includes(match[1]), `Node ${match[1]} is not a supported LTS line`);
  });

  it('takes the GPU base from NVIDIA with cuDNN, and its CUDA major is the one the pinned provider links', () => {
    const cuda = dockerfile.globalArgs.get('CUDA_IMAGE') ?? '';
    const match = /^nvidia\/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu(22|24)\.04$/.exec(cuda);
    assert.ok(match, `CUDA_IMAGE=${cuda} must be nvidia/cuda:X.Y.Z-cudnn-runtime-ubuntuNN.04`);
    const version = installedOnnxruntimeVersion();
    const expected = ORT_CUDA_MAJOR[version];
    assert.ok(expected !== undefined, `onnxruntime-node ${version}: record the CUDA major of its Microsoft.ML.OnnxRuntime.Gpu.Linux package in ORT_CUDA_MAJOR (see docs/deploy.md)`);
    assert.equal(Number(match[1]), expected, `onnxruntime-node ${version} links CUDA ${expected}; CUDA_IMAGE has ${match[1]}`);
    assert.equal(stageNamed(dockerfile, 'cuda').from, '${CUDA_IMAGE}');
  });

  it('builds the CUDA image by default (last stage) and has a CPU target', () => {
    assert.equal(dockerfile.stages.at(-1)?.name, 'cuda');
    assert.equal(stageNamed(dockerfile, 'cpu').from, '${NODE_IMAGE}');
  });

  it('copies the node binary of the pinned Node image into the CUDA image', () => {
    const copies = instructionsOf(stageNamed(dockerfile, 'cuda'), 'COPY').map((i) => i.args);
    assert.ok(copies.some((args) => /--from=node\s+\/usr\/local\/bin\/node\s+\/usr\/local\/bin\/node/.test(args)));
    assert.equal(stageNamed(dockerfile, 'node').from, '${NODE_IMAGE}');
  });
});

describe('Dockerfile: dependencies', () => {
  it('installs and builds only through the infra/docker scripts that CI runs, with the mode each stage needs', () => {
    assert.match(runCommands(stageNamed(dockerfile, 'build')), /^sh infra\/docker\/install-deps\.sh build\nsh infra\/docker\/build\.sh$/);
    assert.equal(runCommands(stageNamed(dockerfile, 'deps-cpu')), 'sh infra/docker/install-deps.sh cpu');
    assert.equal(runCommands(stageNamed(dockerfile, 'deps-cuda')), 'sh infra/docker/install-deps.sh cuda');
    // .ci/run executes the same scripts (CPU path whole, CUDA path with a local package).
    const ci = readRepoFile('.ci/run');
    for (const step of ['install-deps.sh build', 'build.sh', 'install-deps.sh cpu', 'install-deps.sh cuda', 'smoke.sh']) assert.ok(ci.includes(step), `.ci/run runs ${step}`);
  });

  it('uses only npm flags that npm 10 and 11 read alike (no --allow-scripts), and runs the CUDA download by name', () => {
    const script = readRepoFile('infra/docker/install-deps.sh');
    assert.doesNotMatch(readRepoFile('Dockerfile'), /npm ci|--allow-scripts/);
    assert.doesNotMatch(script, /--allow-scripts/);
    assert.match(script, /npm ci \$omit --ignore-scripts/);
    assert.match(script, /ONNXRUNTIME_NODE_INSTALL=cuda12 node "\$ort\/script\/install\.js"/);
  });

  it('uses an install option that the pinned onnxruntime-node accepts, and fetches its own version from NuGet', () => {
    const require = createRequire(join(ROOT, 'package.json'));
    const metadata = require('onnxruntime-node/script/install-metadata.js') as {
      requirements: Record<string, string[]>;
      manifests: Record<string, Record<string, { package: string }>>;
      packages: Record<string, { name: string; versions: { feed: string; version: string }[] }>;
    };
    assert.ok(metadata.requirements['linux/x64'].includes('cuda12'));
    const manifest = metadata.manifests['linux/x64:cuda12'];
    assert.ok(manifest['./libonnxruntime_providers_cuda.so']);
    const nuget = metadata.packages[manifest['./libonnxruntime_providers_cuda.so'].package];
    assert.equal(nuget.name, 'Microsoft.ML.OnnxRuntime.Gpu.Linux');
    assert.deepEqual(nuget.versions.map((v) => v.version), [installedOnnxruntimeVersion()]);
  });

  it('runtime images take node_modules from the matching deps stage', () => {
    const from = (stage: Stage) => instructionsOf(stage, 'COPY').map((i) => i.args).find((args) => args.includes('/app/node_modules'));
    assert.match(from(stageNamed(dockerfile, 'cuda')) ?? '', /--from=deps-cuda\b/);
    assert.match(from(stageNamed(dockerfile, 'cpu')) ?? '', /--from=deps-cpu\b/);
  });

  it('checks at build time that the CUDA provider loads against the base image libraries', () => {
    const cuda = stageNamed(dockerfile, 'cuda');
    assert.match(runCommands(cuda), /warmkv-check-cuda-provider \S*libonnxruntime_providers_cuda\.so/);
    assert.ok(instructionsOf(cuda, 'COPY').some((i) => i.args.includes('infra/docker/check-cuda-provider.sh')));
  });

  it('compiles TypeScript with the one build config, which npm run build uses too, emitting all of src/ into dist/', () => {
    assert.match(readRepoFile('infra/docker/build.sh'), /tsc -p tsconfig\.build\.json/);
    const scripts = (JSON.parse(readRepoFile('package.json')) as { scripts: Record<string, string> }).scripts;
    assert.equal(scripts.build, 'sh infra/docker/build.sh');
    const config = JSON.parse(readRepoFile('tsconfig.build.json')) as { include: string[]; compilerOptions: Record<string, unknown> };
    assert.deepEqual(config.include, ['src']);
    assert.equal(config.compilerOptions.rootDir, 'src');
    assert.equal(config.compilerOptions.outDir, 'dist');
    assert.equal(config.compilerOptions.noEmit, false);
    assert.equal(config.compilerOptions.rewriteRelativeImportExtensions, true);
    for (const stage of runtimeStages) {
      // A 64 MB young generation lets short-lived objects (spans, per-step arrays) die young: see docs/benchmarks.md.
      assert.deepEqual(JSON.parse(instructionsOf(stage, 'ENTRYPOINT')[0].args), ['node', '--max-semi-space-size=64', '--initial-old-space-size=128', '/app/dist/main.js']);
    }
  });
});

describe('Dockerfile: runtime stages', () => {
  for (const stage of runtimeStages) {
    describe(stage.name!, () => {
      const env = stageEnv(stage);

      it('runs as a numeric non-root user', () => {
        const users = instructionsOf(stage, 'USER');
        assert.equal(users.length, 1);
        const [uid, gid] = users[0].args.split(':');
        assert.match(uid, /^\d+$/, 'numeric, so Kubernetes runAsNonRoot can verify it');
        assert.notEqual(Number(uid), 0);
        assert.notEqual(Number(gid ?? uid), 0);
        const lastUser = stage.instructions.lastIndexOf(users[0]);
        assert.ok(stage.instructions.slice(lastUser + 1).every((i) => i.keyword !== 'RUN'), 'no RUN after USER');
      });

      it('has a HEALTHCHECK on /healthz', () => {
        const healthchecks = instructionsOf(stage, 'HEALTHCHECK');
        assert.equal(healthchecks.length, 1);
        assert.match(healthchecks[0].args, /CMD \["node", "\/app\/infra\/docker\/healthcheck\.mjs"\]/);
        assert.match(readRepoFile('infra/docker/healthcheck.mjs'), /\/healthz/);
      });

      it('sets only settings the server knows, and they parse', () => {
        for (const name of env.keys()) {
          if (name === 'NODE_ENV' || name.startsWith('NVIDIA_')) continue;
          assert.ok(SERVER_ENV.has(name), `ENV ${name} is not a server setting (src/config.ts)`);
        }
        const config = loadConfig(Object.fromEntries(env));
        assert.equal(config.model, '/app/models/warmkv-chat');
        assert.equal(String(config.port), instructionsOf(stage, 'EXPOSE')[0].args);
        assert.ok(config.snapshotDir);
      });

      it('bakes in the default model at MODEL_DIR', () => {
        assert.ok(instructionsOf(stage, 'COPY').some((i) => /^models\/warmkv-chat\s+\.\/models\/warmkv-chat$/.test(i.args)));
      });
    });
  }

  it('defaults to the CUDA provider with a logged fallback to the CPU in the GPU image', () => {
    const config = loadConfig(Object.fromEntries(stageEnv(stageNamed(dockerfile, 'cuda'))));
    assert.equal(config.executionProvider, 'cuda');
    assert.equal(config.executionProviderFallback, true);
    const cpu = loadConfig(Object.fromEntries(stageEnv(stageNamed(dockerfile, 'cpu'))));
    assert.equal(cpu.executionProvider, 'cpu');
  });
});

describe('.dockerignore', () => {
  const rules = readRepoFile('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));

  it('is an allowlist, so node_modules, .git and .env never reach the build context', () => {
    assert.equal(rules[0], '*');
    for (const rule of rules.filter((r) => r.startsWith('!'))) {
      assert.doesNotMatch(rule, /node_modules|\.git\b|\.env/);
    }
  });

  it('lets in every path the Dockerfile copies from the context, and they exist', () => {
    const allowed = rules.filter((r) => r.startsWith('!')).map((r) => r.slice(1).replace(/\/$/, ''));
    const sources = dockerfile.stages.flatMap((stage) =>
      instructionsOf(stage, 'COPY')
        .filter((i) => !i.args.includes('--from='))
        .flatMap((i) => i.args.split(/\s+/).filter((part) => !part.startsWith('--')).slice(0, -1)),
    );
    assert.ok(sources.length > 5);
    for (const source of sources) {
      const path = source.replace(/\/$/, '');
      assert.ok(allowed.some((rule) => path === rule || path.startsWith(`${rule}/`)), `.dockerignore keeps out ${source}`);
      assert.ok(existsSync(join(ROOT, path)), `${source} does not exist`);
    }
  });

  it('keeps dependency install scripts (the CUDA download among them) off in .npmrc, with no key npm does not know', () => {
    const settings = readFileSync(join(ROOT, '.npmrc'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    assert.deepEqual(settings, ['ignore-scripts=true']);
  });
});

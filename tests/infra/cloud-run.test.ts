/**
 * The Cloud Run Terraform, read as text (no terraform or provider download in tests): one L4 per
 * instance, zonal redundancy off, CPU always allocated, session affinity, an hour per request,
 * startup probe on /readyz, scaling bounds and concurrency, and the snapshot bucket mounted at
 * SNAPSHOT_DIR. `terraform fmt -check` runs too when a terraform binary is on PATH.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { loadConfig, parseByteSize } from '../../src/config.ts';
import { durationSeconds, hclAttribute, hclBlock, hclBlocks, hclMap, hclValue, hclVariableDefaults, quantityBytes, readRepoFile, ROOT, SERVER_ENV } from './helpers.ts';

const DIR = 'infra/cloud-run';
const files = readdirSync(join(ROOT, DIR)).filter((name) => name.endsWith('.tf'));
const text = files.map((name) => readRepoFile(`${DIR}/${name}`)).join('\n');
const variables = hclVariableDefaults(text);
const locals = new Map([...hclBlocks(text, 'locals').flatMap((block) => [...hclMap(`{${block.body}}`)])]);

const services = hclBlocks(text, 'resource').filter((b) => b.labels[0] === 'google_cloud_run_v2_service');
const service = services[0];
const template = hclBlock(service.body, 'template');
const container = hclBlock(template.body, 'containers');
const resources = hclBlock(container.body, 'resources');

function value(body: string, name: string): string | undefined {
  const expression = hclAttribute(body, name);
  const local = expression && /^local\.(\w+)$/.exec(expression.trim());
  if (local) return hclValue(locals.get(local[1]), variables);
  return hclValue(expression, variables);
}

const env: Record<string, string> = Object.fromEntries(
  hclBlocks(container.body, 'env').map((block) => [value(block.body, 'name')!, value(block.body, 'value')!]),
);

describe('cloud-run: files', () => {
  it('has one Cloud Run v2 service and the provider pinned', () => {
    assert.equal(services.length, 1);
    const required = hclBlock(text, 'terraform', 'required_providers');
    assert.match(hclAttribute(required.body, 'google') ?? '', /source\s*=\s*"hashicorp\/google"/);
    assert.match(hclAttribute(required.body, 'google') ?? '', /version\s*=\s*">= 6\./);
  });

  it('every var.x used is declared, and every variable without a default is one the example sets', () => {
    const used = new Set([...text.matchAll(/\bvar\.(\w+)/g)].map((m) => m[1]));
    const declared = new Set(hclBlocks(text, 'variable').map((b) => b.labels[0]));
    for (const name of used) assert.ok(declared.has(name), `var.${name} is not declared`);
    const example = readRepoFile(`${DIR}/terraform.tfvars.example`);
    for (const name of declared) {
      if (!variables.has(name)) assert.match(example, new RegExp(`^${name}\\s*=`, 'm'), `${name} has no default and no example value`);
    }
  });

  it('is formatted (terraform fmt -check), when terraform is installed', (t) => {
    const result = spawnSync('terraform', ['fmt', '-check', '-list=true', '.'], { cwd: join(ROOT, DIR), encoding: 'utf8' });
    if (result.error) {
      t.skip('terraform is not installed');
      return;
    }
    assert.equal(result.status, 0, `not formatted: ${result.stdout}`);
  });
});

describe('cloud-run: GPU service', () => {
  it('attaches one NVIDIA L4 by default, with zonal redundancy off', () => {
    assert.equal(value(hclBlock(template.body, 'node_selector').body, 'accelerator'), 'nvidia-l4');
    const limits = hclMap(hclAttribute(resources.body, 'limits')!);
    assert.equal(hclValue(limits.get('nvidia.com/gpu'), variables), '1');
    assert.equal(value(template.body, 'gpu_zonal_redundancy_disabled'), 'true');
  });

  it('meets the L4 minimums of 4 CPU and 16 GiB, with the KV budget well under the memory', () => {
    const limits = hclMap(hclAttribute(resources.body, 'limits')!);
    assert.ok(Number(hclValue(limits.get('cpu'), variables)) >= 4);
    const memory = quantityBytes(hclValue(limits.get('memory'), variables)!);
    assert.ok(memory >= 16 * 1024 ** 3);
    assert.ok(parseByteSize(env.KV_CACHE_BYTES)! <= memory * 0.6);
  });

  it('keeps the CPU allocated outside requests (required with a GPU)', () => {
    assert.equal(value(resources.body, 'cpu_idle'), 'false');
  });

  it('turns on session affinity and allows an hour per request for long streams', () => {
    assert.equal(value(template.body, 'session_affinity'), 'true');
    const timeout = durationSeconds(value(template.body, 'timeout')!);
    assert.ok(timeout >= 600 && timeout <= 3600, `timeout ${timeout}s`);
  });

  it('sets scaling bounds and per-instance concurrency', () => {
    const scaling = hclBlock(template.body, 'scaling').body;
    const min = Number(value(scaling, 'min_instance_count'));
    const max = Number(value(scaling, 'max_instance_count'));
    assert.ok(min >= 0 && max >= 1 && min <= max, `min ${min} max ${max}`);
    const concurrency = Number(value(template.body, 'max_instance_request_concurrency'));
    assert.ok(concurrency >= 1 && concurrency <= 1000);
  });

  it('gates traffic on /readyz with a startup probe, and checks liveness on /healthz', () => {
    const startup = hclBlock(container.body, 'startup_probe');
    assert.equal(value(hclBlock(startup.body, 'http_get').body, 'path'), '/readyz');
    const budget = Number(value(startup.body, 'period_seconds')) * Number(value(startup.body, 'failure_threshold'));
    assert.ok(budget >= 120 && budget <= 240, `startup budget ${budget}s (Cloud Run allows 240 s)`);
    assert.equal(value(hclBlock(hclBlock(container.body, 'liveness_probe').body, 'http_get').body, 'path'), '/healthz');
  });

  it('listens where the image listens, and probes where it listens', () => {
    const port = value(hclBlock(container.body, 'ports').body, 'container_port');
    assert.equal(port, '8080');
    // Cloud Run sets PORT to container_port; arguments (flags win) must not move the server elsewhere.
    const args = hclAttribute(container.body, 'args');
    assert.equal(loadConfig({ ...env, PORT: port }, args ? (JSON.parse(args) as string[]) : []).port, Number(port));
    for (const probe of ['startup_probe', 'liveness_probe']) {
      assert.equal(value(hclBlock(hclBlock(container.body, probe).body, 'http_get').body, 'port'), port, probe);
    }
  });
});

describe('cloud-run: sessions survive scale-to-zero', () => {
  it('mounts a Cloud Storage bucket of this configuration at SNAPSHOT_DIR, writable', () => {
    const volume = hclBlocks(template.body, 'volumes').find((v) => hclBlocks(v.body, 'gcs').length > 0);
    assert.ok(volume, 'no gcs volume');
    const gcs = hclBlock(volume.body, 'gcs').body;
    assert.match(hclAttribute(gcs, 'bucket') ?? '', /^google_storage_bucket\.\w+\.name$/);
    assert.equal(value(gcs, 'read_only'), 'false');
    const mount = hclBlocks(container.body, 'volume_mounts').find((m) => value(m.body, 'name') === value(volume.body, 'name'));
    assert.ok(mount);
    assert.equal(value(mount.body, 'mount_path'), env.SNAPSHOT_DIR);
    assert.equal(value(template.body, 'execution_environment'), 'EXECUTION_ENVIRONMENT_GEN2');
  });

  it('gives the service account object access to that bucket', () => {
    const grants = hclBlocks(text, 'resource').filter((b) => b.labels[0] === 'google_storage_bucket_iam_member');
    assert.ok(grants.some((g) => /roles\/storage\.object(User|Admin)/.test(hclAttribute(g.body, 'role') ?? '')));
    assert.match(hclAttribute(template.body, 'service_account') ?? '', /^google_service_account\.\w+\.email$/);
  });

  it('drains within the 10 s Cloud Run allows between SIGTERM and SIGKILL', () => {
    const config = loadConfig(env);
    assert.ok(config.drainSeconds < 10, `DRAIN_SECONDS ${config.drainSeconds}`);
    assert.match(hclBlock(hclBlocks(text, 'variable').find((b) => b.labels[0] === 'drain_seconds')!.body, 'validation').body, /< 10/);
  });

  it('sets only server settings, which parse, with the CUDA provider and its CPU fallback', () => {
    for (const name of Object.keys(env)) assert.ok(SERVER_ENV.has(name), `${name} is not a server setting`);
    const config = loadConfig(env);
    assert.equal(config.executionProvider, 'cuda');
    assert.equal(config.executionProviderFallback, true);
    assert.ok(config.snapshotDir);
  });
});

describe('cloud-run: API keys from Secret Manager', () => {
  /** `"${local.a}/${local.b}"` with the locals filled in. */
  const interpolated = (text: string | undefined) => text?.replace(/^"|"$/g, '').replace(/\$\{local\.(\w+)\}/g, (_, name: string) => hclValue(locals.get(name), variables) ?? '');

  it('creates the secret (never its value) and lets the service account read it', () => {
    const secrets = hclBlocks(text, 'resource').filter((b) => b.labels[0] === 'google_secret_manager_secret');
    assert.equal(secrets.length, 1);
    assert.equal(hclBlocks(text, 'resource').filter((b) => b.labels[0] === 'google_secret_manager_secret_version').length, 0, 'a version in Terraform puts the keys in its state');
    const grant = hclBlocks(text, 'resource').find((b) => b.labels[0] === 'google_secret_manager_secret_iam_member');
    assert.ok(grant);
    assert.equal(value(grant.body, 'role'), 'roles/secretmanager.secretAccessor');
    assert.match(hclAttribute(grant.body, 'member') ?? '', /google_service_account\.warmkv\.email/);
  });

  it('mounts its latest version as the file API_KEYS_FILE', () => {
    const volume = hclBlocks(template.body, 'volumes').find((v) => hclBlocks(v.body, 'secret').length > 0);
    assert.ok(volume, 'no secret volume');
    const secret = hclBlock(volume.body, 'secret').body;
    assert.match(hclAttribute(secret, 'secret') ?? '', /^google_secret_manager_secret\.\w+\.secret_id$/);
    const item = hclBlock(secret, 'items').body;
    assert.equal(value(item, 'version'), 'latest');
    const mount = hclBlocks(container.body, 'volume_mounts').find((m) => value(m.body, 'name') === value(volume.body, 'name'));
    assert.ok(mount);
    const file = interpolated(hclAttribute(hclBlocks(container.body, 'env').find((b) => value(b.body, 'name') === 'API_KEYS_FILE')!.body, 'value'));
    assert.equal(file, `${value(mount.body, 'mount_path')}/${value(item, 'path')}`);
  });
});

describe('cloud-run: sessions in Memorystore (var.session_store)', () => {
  const gated = (body: string) => /^var\.session_store \? 1 : 0$/.test(hclAttribute(body, 'count')?.trim() ?? '');
  const dynamic = (body: string, name: string) => hclBlocks(body, 'dynamic').find((b) => b.labels[0] === name);

  it('is off by default, so one-instance deployments need no VPC and no Redis', () => {
    assert.equal(variables.get('session_store'), 'false');
  });

  it('creates a Memorystore instance with AUTH on and persistence, only with the option', () => {
    const instance = hclBlocks(text, 'resource').find((b) => b.labels[0] === 'google_redis_instance');
    assert.ok(instance, 'no google_redis_instance');
    assert.ok(gated(instance.body), 'count = var.session_store ? 1 : 0');
    assert.equal(hclAttribute(instance.body, 'auth_enabled'), 'true');
    assert.equal(hclAttribute(instance.body, 'region'), 'var.region', 'next to the service');
    assert.ok(hclBlocks(instance.body, 'persistence_config').length === 1);
    assert.match(hclAttribute(instance.body, 'authorized_network') ?? '', /var\.network/);
  });

  it('sets SESSION_STORE_URL from the latest version of a secret it lets the service account read, never a plain value', () => {
    assert.ok(SERVER_ENV.has('SESSION_STORE_URL'));
    assert.equal(env.SESSION_STORE_URL, undefined, 'the URL holds the AUTH string: not a plain env value');
    const block = dynamic(container.body, 'env');
    assert.ok(block, 'a dynamic env block');
    assert.match(hclAttribute(block.body, 'for_each') ?? '', /^var\.session_store \?/);
    const content = hclBlock(block.body, 'content').body;
    assert.equal(value(content, 'name'), 'SESSION_STORE_URL');
    const ref = hclBlock(content, 'value_source', 'secret_key_ref').body;
    assert.equal(hclAttribute(ref, 'secret'), 'var.session_store_url_secret');
    assert.equal(value(ref, 'version'), 'latest');
    const grant = hclBlocks(text, 'resource').find((b) => b.labels[0] === 'google_secret_manager_secret_iam_member' && hclAttribute(b.body, 'secret_id') === 'var.session_store_url_secret');
    assert.ok(grant && gated(grant.body), 'a grant on that secret, with the option');
    assert.equal(value(grant.body, 'role'), 'roles/secretmanager.secretAccessor');
    assert.match(hclAttribute(grant.body, 'member') ?? '', /google_service_account\.warmkv\.email/);
  });

  it('reaches the instance over Direct VPC egress on the same network, only with the option', () => {
    const block = dynamic(template.body, 'vpc_access');
    assert.ok(block, 'a dynamic vpc_access block');
    assert.match(hclAttribute(block.body, 'for_each') ?? '', /^var\.session_store \?/);
    const content = hclBlock(block.body, 'content').body;
    assert.equal(value(content, 'egress'), 'PRIVATE_RANGES_ONLY');
    assert.equal(hclAttribute(hclBlock(content, 'network_interfaces').body, 'network'), 'var.network');
  });
});

/**
 * The Kubernetes manifests, parsed: GPU request, probes on the right endpoints, a shutdown budget
 * that covers preStop + drain + snapshots, labels that tie Deployment, Service, PDB, routes and the
 * InferencePool together, header-hashed session affinity, and settings the server understands.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { loadConfig, parseByteSize } from '../../src/config.ts';
import { durationSeconds, parseDockerfile, parseYamlDocuments, quantityBytes, readRepoFile, ROOT, SERVER_ENV, stageEnv, stageNamed, type K8sObject } from './helpers.ts';

const BASE = 'infra/k8s';

function kustomizationResources(dir: string): string[] {
  const [kustomization] = parseYamlDocuments(`${dir}/kustomization.yaml`) as unknown as { resources: string[] }[];
  return kustomization.resources.map((resource) => `${dir}/${resource}`);
}

function load(dir: string): K8sObject[] {
  return kustomizationResources(dir).flatMap((path) => parseYamlDocuments(path));
}

const base = load(BASE);
const gateway = load(`${BASE}/gateway`);
const inferenceExtension = parseYamlDocuments(`${BASE}/inference-extension/inferencepool.yaml`);
const all = [...base, ...gateway, ...inferenceExtension];

function one(objects: K8sObject[], kind: string): K8sObject {
  const found = objects.filter((o) => o.kind === kind);
  assert.equal(found.length, 1, `expected one ${kind}, found ${found.length}`);
  return found[0];
}

function selects(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).length > 0 && Object.entries(selector).every(([key, value]) => labels[key] === value);
}

const deployment = one(base, 'Deployment');
const pod = deployment.spec.template;
const container = pod.spec.containers[0];
const env: Record<string, string> = Object.fromEntries(container.env.map((e: { name: string; value: string }) => [e.name, e.value]));
const httpPort = container.ports.find((p: { name: string }) => p.name === 'http');

describe('k8s: manifests', () => {
  it('every file kustomize lists exists and parses, with apiVersion, kind and name', () => {
    for (const dir of [BASE, `${BASE}/gateway`]) {
      for (const path of kustomizationResources(dir)) assert.ok(existsSync(join(ROOT, path)), path);
    }
    for (const object of all) {
      assert.ok(object.apiVersion && object.kind && object.metadata?.name, JSON.stringify(object).slice(0, 80));
      assert.equal(object.metadata.namespace, undefined, `${object.kind} ${object.metadata.name}: leave the namespace to kubectl -n / kustomize`);
    }
  });

  it('names are unique per kind', () => {
    const keys = all.map((o) => `${o.kind}/${o.metadata.name}`);
    assert.equal(new Set(keys).size, keys.length);
  });
});

describe('k8s: Deployment', () => {
  it('requests one NVIDIA GPU per pod', () => {
    assert.equal(Number(container.resources.limits['nvidia.com/gpu']), 1);
    const requested = container.resources.requests?.['nvidia.com/gpu'];
    if (requested !== undefined) assert.equal(Number(requested), 1, 'GPU requests must equal limits');
    assert.ok(pod.spec.tolerations.some((t: { key: string }) => t.key === 'nvidia.com/gpu'));
  });

  it('runs more than one replica, rolling one pod at a time without losing capacity', () => {
    assert.ok(deployment.spec.replicas >= 2);
    assert.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0);
  });

  it('probes: startup and readiness on /readyz, liveness on /healthz, all on the http port', () => {
    assert.equal(container.startupProbe.httpGet.path, '/readyz');
    assert.equal(container.readinessProbe.httpGet.path, '/readyz');
    assert.equal(container.livenessProbe.httpGet.path, '/healthz');
    for (const probe of [container.startupProbe, container.readinessProbe, container.livenessProbe]) {
      assert.ok(probe.httpGet.port === 'http' || probe.httpGet.port === httpPort.containerPort);
    }
    // The probes follow the server's own configuration (environment and arguments, flags winning),
    // as the image's HEALTHCHECK does: `args: [--port, "9000"]` without a matching port would fail here.
    assert.equal(loadConfig(env, container.args ?? []).port, httpPort.containerPort);
    const startupBudget = container.startupProbe.periodSeconds * container.startupProbe.failureThreshold;
    assert.ok(startupBudget >= 120, `startup probe allows only ${startupBudget}s to load the model`);
  });

  it('gives preStop + DRAIN_SECONDS + snapshot time before SIGKILL', () => {
    const preStop: string[] = container.lifecycle.preStop.exec.command;
    assert.equal(preStop[0], 'sleep');
    const preStopSeconds = Number(preStop[1]);
    assert.ok(preStopSeconds > 0);
    const drain = loadConfig(env).drainSeconds;
    const grace = pod.spec.terminationGracePeriodSeconds;
    assert.ok(grace >= preStopSeconds + drain + 15, `terminationGracePeriodSeconds ${grace} < preStop ${preStopSeconds} + drain ${drain} + 15 s for snapshots`);
  });

  it('sets only server settings, which parse, with the CUDA provider and an explicit KV budget under the memory limit', () => {
    for (const name of Object.keys(env)) assert.ok(SERVER_ENV.has(name), `${name} is not a server setting`);
    const config = loadConfig(env);
    assert.equal(config.executionProvider, 'cuda');
    assert.equal(config.port, httpPort.containerPort);
    assert.ok(config.kvCacheBytes !== undefined, 'KV_CACHE_BYTES must be set: os.freemem() sees the node, not the pod');
    const memoryLimit = quantityBytes(container.resources.limits.memory);
    assert.ok(config.kvCacheBytes! <= memoryLimit * 0.6, `KV_CACHE_BYTES ${env.KV_CACHE_BYTES} leaves too little of ${container.resources.limits.memory}`);
  });

  it('mounts SNAPSHOT_DIR from the shared ReadWriteMany claim', () => {
    const mount = container.volumeMounts.find((m: { mountPath: string }) => m.mountPath === env.SNAPSHOT_DIR);
    assert.ok(mount, 'no volume mounted at SNAPSHOT_DIR');
    const volume = pod.spec.volumes.find((v: { name: string }) => v.name === mount.name);
    const claim = one(base, 'PersistentVolumeClaim');
    assert.equal(volume.persistentVolumeClaim.claimName, claim.metadata.name);
    assert.deepEqual(claim.spec.accessModes, ['ReadWriteMany']);
    const snapshotBytes = deployment.spec.replicas * parseByteSize(env.KV_CACHE_BYTES)!;
    assert.ok(quantityBytes(claim.spec.resources.requests.storage) >= snapshotBytes, 'claim smaller than replicas x KV_CACHE_BYTES');
  });

  it('runs as the image user, non-root, read-only root filesystem with a writable /tmp', () => {
    const dockerUser = stageNamed(parseDockerfile(readRepoFile('Dockerfile')), 'cuda').instructions.find((i) => i.keyword === 'USER')!.args;
    assert.equal(pod.spec.securityContext.runAsNonRoot, true);
    assert.equal(`${pod.spec.securityContext.runAsUser}:${pod.spec.securityContext.runAsGroup}`, dockerUser);
    assert.equal(container.securityContext.allowPrivilegeEscalation, false);
    assert.equal(container.securityContext.readOnlyRootFilesystem, true);
    assert.ok(container.volumeMounts.some((m: { mountPath: string }) => m.mountPath === '/tmp'));
  });

  it('overrides the image defaults it has to, and the image sets the rest', () => {
    const image = stageEnv(stageNamed(parseDockerfile(readRepoFile('Dockerfile')), 'cuda'));
    assert.equal(image.get('SNAPSHOT_DIR'), env.SNAPSHOT_DIR, 'the image creates this directory for the non-root user');
    assert.equal(env.EXECUTION_PROVIDER_FALLBACK, 'false', 'a pod holding a GPU must not run on the CPU quietly');
  });
});

describe('k8s: Service and PodDisruptionBudget', () => {
  const labels = pod.metadata.labels as Record<string, string>;

  it('the Service selects the pods and targets the named http port', () => {
    const service = one(base, 'Service');
    assert.ok(selects(service.spec.selector, labels));
    assert.ok(selects(deployment.spec.selector.matchLabels, labels));
    assert.equal(service.spec.ports[0].targetPort, 'http');
  });

  it('the PDB selects the pods and allows one disruption at a time', () => {
    const pdb = one(base, 'PodDisruptionBudget');
    assert.ok(selects(pdb.spec.selector.matchLabels, labels));
    assert.equal(pdb.spec.maxUnavailable, 1);
    assert.ok(deployment.spec.replicas > pdb.spec.maxUnavailable);
  });
});

describe('k8s: routing', () => {
  const service = one(base, 'Service');
  const route = one(gateway, 'HTTPRoute');

  it('the HTTPRoute attaches to the Gateway and sends traffic to the Service', () => {
    const gw = one(gateway, 'Gateway');
    assert.equal(route.spec.parentRefs[0].name, gw.metadata.name);
    assert.equal(gw.spec.gatewayClassName, one(gateway, 'GatewayClass').metadata.name);
    const backend = route.spec.rules[0].backendRefs[0];
    assert.equal(backend.name, service.metadata.name);
    assert.equal(backend.port, service.spec.ports[0].port);
  });

  it('allows streams as long as Cloud Run does (an hour)', () => {
    const timeouts = route.spec.rules[0].timeouts;
    assert.ok(durationSeconds(timeouts.request) >= 3600);
    assert.ok(durationSeconds(timeouts.backendRequest) <= durationSeconds(timeouts.request));
  });

  it('Envoy Gateway hashes X-Session-Id onto the pods of that route', () => {
    const policy = one(gateway, 'BackendTrafficPolicy');
    assert.equal(policy.apiVersion, 'gateway.envoyproxy.io/v1alpha1');
    assert.deepEqual(policy.spec.targetRefs, [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', name: route.metadata.name }]);
    assert.equal(policy.spec.loadBalancer.type, 'ConsistentHash');
    assert.equal(policy.spec.loadBalancer.consistentHash.type, 'Header');
    assert.equal(policy.spec.loadBalancer.consistentHash.header.name.toLowerCase(), 'x-session-id');
  });

  it('the InferencePool selects the pods on the container port and names warmkv metrics for its picker', () => {
    const pool = one(inferenceExtension, 'InferencePool');
    assert.equal(pool.apiVersion, 'inference.networking.k8s.io/v1');
    assert.ok(selects(pool.spec.selector.matchLabels, pod.metadata.labels));
    assert.equal(pool.spec.targetPorts[0].number, httpPort.containerPort);
    const text = readRepoFile(`${BASE}/inference-extension/inferencepool.yaml`);
    for (const flag of ['--total-queued-requests-metric=warmkv_queue_size', '--total-running-requests-metric=warmkv_running_requests', '--kv-cache-usage-percentage-metric=warmkv_kv_cache_utilization']) {
      assert.ok(text.includes(flag), flag);
    }
  });
});

describe('k8s: API keys and TLS', () => {
  it('reads the API keys from the Secret warmkv-api-keys, mounted read-only at API_KEYS_FILE, and the pod needs it', () => {
    const file = env.API_KEYS_FILE;
    assert.ok(file, 'API_KEYS_FILE is set');
    const mount = container.volumeMounts.find((m: { mountPath: string }) => file.startsWith(`${m.mountPath}/`));
    assert.ok(mount, `no volume is mounted above ${file}`);
    assert.equal(mount.readOnly, true);
    const volume = pod.spec.volumes.find((v: { name: string }) => v.name === mount.name);
    assert.equal(volume.secret.secretName, 'warmkv-api-keys');
    assert.notEqual(volume.secret.optional, true, 'an optional Secret would start the server open');
    assert.deepEqual(volume.secret.items.map((i: { path: string }) => `${mount.mountPath}/${i.path}`), [file]);
  });

  it('the Gateway listens on HTTPS only, terminating TLS with a certificate Secret, and the route attaches to it', () => {
    const gw = one(gateway, 'Gateway');
    assert.ok(gw.spec.listeners.length > 0);
    for (const listener of gw.spec.listeners) {
      assert.equal(listener.protocol, 'HTTPS', `listener ${listener.name} is ${listener.protocol}`);
      assert.equal(listener.tls.mode, 'Terminate');
      assert.equal(listener.tls.certificateRefs[0].kind, 'Secret');
      assert.ok(listener.tls.certificateRefs[0].name);
    }
    const route = one(gateway, 'HTTPRoute');
    assert.ok(gw.spec.listeners.some((l: { name: string }) => l.name === route.spec.parentRefs[0].sectionName));
  });
});

describe('k8s: snapshot storage class', () => {
  const OVERLAYS = ['infra/k8s-overlays/gke-filestore', 'infra/k8s-overlays/eks-efs'];
  const params = one(base, 'ConfigMap');

  it('is a parameter (a local-config ConfigMap) that a replacement copies into the claim', () => {
    assert.equal(params.metadata.annotations?.['config.kubernetes.io/local-config'], 'true');
    assert.ok(params.data.storageClassName);
    const [kustomization] = parseYamlDocuments(`${BASE}/kustomization.yaml`) as unknown as { replacements: { source: { name: string; fieldPath: string }; targets: { select: { kind: string }; fieldPaths: string[] }[] }[] }[];
    const replacement = kustomization.replacements.find((r) => r.source.fieldPath === 'data.storageClassName');
    assert.equal(replacement?.source.name, params.metadata.name);
    assert.deepEqual(replacement?.targets.map((t) => [t.select.kind, t.fieldPaths]), [['PersistentVolumeClaim', ['spec.storageClassName']]]);
    assert.deepEqual(one(base, 'PersistentVolumeClaim').spec.accessModes, ['ReadWriteMany']);
  });

  it('the GKE and EKS examples build on the base and set their class', () => {
    for (const dir of OVERLAYS) {
      const [kustomization] = parseYamlDocuments(`${dir}/kustomization.yaml`) as unknown as { resources: string[]; patches: { target: { name: string } }[] }[];
      assert.ok(kustomization.resources.includes('../../k8s'), `${dir} builds on infra/k8s`);
      assert.ok(kustomization.patches.some((p) => p.target.name === params.metadata.name), `${dir} sets the parameter`);
    }
  });

  it('renders the class each example names into the claim (kubectl kustomize), when kubectl is installed', (t) => {
    const expected: Record<string, string> = { 'infra/k8s': 'standard-rwx', 'infra/k8s-overlays/gke-filestore': 'standard-rwx', 'infra/k8s-overlays/eks-efs': 'efs-sc' };
    for (const [dir, storageClass] of Object.entries(expected)) {
      const result = spawnSync('kubectl', ['kustomize', join(ROOT, dir)], { encoding: 'utf8' });
      if (result.error) {
        t.skip('kubectl is not installed');
        return;
      }
      assert.equal(result.status, 0, result.stderr);
      const objects = parseAllDocuments(result.stdout).map((d) => d.toJSON() as K8sObject);
      const claim = objects.find((o) => o.kind === 'PersistentVolumeClaim');
      assert.equal(claim?.spec.storageClassName, storageClass, dir);
      assert.ok(!objects.some((o) => o.kind === 'ConfigMap' && o.metadata.name === params.metadata.name), `${dir} applies its parameters ConfigMap`);
    }
  });
});

describe('k8s: Redis session store (infra/k8s-overlays/redis-sessions)', () => {
  const COMPONENT = 'infra/k8s-overlays/redis-sessions';
  const [component] = parseYamlDocuments(`${COMPONENT}/kustomization.yaml`) as unknown as { kind: string; resources: string[]; patches: { target: { kind: string; name: string }; patch: string }[] }[];
  const redis = component.resources.flatMap((resource) => parseYamlDocuments(`${COMPONENT}/${resource}`));

  it('is a component that adds SESSION_STORE_URL to the warmkv container from the Secret warmkv-session-store', () => {
    assert.equal(component.kind, 'Component');
    assert.ok(SERVER_ENV.has('SESSION_STORE_URL'));
    const patch = component.patches.find((p) => p.target.kind === 'Deployment' && p.target.name === deployment.metadata.name);
    assert.ok(patch, 'patches the warmkv Deployment');
    const [operation] = parseAllDocuments(patch.patch).map((d) => d.toJS()).flat() as unknown as { op: string; path: string; value: { name: string; value?: string; valueFrom: { secretKeyRef: { name: string; key: string } } } }[];
    assert.equal(operation.path, '/spec/template/spec/containers/0/env/-');
    assert.equal(operation.value.name, 'SESSION_STORE_URL');
    assert.equal(operation.value.value, undefined, 'the URL (it holds the password) never sits in a manifest');
    assert.deepEqual(operation.value.valueFrom.secretKeyRef, { name: 'warmkv-session-store', key: 'url' });
  });

  it('runs Redis with an append-only file on its own volume, its password from the same Secret, behind a Service on its port', () => {
    const statefulSet = one(redis, 'StatefulSet');
    const service = one(redis, 'Service');
    const server = statefulSet.spec.template.spec.containers[0];
    assert.match(server.image, /^redis:\d+\.\d+\.\d+/, 'a pinned Redis image');
    assert.equal(server.args[server.args.indexOf('--appendonly') + 1], 'yes');
    assert.equal(server.args[server.args.indexOf('--requirepass') + 1], '$(REDIS_PASSWORD)');
    const password = server.env.find((e: { name: string }) => e.name === 'REDIS_PASSWORD');
    assert.equal(password.valueFrom.secretKeyRef.name, 'warmkv-session-store');
    assert.ok(server.volumeMounts.some((m: { mountPath: string }) => m.mountPath === server.args[server.args.indexOf('--dir') + 1]));
    assert.ok(selects(service.spec.selector, statefulSet.spec.template.metadata.labels));
    assert.equal(service.spec.ports[0].port, 6379);
    assert.ok(readRepoFile(`${COMPONENT}/kustomization.yaml`).includes(`redis://:PASS@${service.metadata.name}:${service.spec.ports[0].port}`), 'the documented URL names the Service');
  });

  it('renders the example overlay with the URL from the Secret (kubectl kustomize), when kubectl is installed', (t) => {
    const result = spawnSync('kubectl', ['kustomize', join(ROOT, 'infra/k8s-overlays/fleet-redis')], { encoding: 'utf8' });
    if (result.error) {
      t.skip('kubectl is not installed');
      return;
    }
    assert.equal(result.status, 0, result.stderr);
    const objects = parseAllDocuments(result.stdout).map((d) => d.toJSON() as K8sObject);
    const rendered = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === deployment.metadata.name)!;
    const url = rendered.spec.template.spec.containers[0].env.find((e: { name: string }) => e.name === 'SESSION_STORE_URL');
    assert.equal(url?.valueFrom.secretKeyRef.name, 'warmkv-session-store');
    assert.ok(objects.some((o) => o.kind === 'StatefulSet' && o.metadata.name === 'warmkv-redis'));
  });
});

// Docker HEALTHCHECK: exit 0 when GET /healthz answers 2xx within 2 s, else 1.
// /healthz is liveness (the process answers), not readiness: it stays 200 while the model loads
// and while the server drains, so Docker never restarts a container that is finishing its streams.
// Uses Node's own fetch: the CUDA base image has no curl or wget.
const port = process.env.PORT || '8080';
const url = `http://127.0.0.1:${port}/healthz`;
try {
  const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
  process.exit(response.ok ? 0 : 1);
} catch {
  process.exit(1);
}

/** Liveness, readiness, Prometheus metrics and the model list: what works before the model has loaded. */
import { Hono } from 'hono';
import type { AppEnv, ServerDeps } from '../context.ts';
import { ApiError } from '../errors.ts';

export function healthRoutes({ runtime, now }: ServerDeps): Hono<AppEnv> {
  const routes = new Hono<AppEnv>();

  routes.get('/healthz', (c) => c.json({ status: 'ok' }));

  routes.get('/readyz', (c) => {
    if (runtime.state === 'ready') return c.json({ status: 'ready', model: runtime.serving?.model.id ?? runtime.modelId });
    const kind = runtime.state === 'draining' ? 'shutting_down' : runtime.state === 'failed' ? 'model_failed' : 'model_loading';
    const message = { shutting_down: 'The server is shutting down.', model_failed: 'The model failed to load.', model_loading: 'The model is still loading.' }[kind];
    return new ApiError(kind, message).toResponse(c.get('requestId'));
  });

  routes.get('/metrics', async (c) => {
    const parts = runtime.serving;
    if (!parts) return c.text('# the model is not loaded yet\n', 503, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8' });
    const { contentType, body } = await parts.metrics.render();
    return c.body(body, 200, { 'Content-Type': contentType });
  });

  const modelCard = () => {
    const parts = runtime.serving;
    return {
      id: parts?.model.id ?? runtime.modelId,
      object: 'model',
      created: parts?.model.createdAt ?? Math.floor(now() / 1000),
      owned_by: 'warmkv',
      max_model_len: parts?.model.contextLength ?? null,
      ready: runtime.state === 'ready',
    };
  };

  routes.get('/v1/models', (c) => c.json({ object: 'list', data: [modelCard()] }));
  routes.get('/v1/models/:model{.+}', (c) => {
    const card = modelCard();
    if (c.req.param('model') !== card.id) throw new ApiError('model_not_found', `The model '${c.req.param('model')}' does not exist.`, 'model');
    return c.json(card);
  });

  return routes;
}

/** GET /v1/stats: the KV budget and the engine's load as JSON (what /metrics has, for the playground and scripts). */
import { Hono } from 'hono';
import { ownerOf, servingFor, type AppEnv, type ServerDeps } from '../context.ts';

export function statsRoutes({ runtime }: ServerDeps): Hono<AppEnv> {
  const routes = new Hono<AppEnv>();

  routes.get('/v1/stats', (c) => {
    ownerOf(c);
    const { tiers, engine } = servingFor(runtime, false);
    const budget = tiers.budget;
    const counts = tiers.counts();
    const load = engine.stats();
    return c.json({
      object: 'stats',
      kv_cache: {
        capacity_bytes: budget.capacityBytes,
        reserved_bytes: budget.reservedBytes,
        used_bytes: counts.usedBytes,
        sessions_by_tier: counts.sessions,
        reserved_bytes_by_tier: counts.bytes,
      },
      engine: { running: load.running, waiting: load.waiting, batch_size: load.batchSize },
    });
  });

  return routes;
}

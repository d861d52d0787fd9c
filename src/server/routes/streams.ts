/** Resumable streams: GET replays and follows a stream (Last-Event-ID / ?after), DELETE stops it. */
import { Hono } from 'hono';
import { ownerOf, type AppEnv, type ServerDeps } from '../context.ts';
import { quoteForMessage, streamNotFound } from '../errors.ts';
import { connectionCloser, resumeCursor } from '../streams.ts';

export function streamRoutes({ streams, pingIntervalMs }: ServerDeps): Hono<AppEnv> {
  const routes = new Hono<AppEnv>();

  routes.get('/v1/streams/:id', (c) => {
    const lastEventId = c.req.header('last-event-id');
    const after = resumeCursor(lastEventId, c.req.query('after'));
    const cursorParam = lastEventId !== undefined && lastEventId.trim() !== '' ? 'Last-Event-ID' : 'after';
    return streams.resume(c.req.param('id'), ownerOf(c), after, { pingIntervalMs, closeConnection: connectionCloser(c.env) }, {}, cursorParam);
  });

  routes.delete('/v1/streams/:id', async (c) => {
    const id = c.req.param('id');
    if (!(await streams.cancel(id, ownerOf(c)))) throw streamNotFound(quoteForMessage(id));
    return c.json({ id, object: 'stream.deleted', deleted: true });
  });

  return routes;
}

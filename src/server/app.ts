/**
 * The HTTP API: OpenAI-compatible completions, chat completions and responses with session reuse, the native
 * session API, resumable streams, model listing and health. `createApp` only wires middleware and
 * mounts the routers (routes/); main.ts listens.
 */
import { Hono } from 'hono';
import { methodNotAllowed } from 'hono/method-not-allowed';
import { silentLogger, type Logger } from '../lib/logger.ts';
import type { ServingSource } from '../serving.ts';
import { Admission } from './admission.ts';
import { ApiKeyAuth, loadApiKeys } from './auth.ts';
import type { AppEnv, ServerDeps } from './context.ts';
import { apiKeyAuth, corsFor, errorHandler, methodNotAllowedAnswer, notFound, refuseDotSegments, requestContext } from './middleware.ts';
import { healthRoutes } from './routes/health.ts';
import { openAiRoutes } from './routes/openai.ts';
import { playgroundRoutes } from './routes/playground.ts';
import { BACKGROUND_RESPONSE_STREAM_MS, responseRoutes } from './routes/responses.ts';
import { sessionRoutes } from './routes/sessions.ts';
import { statsRoutes } from './routes/stats.ts';
import { streamRoutes } from './routes/streams.ts';
import { tokenizeRoutes } from './routes/tokenize.ts';
import { SessionRuns } from './session-runs.ts';
import { StreamRegistry } from './streams.ts';

export interface AppOptions {
  logger?: Logger;
  /** Keep-alive comment interval on streams while nothing else is sent. */
  pingIntervalMs?: number;
  now?: () => number;
  /** Resumable streams; by default kept for STREAM_RESUME_SECONDS. main.ts passes its own to close it on shutdown. */
  streams?: StreamRegistry;
  /** API keys; by default read from the config (API_KEYS, API_KEYS_FILE). main.ts passes its own to reload it on SIGHUP. */
  auth?: ApiKeyAuth;
  /** Streams of background responses; main.ts passes its own to close it on shutdown. */
  backgroundStreams?: StreamRegistry;
}

export function createApp(runtime: ServingSource, options: AppOptions = {}): Hono<AppEnv> {
  const config = runtime.config;
  const baseLogger = options.logger ?? runtime.logger ?? silentLogger;
  const auth = options.auth ?? new ApiKeyAuth(loadApiKeys(config));
  if (auth.enabled) baseLogger.info({ keys: auth.size, metricsRequireKey: config.metricsRequireKey }, 'API keys required');
  else baseLogger.warn({}, 'no API keys configured (API_KEYS / API_KEYS_FILE): the server is open to every client that can reach it');
  const deps: ServerDeps = {
    runtime,
    config,
    admission: new Admission(config.maxStreamsPerKey, config.maxSessionsPerKey, config.maxSessionTokens),
    streams: options.streams ?? new StreamRegistry({ resumeMs: config.streamResumeSeconds * 1000, logger: baseLogger.child({ component: 'streams' }) }),
    backgroundStreams: options.backgroundStreams ?? new StreamRegistry({ resumeMs: BACKGROUND_RESPONSE_STREAM_MS, logger: baseLogger.child({ component: 'background-streams' }) }),
    runs: new SessionRuns(),
    pingIntervalMs: options.pingIntervalMs ?? 10_000,
    now: options.now ?? Date.now,
  };

  const app = new Hono<AppEnv>();
  app.use('*', requestContext(baseLogger));
  app.use('*', refuseDotSegments());
  // Off by default: no CORS headers, and OPTIONS is a 405 like any other unknown method.
  if (config.corsOrigins.length > 0) app.use('*', corsFor(config.corsOrigins));
  app.use('*', apiKeyAuth(auth, config.metricsRequireKey, config.playground));
  // A known path with another method: 405 with Allow, from the routes mounted below.
  app.use('*', methodNotAllowed({ app, onMethodNotAllowed: methodNotAllowedAnswer }));
  app.onError(errorHandler(baseLogger, runtime));
  app.notFound(notFound);

  app.route('/', healthRoutes(deps));
  app.route('/', openAiRoutes(deps));
  app.route('/', responseRoutes(deps));
  app.route('/', sessionRoutes(deps));
  app.route('/', streamRoutes(deps));
  app.route('/', tokenizeRoutes(deps));
  app.route('/', statsRoutes(deps));
  if (config.playground) app.route('/', playgroundRoutes());
  return app;
}

/**
 * Entry point: the only reader of process.env and argv. Validates the config, starts listening at
 * once (healthz 200, readyz 503 while the model loads), loads the model, and drains on SIGTERM/SIGINT.
 */
import pino from 'pino';
import { ConfigError, helpText, loadConfig, type Config } from './config.ts';
import type { Logger } from './lib/logger.ts';
import { Runtime } from './runtime.ts';
import { createApp } from './server/app.ts';
import { BACKGROUND_RESPONSE_STREAM_MS } from './server/routes/responses.ts';
import { ApiKeyAuth, loadApiKeys } from './server/auth.ts';
import { listenWith } from './server/listen.ts';
import { StreamRegistry } from './server/streams.ts';
import type { TracingSetup } from './telemetry/otel.ts';

/** pino behind the Logger interface the code uses. */
function fromPino(logger: pino.Logger): Logger {
  return {
    debug: (fields, message) => logger.debug(fields, message),
    info: (fields, message) => logger.info(fields, message),
    warn: (fields, message) => logger.warn(fields, message),
    error: (fields, message) => logger.error(fields, message),
    child: (fields) => fromPino(logger.child(fields)),
  };
}

/**
 * The OpenTelemetry SDK and its OTLP exporter (about 15 MiB of resident memory) are loaded only when the
 * environment names an endpoint, which otlpConfigured needs anyway; without one the API stays a no-op.
 */
async function tracingFor(env: NodeJS.ProcessEnv): Promise<TracingSetup> {
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT && !env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return { enabled: false, shutdown: async () => {} };
  const { otlpConfigured, startTracing } = await import('./telemetry/otel.ts');
  return startTracing({ enabled: otlpConfigured(env), serviceName: 'warmkv', serviceVersion: env.npm_package_version ?? '0.1.0' });
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${helpText()}\n`);
    return;
  }
  let config: Config;
  let auth: ApiKeyAuth;
  try {
    config = loadConfig(process.env, argv);
    auth = new ApiKeyAuth(loadApiKeys(config));
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`warmkv: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }

  const root = pino({ level: config.logLevel, base: { service: 'warmkv' } });
  const logger = fromPino(root);
  const tracing = await tracingFor(process.env);
  if (tracing.enabled) logger.info({ endpoint: process.env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? process.env.OTEL_EXPORTER_OTLP_ENDPOINT }, 'exporting traces over OTLP');
  // The streams belong to the server's API but live as long as the runtime: close() closes both.
  const streams = new StreamRegistry({ resumeMs: config.streamResumeSeconds * 1000, logger: logger.child({ component: 'streams' }) });
  const runtime = new Runtime(config, { logger, streams });
  const backgroundStreams = new StreamRegistry({ resumeMs: BACKGROUND_RESPONSE_STREAM_MS, logger: logger.child({ component: 'background-streams' }) });
  const app = createApp(runtime, { logger, auth, streams, backgroundStreams });
  // SIGHUP re-reads API_KEYS_FILE (API_KEYS stays as started); a file that fails the checks changes nothing.
  process.on('SIGHUP', () => {
    if (config.apiKeysFile === undefined) {
      logger.warn({}, 'SIGHUP: no API_KEYS_FILE to reload');
      return;
    }
    try {
      auth.replace(loadApiKeys(config));
      logger.info({ keys: auth.size }, 'API keys reloaded');
    } catch (error) {
      logger.error({ err: (error as Error).message }, 'API keys not reloaded: keeping the current keys');
    }
  });

  const { server, listening } = listenWith(app, config, { port: config.port, hostname: config.host, logger });
  listening.then(
    (info) => logger.info({ host: info.address, port: info.port, model: config.model, maxConnections: config.maxConnections }, 'listening'),
    (error: NodeJS.ErrnoException) => {
      logger.error({ err: error.message, code: error.code }, 'cannot listen');
      process.exit(1);
    },
  );

  let stopping = false;
  const started = performance.now();
  runtime.ready.then(
    (serving) => {
      const model = serving.model;
      logger.info(
        {
          model: model.id,
          dir: model.loaded.folder.dir,
          executionProvider: serving.engine.model.decoder.executionProvider,
          contextLength: model.contextLength,
          window: model.window,
          chatTemplate: model.chatTemplate.source,
          kvCacheBytes: serving.store.budget.capacityBytes,
          loadMs: Math.round(performance.now() - started),
        },
        'model ready',
      );
      if (model.chatTemplate.compileError) {
        logger.warn({ err: model.chatTemplate.compileError }, "the model's chat template does not compile; using the plain fallback template");
      }
    },
    (error: Error) => {
      // Closed on shutdown while loading: the stop below exits.
      if (stopping) return;
      logger.error({ err: error.message, name: error.name }, 'model failed to load');
      process.stderr.write(`warmkv: cannot serve ${config.model}: ${error.message}\n`);
      server.close();
      process.exit(1);
    },
  );

  const stop = async (signal: string) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal, drainSeconds: config.drainSeconds }, 'draining');
    runtime.markDraining();
    await runtime.drain(config.drainSeconds * 1000);
    const tiers = runtime.serving?.tiers;
    if (tiers?.snapshotsEnabled) {
      const started = performance.now();
      const { written, failed } = await tiers.flushAll();
      logger.info({ written, failed, ms: Math.round(performance.now() - started) }, 'sessions snapshotted');
    }
    // Sweeps, streams and the decoder; the snapshots above were the last use of the sessions.
    await runtime.close().catch((error: Error) => logger.warn({ err: error.message }, 'runtime did not close cleanly'));
    backgroundStreams.close();
    await tracing.shutdown().catch(() => {});
    server.close(() => {
      logger.info({}, 'stopped');
      process.exit(0);
    });
    // Idle keep-alive connections would hold close() open.
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

await main();

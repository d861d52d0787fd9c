/**
 * The Node HTTP server under the app, with the limits that keep slow or idle clients from holding
 * sockets: a time to send the headers, a time to send the whole request (headers and body; Node's
 * requestTimeout ends when the request has been received, so long streamed responses are not cut),
 * an idle keep-alive time, and a connection cap (connections over it are closed at once).
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import type { Hono } from 'hono';
import type { Config } from '../config.ts';
import type { Logger } from '../lib/logger.ts';
import type { AppEnv } from './context.ts';

export type ConnectionLimits = Pick<Config, 'headersTimeoutSeconds' | 'requestTimeoutSeconds' | 'keepAliveTimeoutSeconds' | 'maxConnections'>;

/** Node checks the header and request timeouts on a timer; a tenth of the shorter one (at most 1 s) keeps the bound tight. */
function checkingIntervalMs(headersMs: number, requestMs: number): number {
  const shortest = Math.min(...[headersMs, requestMs].filter((ms) => ms > 0), 10_000);
  return Math.max(10, Math.min(1000, Math.floor(shortest / 10)));
}

export function serverOptions(limits: ConnectionLimits) {
  const headersTimeout = Math.round(limits.headersTimeoutSeconds * 1000);
  const requestTimeout = Math.round(limits.requestTimeoutSeconds * 1000);
  return {
    headersTimeout,
    requestTimeout,
    keepAliveTimeout: Math.round(limits.keepAliveTimeoutSeconds * 1000),
    connectionsCheckingInterval: checkingIntervalMs(headersTimeout, requestTimeout),
  };
}

export interface ListenOptions {
  port: number;
  hostname: string;
  logger: Logger;
}

/** Starts listening with the app: the server at once, and `listening` once bound (rejected if it cannot bind). */
export function listenWith(app: Hono<AppEnv>, limits: ConnectionLimits, options: ListenOptions): { server: Server; listening: Promise<AddressInfo> } {
  let bound!: (address: AddressInfo) => void;
  let failed!: (error: Error) => void;
  const listening = new Promise<AddressInfo>((resolve, reject) => {
    bound = resolve;
    failed = reject;
  });
  const server = serve({ fetch: app.fetch, port: options.port, hostname: options.hostname, serverOptions: serverOptions(limits) }, bound) as Server;
  server.once('error', failed);
  if (limits.maxConnections > 0) server.maxConnections = limits.maxConnections;
  let dropped = 0;
  // Node closes connections over the cap itself; say so, without a line per connection in a flood.
  server.on('drop', () => {
    if (dropped++ % 100 === 0) options.logger.warn({ maxConnections: limits.maxConnections, dropped }, 'connection refused: MAX_CONNECTIONS reached');
  });
  return { server, listening };
}

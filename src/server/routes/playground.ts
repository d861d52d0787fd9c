/**
 * The web playground (docs/playground.md): a static page and its modules, committed under playground/
 * at the repository root and read once when the app is built. No build step: the browser loads the
 * files as they are. Every API call the page makes still goes through the API-key check.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Hono } from 'hono';
import type { AppEnv } from '../context.ts';
import { ApiError } from '../errors.ts';

/** src/server/routes/ and dist/server/routes/ both sit three levels below the folder holding playground/. */
export const PLAYGROUND_DIR = fileURLToPath(new URL('../../../playground/', import.meta.url));

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/** The page loads its own scripts and styles only, and talks to this server only. */
const CONTENT_SECURITY_POLICY =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

interface Asset {
  body: Uint8Array;
  contentType: string;
  etag: string;
}

/** Every file of the folder with a known type, by name. Throws when the folder is missing. */
export function loadAssets(dir: string = PLAYGROUND_DIR): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  for (const name of readdirSync(dir)) {
    const contentType = CONTENT_TYPES[extname(name)];
    if (!contentType) continue;
    const body = readFileSync(join(dir, name));
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
    assets.set(name, { body, contentType, etag });
  }
  if (!assets.has('index.html')) throw new Error(`the playground's index.html is missing from ${dir}`);
  return assets;
}

export function playgroundRoutes(assets: Map<string, Asset> = loadAssets()): Hono<AppEnv> {
  const routes = new Hono<AppEnv>();

  // Revalidated on every load (a 304 when unchanged), so a new server version never runs old modules.
  const answer = (asset: Asset, ifNoneMatch: string | undefined) => {
    const headers: Record<string, string> = {
      'Content-Type': asset.contentType,
      'Cache-Control': 'no-cache',
      ETag: asset.etag,
      'X-Content-Type-Options': 'nosniff',
      'Content-Security-Policy': CONTENT_SECURITY_POLICY,
      'Referrer-Policy': 'no-referrer',
    };
    const matches = ifNoneMatch?.split(',').some((tag) => tag.trim() === asset.etag || tag.trim() === '*');
    if (matches) return new Response(null, { status: 304, headers });
    return new Response(asset.body, { status: 200, headers });
  };

  routes.get('/', (c) => c.redirect('/playground', 302));
  routes.get('/playground', (c) => answer(assets.get('index.html')!, c.req.header('if-none-match')));
  routes.get('/playground/:name', (c) => {
    const asset = assets.get(c.req.param('name'));
    if (!asset || c.req.param('name') === 'index.html') throw new ApiError('not_found', `No playground file ${c.req.param('name')}.`);
    return answer(asset, c.req.header('if-none-match'));
  });

  return routes;
}

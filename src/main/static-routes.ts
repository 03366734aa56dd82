/**
 * The demo page and the browser client bundle (issue 4), mounted when the `demo` option is on (the CLI server's
 * default; off when embedded):
 *
 *   GET /                    the demo page (src/demo/index.html, with the API prefix filled in)
 *   GET /updraft-demo.css    its stylesheet
 *   GET /updraft-demo.js     the page's script (src/demo/app.ts), importing the client from /updraft-client.js
 *   GET /updraft-client.js   the client library (src/client/index.ts) as one ESM file, for any page to import
 *
 * Where the bundles come from: built in memory with esbuild from src/ at attach time (about 0.1-0.3 s) whenever
 * esbuild and the sources are there, which is what `npm start` on a fresh clone, the tests (running from src/
 * through tsx) and development get: the page always matches the source, and no build output can go stale. An
 * install without dev dependencies (no esbuild) serves `dist/browser/` instead, which `npm run build:client` writes
 * (scripts/build-client.ts). Without either, the routes answer 503 with a message saying so.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js';
import type { Logger } from 'pino';
import type { ResolvedOptions } from './options.js';

export interface BrowserAssets {
  html: string;
  css: string;
  client: string;
  demo: string;
}

/** The files a prebuilt `dist/browser/` holds, by route. */
const FILES = {
  html: 'index.html',
  css: 'updraft-demo.css',
  client: 'updraft-client.js',
  demo: 'updraft-demo.js',
} as const satisfies Record<keyof BrowserAssets, string>;

const moduleDir = path.dirname(fileURLToPath(import.meta.url));
/** Running compiled (dist/src/main/static-routes.js) or from source (src/main/static-routes.ts via tsx). */
const compiled = /\.js$/.test(fileURLToPath(import.meta.url));
/** The package root: two levels above src/main, three above dist/src/main. */
export const PACKAGE_ROOT = path.resolve(moduleDir, compiled ? '../../..' : '../..');
export const PREBUILT_DIR = path.join(PACKAGE_ROOT, 'dist', 'browser');

/**
 * Builds the four assets from source with esbuild: one ESM file for the client (msgpackr included, `ws` and
 * `node:*` left out: the client reaches them only in Node, through dynamic imports), and the demo script, whose
 * import of the client is rewritten to `/updraft-client.js` so the page loads the library once.
 */
export async function buildBrowserAssets(root = PACKAGE_ROOT): Promise<BrowserAssets> {
  const esbuild = await import('esbuild');
  const common: import('esbuild').BuildOptions & { write: false } = {
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2022', 'chrome110', 'firefox115', 'safari16'],
    minify: true,
    legalComments: 'none',
    write: false,
    logLevel: 'silent',
    external: ['node:*', 'ws'],
  };
  const [client, demo] = await Promise.all([
    esbuild.build({ ...common, entryPoints: [path.join(root, 'src/client/index.ts')], outfile: FILES.client }),
    esbuild.build({
      ...common,
      entryPoints: [path.join(root, 'src/demo/app.ts')],
      outfile: FILES.demo,
      plugins: [
        {
          name: 'client-from-server',
          setup(b) {
            b.onResolve({ filter: /[\\/]client[\\/]index\.js$/ }, () => ({ path: `/${FILES.client}`, external: true }));
          },
        },
      ],
    }),
  ]);
  const [html, css] = await Promise.all([
    fsp.readFile(path.join(root, 'src/demo/index.html'), 'utf8'),
    fsp.readFile(path.join(root, 'src/demo/style.css'), 'utf8'),
  ]);
  return { html, css, client: client.outputFiles[0]!.text, demo: demo.outputFiles[0]!.text };
}

async function readPrebuilt(dir: string): Promise<BrowserAssets | null> {
  if (!fs.existsSync(path.join(dir, FILES.client))) return null;
  const read = (f: string): Promise<string> => fsp.readFile(path.join(dir, f), 'utf8');
  const [html, css, client, demo] = await Promise.all([read(FILES.html), read(FILES.css), read(FILES.client), read(FILES.demo)]);
  return { html, css, client, demo };
}

export async function writeBrowserAssets(assets: BrowserAssets, dir = PREBUILT_DIR): Promise<void> {
  await fsp.mkdir(dir, { recursive: true });
  for (const [k, f] of Object.entries(FILES)) await fsp.writeFile(path.join(dir, f), assets[k as keyof BrowserAssets]);
}

/** One build per process: several engines in one test process share it. */
let cached: Promise<BrowserAssets> | undefined;

async function loadAssets(log: Logger): Promise<BrowserAssets | null> {
  cached ??= buildBrowserAssets();
  try {
    return await cached;
  } catch (err) {
    cached = undefined;
    const pre = await readPrebuilt(PREBUILT_DIR).catch(() => null);
    if (pre) return pre;
    log.warn({ err }, 'demo page unavailable: no dist/browser build and esbuild could not build it (run npm run build:client)');
    return null;
  }
}

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
  headers: Record<string, string>;
}

function asset(body: string, type: string, headers: Record<string, string> = {}): Asset {
  const buf = Buffer.from(body, 'utf8');
  return { body: buf, type, etag: `"${createHash('sha256').update(buf).digest('base64url').slice(0, 22)}"`, headers };
}

function escapeAttr(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * Registers the routes. Call before the HTTP API's catch-all 404 (registerHttpRoutes) so `/` is not swallowed.
 * Handlers answer synchronously (the bytes are in memory), so no onAborted/cork dance is needed.
 */
export async function registerStaticRoutes(app: TemplatedApp, ctx: { options: ResolvedOptions; log: Logger }): Promise<void> {
  const assets = await loadAssets(ctx.log);
  const endpoint = ctx.options.prefix;
  const routes: Record<string, Asset | null> = assets
    ? {
        '/': asset(assets.html.replaceAll('%UPDRAFT_ENDPOINT%', escapeAttr(endpoint)), 'text/html; charset=utf-8', {
          // Everything the page loads is its own: scripts, styles, and the API (fetch and WebSocket) on this origin.
          'Content-Security-Policy':
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
          'Referrer-Policy': 'no-referrer',
          'X-Frame-Options': 'DENY',
        }),
        [`/${FILES.css}`]: asset(assets.css, 'text/css; charset=utf-8'),
        [`/${FILES.demo}`]: asset(assets.demo, 'text/javascript; charset=utf-8'),
        [`/${FILES.client}`]: asset(assets.client, 'text/javascript; charset=utf-8'),
      }
    : { '/': null, [`/${FILES.css}`]: null, [`/${FILES.demo}`]: null, [`/${FILES.client}`]: null };

  // GET, and HEAD with the same headers and no body (uptime checks, `curl -I`).
  const serve = (a: Asset | null, head: boolean) => (res: HttpResponse, req: HttpRequest): void => {
    const ifNoneMatch = req.getHeader('if-none-match');
    res.cork(() => {
      if (a === null) {
        res.writeStatus('503 Service Unavailable');
        res.writeHeader('Content-Type', 'text/plain; charset=utf-8');
        const message = Buffer.from('The demo page is not built: run "npm run build:client" (or install dev dependencies for esbuild).\n');
        if (head) {
          res.writeHeader('Content-Length', String(message.length));
          res.endWithoutBody();
        } else {
          res.end(message);
        }
        return;
      }
      // RFC 9110 13.1.2: a list of tags, compared weakly (a proxy may have marked ours W/), or `*`.
      const notModified = ifNoneMatch.split(',').some((t) => t.trim() === '*' || t.trim().replace(/^W\//, '') === a.etag);
      res.writeStatus(notModified ? '304 Not Modified' : '200 OK');
      res.writeHeader('ETag', a.etag);
      res.writeHeader('Cache-Control', 'no-cache');
      res.writeHeader('X-Content-Type-Options', 'nosniff');
      if (notModified) {
        res.endWithoutBody();
        return;
      }
      res.writeHeader('Content-Type', a.type);
      for (const [k, v] of Object.entries(a.headers)) res.writeHeader(k, v);
      if (head) {
        // endWithoutBody(length) aborts the process in uWS 20.30 ("returning without responding"); the header works.
        res.writeHeader('Content-Length', String(a.body.length));
        res.endWithoutBody();
      } else {
        res.end(a.body);
      }
    });
  };
  for (const [route, a] of Object.entries(routes)) {
    app.get(route, serve(a, false));
    app.head(route, serve(a, true));
  }
}

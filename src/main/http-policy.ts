/**
 * Per-request policy shared by the HTTP routes: request ids, CORS, and values that are safe to log.
 */
import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import { UploadError } from '../protocol/errors.js';
import type { ResolvedOptions } from './options.js';

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,64}$/;

/** The caller's X-Request-Id when it is short and plain, otherwise a fresh one; echoed on every reply. */
export function requestId(headers: Readonly<Record<string, string>>): string {
  const given = headers['x-request-id'];
  return given !== undefined && REQUEST_ID.test(given) ? given : randomUUID();
}

/**
 * CORS headers for a cross-origin request whose Origin is allowed (`allowedOrigins`, or '*'). Same-origin requests
 * and requests without Origin need none. Credentials (cookies, Authorization from a credentialed fetch) are allowed
 * only with `corsCredentials`, which the options refuse together with '*': the exact (listed) origin is echoed.
 */
export function corsHeaders(o: ResolvedOptions, headers: Readonly<Record<string, string>>): Record<string, string> {
  const origin = headers['origin'];
  if (!origin || origin === 'null') return {};
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return {};
  }
  const listed = o.allowedOrigins.includes(url.origin);
  const wildcard = o.allowedOrigins.includes('*');
  if (!listed && !wildcard) return {};
  const out: Record<string, string> = {
    'Access-Control-Allow-Origin': listed || o.corsCredentials ? url.origin : '*',
    'Access-Control-Expose-Headers': 'Retry-After, X-Request-Id',
    Vary: 'Origin',
  };
  if (o.corsCredentials) out['Access-Control-Allow-Credentials'] = 'true';
  return out;
}

/** Headers answering a CORS preflight (OPTIONS) for an allowed origin. */
export function preflightHeaders(o: ResolvedOptions, headers: Readonly<Record<string, string>>): Record<string, string> | null {
  const base = corsHeaders(o, headers);
  if (!base['Access-Control-Allow-Origin']) return null;
  return {
    ...base,
    'Access-Control-Allow-Methods': 'GET, POST, PUT, DELETE, OPTIONS',
    'Access-Control-Allow-Headers': 'Authorization, Content-Type, Idempotency-Key, X-Request-Id',
    'Access-Control-Max-Age': '600',
  };
}

/** A client-supplied value for a log line: control characters escaped, capped at `max` characters. */
export function logValue(v: unknown, max = 200): string | undefined {
  if (v === undefined || v === null) return undefined;
  const s = String(v);
  // eslint-disable-next-line no-control-regex
  const escaped = s.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return escaped.length > max ? `${escaped.slice(0, max)}…(${escaped.length} chars)` : escaped;
}

/**
 * The Origin check, for WebSocket upgrades and for the HTTP requests that change something (POST, PUT, DELETE): a
 * browser sends its cookies with a cross-site request, so a page elsewhere must not be able to start, feed or cancel
 * uploads with them. No Origin: not a browser, allowed (its credentials are its own). Same origin: allowed, told by
 * the browser's `Sec-Fetch-Site: same-origin` (a header no page can set) or by the Origin's host equalling the Host
 * header (default ports folded). Otherwise the origin must be listed, or the list holds '*'.
 */
export function originAllowed(o: ResolvedOptions, headers: Readonly<Record<string, string>>, rebindingRule = true): boolean {
  const origin = headers['origin'];
  if (origin === undefined || origin === '') return true;
  if (o.allowedOrigins.includes('*')) return true;
  // Without any authentication, a page counts as this server's own only on an address or localhost: a DNS name can
  // be made to resolve to this server (DNS rebinding), and the browser then calls the attacker's page same-origin.
  // Names are allowed by listing their origin. With tokens, such a page has no credentials to send.
  const anonymous = rebindingRule && o.tokens.size === 0 && o.authenticate === undefined;
  const trustedHost = (): boolean => !anonymous || addressOrLocalhost(headers['host']);
  if (headers['sec-fetch-site'] === 'same-origin' && trustedHost()) return true;
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return false; // includes the opaque origin "null" (sandboxed frames, file: pages)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return false;
  if (o.allowedOrigins.includes(url.origin)) return true;
  const host = headers['host'];
  if (host === undefined || host === '') return false;
  let own: URL;
  try {
    own = new URL(`${url.protocol}//${host}`);
  } catch {
    return false;
  }
  // Both URLs use the Origin's scheme, so an omitted default port compares equal to an explicit one.
  return own.host === url.host && own.username === '' && own.pathname === '/' && trustedHost();
}

/** The Host header names an IP address or localhost (`localhost`, `*.localhost`), with or without a port. */
function addressOrLocalhost(host: string | undefined): boolean {
  if (host === undefined || host === '') return false;
  let name: string;
  try {
    name = new URL(`http://${host}`).hostname;
  } catch {
    return false;
  }
  if (name.startsWith('[') && name.endsWith(']')) return isIP(name.slice(1, -1)) === 6;
  return isIP(name) !== 0 || name === 'localhost' || name.endsWith('.localhost');
}

/**
 * The refusal for a request originAllowed refuses, or null. A page refused only by the DNS-rebinding rule (its own
 * server, under a name, without tokens) is told how to allow it: the operator reads the message in the browser.
 */
export function originRefusal(o: ResolvedOptions, headers: Readonly<Record<string, string>>): UploadError | null {
  if (originAllowed(o, headers)) return null;
  if (!originAllowed(o, headers, false)) return new UploadError('ERR_FORBIDDEN_ORIGIN');
  return new UploadError(
    'ERR_FORBIDDEN_ORIGIN',
    `Origin not allowed: a server without tokens takes a page as its own only on an IP address or localhost; allow ${logValue(headers['origin'] ?? '')} with --allowed-origin (allowedOrigins)`,
  );
}

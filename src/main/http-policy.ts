/**
 * Per-request policy shared by the HTTP routes: request ids, CORS, and values that are safe to log.
 */
import { randomUUID } from 'node:crypto';
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
    'Access-Control-Allow-Headers': 'Authorization, Content-Type, X-Request-Id',
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

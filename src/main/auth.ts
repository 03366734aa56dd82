/**
 * Who is calling. `Authorization: Bearer <token>` mapped to a user by the `tokens` option, or the embedder's
 * `authenticate` hook; with neither configured, everyone is the user `anonymous` (the engine says so at start).
 * WebSocket upgrades may also carry the token as `?token=` or a `bearer.<token>` subprotocol entry, because browsers
 * cannot set headers on a WebSocket; the transport passes what it found as `extraToken`.
 */
import { timingSafeEqual } from 'node:crypto';
import { UploadError } from '../protocol/errors.js';
import type { AuthRequest, ResolvedOptions } from './options.js';

export const ANONYMOUS = 'anonymous';

export function authMode(o: ResolvedOptions): 'hook' | 'tokens' | 'anonymous' {
  if (o.authenticate) return 'hook';
  return o.tokens.size > 0 ? 'tokens' : 'anonymous';
}

export function bearer(header: string | undefined): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return m?.[1];
}

/** `given` equals `want`, compared in constant time for strings of the same length (a token's bytes do not leak). */
export function sameSecret(want: string, given: string | undefined): boolean {
  if (given === undefined) return false;
  const a = Buffer.from(want);
  const b = Buffer.from(given);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Compares in constant time with every configured token (a Map lookup would leak timing on the token bytes). */
function userForToken(o: ResolvedOptions, token: string): string | null {
  const given = Buffer.from(token);
  let found: string | null = null;
  for (const [t, user] of o.tokens) {
    const want = Buffer.from(t);
    if (want.length === given.length && timingSafeEqual(want, given)) found = user;
  }
  return found;
}

/** Resolves the user name, or throws ERR_UNAUTHORIZED. */
export async function authenticate(o: ResolvedOptions, req: AuthRequest, extraToken?: string): Promise<string> {
  if (o.authenticate) {
    const user = await o.authenticate(req);
    if (typeof user !== 'string' || user === '') throw new UploadError('ERR_UNAUTHORIZED');
    return user;
  }
  if (o.tokens.size === 0) return ANONYMOUS;
  const token = bearer(req.headers['authorization']) ?? extraToken;
  const user = token === undefined ? null : userForToken(o, token);
  if (user === null) throw new UploadError('ERR_UNAUTHORIZED');
  return user;
}

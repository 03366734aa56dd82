/**
 * The one place HTTP results and errors become bytes (STYLE.md "Errors"): cork -> status -> headers -> end.
 * An unknown error becomes ERR_INTERNAL, is logged once with its stack, and never leaks a server path.
 */
import type { HttpResponse } from 'uWebSockets.js';
import type { Logger } from 'pino';
import { UploadError, envelopeStatusFor } from '../protocol/errors.js';
import type { Envelope } from '../protocol/errors.js';

const REASONS: Record<number, string> = {
  200: 'OK',
  204: 'No Content',
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  410: 'Gone',
  413: 'Payload Too Large',
  422: 'Unprocessable Entity',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
  507: 'Insufficient Storage',
};

/** Per-request flags: uWS forbids touching a response after it was aborted or ended. */
export interface ResponseState {
  aborted: boolean;
  done: boolean;
  /** Extra headers for every reply of this request (CORS, request id). */
  headers?: Record<string, string>;
  /**
   * The request is paused (res.pause). A paused socket stays paused for the next request on the same keep-alive
   * connection, and a response is invalid after end(), so the reply resumes it first.
   */
  paused?: boolean;
  /** The request's id, for log lines. */
  requestId?: string;
  /** Told the code of every error reply (metrics). */
  onError?: (code: string) => void;
  /** A HEAD request: replies carry the headers a GET would get (Content-Length too) and no body. */
  head?: boolean;
}

export function sendJson(
  res: HttpResponse,
  st: ResponseState,
  status: number,
  body: Envelope<unknown>,
  extraHeaders?: Record<string, string>,
  closeConnection = false,
): void {
  if (st.aborted || st.done) return;
  st.done = true;
  const payload = JSON.stringify(body);
  res.cork(() => {
    if (st.paused) {
      st.paused = false;
      res.resume();
    }
    res.writeStatus(`${status} ${REASONS[status] ?? 'Unknown'}`);
    res.writeHeader('Content-Type', 'application/json; charset=utf-8');
    res.writeHeader('Cache-Control', 'no-store');
    res.writeHeader('X-Content-Type-Options', 'nosniff');
    if (st.headers) for (const [k, v] of Object.entries(st.headers)) res.writeHeader(k, v);
    if (extraHeaders) for (const [k, v] of Object.entries(extraHeaders)) res.writeHeader(k, v);
    if (st.head) {
      // A body after a HEAD reply would be read as the start of the next response on a keep-alive connection.
      // The header, written by hand, is what a GET would get: in uWS 20.30 endWithoutBody(length) aborts the process
      // and endWithoutBody(undefined, close) writes a second, bogus Content-Length. A HEAD has no body to refuse, so
      // the connection can stay open.
      res.writeHeader('Content-Length', String(Buffer.byteLength(payload)));
      res.endWithoutBody();
    } else {
      res.end(payload, closeConnection);
    }
  });
}

export function sendSuccess(res: HttpResponse, st: ResponseState, message: string, data?: unknown): void {
  const body: Envelope<unknown> = { status: 'success', message };
  if (data !== undefined) body.data = data;
  sendJson(res, st, 200, body);
}

/** Turns any error into its catalogue reply. */
export function toUploadError(err: unknown, log: Logger, requestId?: string): UploadError {
  if (err instanceof UploadError) return err;
  log.error({ err, reqId: requestId }, 'internal error');
  return new UploadError('ERR_INTERNAL');
}

export function sendError(res: HttpResponse, st: ResponseState, err: unknown, log: Logger, closeConnection = false): void {
  const e = toUploadError(err, log, st.requestId);
  // Counted only when a reply goes out (not for a request whose client is gone, or one already answered).
  if (!st.aborted && !st.done) st.onError?.(e.code);
  if (e.status >= 500) log.warn({ reqId: st.requestId, code: e.code, status: e.status }, e.message);
  else log.debug({ reqId: st.requestId, code: e.code, status: e.status }, e.message);
  const headers: Record<string, string> = {};
  if (e.retryable && (e.status === 429 || e.status === 503 || e.code === 'ERR_CHUNK_BUSY')) headers['Retry-After'] = '1';
  if (e.code === 'ERR_METHOD_NOT_ALLOWED' && e.details?.allow) headers['Allow'] = String(e.details.allow);
  const body: Envelope<unknown> = { status: envelopeStatusFor(e.status), message: e.message, code: e.code };
  const data: Record<string, unknown> = { retryable: e.retryable };
  if (e.details) for (const [k, v] of Object.entries(e.details)) if (k !== 'allow') data[k] = v;
  body.data = data;
  sendJson(res, st, e.status, body, headers, closeConnection);
}

/**
 * The HTTP side of the client: init, status, chunk PUT and cancel against `<endpoint>/upload-chunk` and
 * `<endpoint>/upload-status`, every reply read as the JSON envelope {status, message, code?, data}.
 *
 * Retry rule (issue 4): no reply at all (network error), 5xx and 429 are retried with backoff, honouring
 * Retry-After; so are the few 4xx codes the catalogue marks retryable (ERR_CHUNK_BUSY and ERR_UPLOAD_FINALIZING come
 * with a 409 but say "try again shortly"). Every other 4xx fails at once with the server's code and message.
 */
import type { Envelope } from '../protocol/errors.js';
import type { InitReplyData, StatusData } from '../protocol/messages.js';
import { ClientError } from './errors.js';
import { backoffDelay, parseRetryAfter, sleep } from './retry.js';
import type { RetryPolicy } from './retry.js';

/** A retry about to happen: what failed and how long the client waits. */
export interface RetryEvent {
  /** What was being done: 'init', 'status', 'chunk 12', 'cancel', 'websocket'. */
  operation: string;
  /** 1 for the first retry. */
  attempt: number;
  delayMs: number;
  error: ClientError;
}

export interface HttpApiOptions {
  endpoint: URL;
  token: string | undefined;
  retry: RetryPolicy;
  onRetry: (e: RetryEvent) => void;
}

/** The reply data of init, plus what a 0-byte upload's init reply adds (it completes at once). */
export interface InitResult extends InitReplyData {
  complete?: boolean;
  finalName?: string;
}

/** `data` of a chunk PUT reply: counters, and on the completing (or a later, duplicate) reply the final name. */
export interface ChunkPutResult {
  chunkNumber: number;
  receivedChunks: number;
  totalChunks: number;
  receivedBytes: number;
  complete: boolean;
  fileName?: string;
  size?: number;
}

export interface InitFields {
  fileName: string;
  fileSize: number;
  chunkSize?: number;
  targetPath?: string;
  uploadMethod?: string;
  fingerprint?: string;
}

/**
 * 128 random bits in hex, an init's `Idempotency-Key`. `crypto.getRandomValues` works in every browser context
 * (`randomUUID` only in secure ones, and a demo served over plain http on a LAN address is not one).
 */
export function newIdempotencyKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function isAbort(e: unknown, signal: AbortSignal): boolean {
  return signal.aborted || (e instanceof Error && e.name === 'AbortError');
}

export class HttpApi {
  readonly #o: HttpApiOptions;
  readonly #chunkUrl: string;
  readonly #statusUrl: string;

  constructor(o: HttpApiOptions) {
    this.#o = o;
    const base = o.endpoint.href.replace(/\/+$/, '');
    this.#chunkUrl = `${base}/upload-chunk`;
    this.#statusUrl = `${base}/upload-status`;
  }

  /**
   * `signal` aborts the request itself; `retriesUntil`, when given, only stops further attempts (and the wait
   * before one), so a request already sent can still bring its reply back.
   */
  init(fields: InitFields, signal: AbortSignal, retriesUntil?: AbortSignal): Promise<InitResult> {
    // One key for every attempt of this init: when an attempt's reply is lost (a reset after the server acted), the
    // retry gets the upload that attempt made instead of a second one holding the same space until it expires.
    const headers = { 'idempotency-key': newIdempotencyKey() };
    return this.#request<InitResult>('init', 'POST', this.#chunkUrl, { action: 'init', ...fields }, signal, retriesUntil, headers);
  }

  status(guid: string, signal: AbortSignal): Promise<StatusData> {
    return this.#request<StatusData>('status', 'GET', `${this.#statusUrl}?guid=${encodeURIComponent(guid)}`, undefined, signal);
  }

  /** PUT one chunk as the raw body (`?chunk=N`). `body` is a Blob slice in browsers (streamed by the browser). */
  putChunk(guid: string, chunk: number, body: Blob | Uint8Array, signal: AbortSignal): Promise<ChunkPutResult> {
    const url = `${this.#chunkUrl}?guid=${encodeURIComponent(guid)}&chunk=${chunk}`;
    return this.#request<ChunkPutResult>(`chunk ${chunk}`, 'PUT', url, body, signal);
  }

  cancel(guid: string, signal: AbortSignal): Promise<unknown> {
    // DELETE ?guid= rather than POST {action:"cancel"}: the guid in the URL lets a proxy route the request to the
    // instance that owns the upload (scale-out, docs/OPERATIONS.md).
    return this.#request('cancel', 'DELETE', `${this.#chunkUrl}?guid=${encodeURIComponent(guid)}`, undefined, signal);
  }

  async #request<T>(operation: string, method: string, url: string, body: unknown, signal: AbortSignal, retriesUntil?: AbortSignal, headers?: Record<string, string>): Promise<T> {
    const { retry } = this.#o;
    for (let attempt = 0; ; attempt++) {
      let error: ClientError;
      let retryAfterMs: number | undefined;
      try {
        return await this.#once<T>(method, url, body, signal, headers);
      } catch (e) {
        if (isAbort(e, signal)) throw signal.reason ?? e;
        if (!(e instanceof RetryableReply) && !(e instanceof ClientError)) {
          // fetch rejects with a TypeError for every network-level failure (refused, reset, DNS).
          error = new ClientError('ERR_NETWORK', `${operation}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
        } else if (e instanceof RetryableReply) {
          error = e.error;
          retryAfterMs = e.retryAfterMs;
          // A cancel refused because the file is being placed (or is) will be refused again: that is the answer.
          if (operation === 'cancel' && error.code === 'ERR_UPLOAD_FINALIZING') throw error;
        } else {
          throw e; // a definitive 4xx
        }
      }
      if (attempt >= retry.attempts) throw error;
      if (retriesUntil?.aborted) throw retriesUntil.reason ?? error;
      const delayMs = backoffDelay(retry, attempt + 1, retryAfterMs);
      this.#o.onRetry({ operation, attempt: attempt + 1, delayMs, error });
      await sleep(delayMs, retriesUntil ?? signal);
    }
  }

  async #once<T>(method: string, url: string, body: unknown, signal: AbortSignal, extraHeaders?: Record<string, string>): Promise<T> {
    const headers: Record<string, string> = { ...extraHeaders };
    if (this.#o.token !== undefined) headers['authorization'] = `Bearer ${this.#o.token}`;
    let payload: BodyInit | undefined;
    if (body instanceof Uint8Array || (typeof Blob !== 'undefined' && body instanceof Blob)) {
      headers['content-type'] = 'application/octet-stream';
      payload = body as BodyInit;
    } else if (body !== undefined) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const res = await fetch(url, { method, headers, body: payload ?? null, signal });
    const text = await res.text();
    let env: Envelope<unknown> | undefined;
    try {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed === 'object' && parsed !== null && typeof (parsed as Envelope).status === 'string') {
        env = parsed as Envelope<unknown>;
      }
    } catch {
      env = undefined;
    }
    if (res.ok && env?.status === 'success') return (env.data ?? {}) as T;

    const retryAfterMs = parseRetryAfter(res.headers.get('retry-after'));
    const code = env?.code ?? (res.status >= 500 ? 'ERR_INTERNAL' : 'ERR_PROTOCOL');
    const message = env?.message ?? `HTTP ${res.status} ${res.statusText}`.trim();
    const retryable = (env?.data as { retryable?: unknown } | undefined)?.retryable;
    // The server's flag, when it sent one, is what the caller is told too (the catalogue's default otherwise): a
    // completion refused with ERR_SERVER_BUSY is final, and resuming that upload cannot succeed.
    const error = new ClientError(code, message, { status: res.status, ...(typeof retryable === 'boolean' ? { retryable } : {}) });
    // The server's own word wins: a 5xx it marks `retryable: false` (a refused completion, no disk space) fails at
    // once with its code; asking again would only hear that the upload has failed. A 5xx or 429 without an envelope
    // (a proxy's 502) is retried.
    if (retryable === false) throw error;
    if (res.status >= 500 || res.status === 429 || (retryable === true && isTransient4xx(code))) {
      throw new RetryableReply(error, retryAfterMs);
    }
    throw error;
  }
}

/** 4xx codes that mean "the same request shortly will work", not "your request is wrong". */
function isTransient4xx(code: string): boolean {
  return code === 'ERR_CHUNK_BUSY' || code === 'ERR_UPLOAD_FINALIZING' || code === 'ERR_CHUNK_INCOMPLETE';
}

class RetryableReply extends Error {
  constructor(
    readonly error: ClientError,
    readonly retryAfterMs: number | undefined,
  ) {
    super(error.message);
  }
}

/**
 * The client's one error type. A failed upload rejects `done` with a `ClientError` whose `code` is either the
 * server's catalogue code (src/protocol/errors.ts, taken verbatim from the HTTP envelope or the updraft.v1 `error`
 * message) or one of the client-side codes below, for failures that never reached a server reply.
 *
 * Callers branch on `code`, never on `message`.
 */
import { ERRORS } from '../protocol/errors.js';
import type { ErrorCode } from '../protocol/errors.js';

/** Failures the client detects itself; each has a fixed meaning and says whether trying again later can help. */
export const CLIENT_ERRORS = {
  /** The caller's AbortSignal fired. The upload is left on the server and can be resumed with its guid. */
  ERR_ABORTED: { message: 'Upload aborted by the caller; resume it with its guid', retryable: true },
  /** Network failures (no HTTP reply at all) went on after every retry. */
  ERR_NETWORK: { message: 'The server could not be reached', retryable: true },
  /** `transport: 'websocket'` and the WebSocket failed to connect or kept dropping, after every retry. */
  ERR_WEBSOCKET_FAILED: { message: 'The WebSocket could not connect or kept dropping', retryable: true },
  /** The server answered something this client cannot read (not the JSON envelope, a malformed frame). */
  ERR_PROTOCOL: { message: 'The server sent a reply this client does not understand', retryable: false },
  /** `guid` names an upload of another size or layout than the source, or one started from another file (fingerprint). */
  ERR_RESUME_MISMATCH: { message: 'The upload to resume does not match this file', retryable: false },
  /** The source cannot be read (wrong type, a path in a browser, a read error). */
  ERR_SOURCE: { message: 'The source cannot be read', retryable: false },
  /**
   * Every chunk is stored, but polling upload-status did not find the file in place within `finalizeTimeoutMs` (its
   * final sync, the move, an onUploadComplete hook). The upload stays on the server: sending the same file again with
   * its guid (a browser resumes by itself) picks up the completion.
   */
  ERR_FINALIZE_TIMEOUT: { message: 'The server did not report the file in place in time; upload it again with its guid to pick up the completion', retryable: true },
  /** A checksum was asked for and WebCrypto (`crypto.subtle`) is missing (a browser page not on https or localhost). */
  ERR_CHECKSUM_UNAVAILABLE: { message: 'crypto.subtle is not available for checksums', retryable: false },
} as const;

export type ClientOnlyErrorCode = keyof typeof CLIENT_ERRORS;

/** Every code `ClientError.code` can hold from this version of client and server. */
export type ClientErrorCode = ErrorCode | ClientOnlyErrorCode;

export const CLIENT_ERROR_CODES = Object.keys(CLIENT_ERRORS) as ClientOnlyErrorCode[];

export interface ClientErrorInit {
  /** HTTP status of the reply that failed, when there was one. */
  status?: number;
  /** The upload's guid, once the server created it (pass it back as `guid` to resume, in Node). */
  guid?: string;
  cause?: unknown;
  retryable?: boolean;
}

export class ClientError extends Error {
  /** A catalogue code (typed as string too: a newer server may send codes this client does not list). */
  readonly code: ClientErrorCode | (string & {});
  readonly status: number | undefined;
  /** True when the same upload can succeed later (resume it). */
  readonly retryable: boolean;
  guid: string | undefined;

  constructor(code: ClientErrorCode | (string & {}), message?: string, init: ClientErrorInit = {}) {
    super(message ?? defaultMessage(code), init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'ClientError';
    this.code = code;
    this.status = init.status;
    this.retryable = init.retryable ?? defaultRetryable(code);
    this.guid = init.guid;
  }
}

function defaultMessage(code: string): string {
  if (Object.hasOwn(CLIENT_ERRORS, code)) return CLIENT_ERRORS[code as ClientOnlyErrorCode].message;
  if (Object.hasOwn(ERRORS, code)) return ERRORS[code as ErrorCode].message;
  return code;
}

function defaultRetryable(code: string): boolean {
  if (Object.hasOwn(CLIENT_ERRORS, code)) return CLIENT_ERRORS[code as ClientOnlyErrorCode].retryable;
  if (Object.hasOwn(ERRORS, code)) return ERRORS[code as ErrorCode].retryable;
  return false;
}

export function isClientError(e: unknown): e is ClientError {
  return e instanceof ClientError;
}

/**
 * The one catalogue of errors a client or caller can cause (STYLE.md "Errors").
 *
 * Every code is stable: clients branch on `code`, never on `message`. The HTTP status, the default message and
 * whether a retry can help live here and nowhere else; `respond.ts` (HTTP) and the WebSocket sessions turn an
 * `UploadError` into bytes, and docs/PROTOCOL.md lists the same table (a test keeps them in step).
 *
 * This module is imported by the browser client too: no `node:*` imports.
 */

export interface ErrorSpec {
  /** HTTP status used when the error ends an HTTP request. */
  readonly status: number;
  /** Envelope status: "fail" for the client's fault (4xx), "error" for the server's (5xx). */
  readonly message: string;
  /** True when sending the same request again later can succeed. */
  readonly retryable: boolean;
}

export const ERRORS = {
  // --- request shape -------------------------------------------------------------------------------------------
  ERR_INVALID_JSON: { status: 400, message: 'Request body is not valid JSON', retryable: false },
  ERR_BAD_REQUEST: { status: 400, message: 'The request is malformed', retryable: false },
  ERR_BODY_TOO_LARGE: { status: 413, message: 'Request body is too large', retryable: false },
  ERR_UNKNOWN_ACTION: { status: 400, message: 'Unknown action', retryable: false },
  ERR_INVALID_FIELD: { status: 400, message: 'A field is missing or has an invalid value', retryable: false },
  ERR_METHOD_NOT_ALLOWED: { status: 405, message: 'Method not allowed on this route', retryable: false },
  ERR_NOT_FOUND: { status: 404, message: 'No such route', retryable: false },

  // --- authentication ------------------------------------------------------------------------------------------
  ERR_UNAUTHORIZED: { status: 401, message: 'Authentication required', retryable: false },
  ERR_FORBIDDEN_ORIGIN: { status: 403, message: 'Origin not allowed', retryable: false },

  // --- names and places ----------------------------------------------------------------------------------------
  ERR_INVALID_FILE_NAME: { status: 400, message: 'Invalid file name', retryable: false },
  ERR_INVALID_TARGET_PATH: { status: 400, message: 'Invalid target path', retryable: false },
  ERR_FILE_EXISTS: { status: 409, message: 'A file with that name already exists in the target folder', retryable: false },

  // --- sizes -----------------------------------------------------------------------------------------------------
  ERR_INVALID_FILE_SIZE: { status: 400, message: 'fileSize must be a non-negative safe integer', retryable: false },
  ERR_FILE_TOO_LARGE: { status: 413, message: 'File is larger than the server accepts', retryable: false },
  ERR_INVALID_CHUNK_SIZE: { status: 400, message: 'chunkSize is out of range', retryable: false },
  ERR_TOTAL_CHUNKS_MISMATCH: { status: 400, message: 'totalChunks does not equal ceil(fileSize / chunkSize)', retryable: false },
  ERR_TOO_MANY_CHUNKS: { status: 400, message: 'The upload would have too many chunks; use a larger chunkSize', retryable: false },
  ERR_INSUFFICIENT_STORAGE: { status: 507, message: 'Not enough free disk space for this upload', retryable: false },

  // --- uploads ---------------------------------------------------------------------------------------------------
  ERR_UPLOAD_NOT_FOUND: { status: 404, message: 'Upload not found', retryable: false },
  ERR_UPLOAD_EXPIRED: { status: 410, message: 'Upload expired', retryable: false },
  ERR_UPLOAD_CANCELLED: { status: 410, message: 'Upload was cancelled', retryable: false },
  ERR_UPLOAD_FAILED: { status: 409, message: 'Upload has failed and accepts no more chunks', retryable: false },
  ERR_UPLOAD_FINALIZING: { status: 409, message: 'Upload is being finalized', retryable: true },
  ERR_UPLOAD_REFUSED: { status: 403, message: 'The server refused this upload', retryable: false },
  ERR_MISSING_GUID: { status: 400, message: 'Missing guid', retryable: false },
  ERR_IDEMPOTENCY_KEY_REUSED: { status: 422, message: 'This Idempotency-Key was sent with a different init request', retryable: false },

  // --- chunks ----------------------------------------------------------------------------------------------------
  ERR_INVALID_CHUNK_NUMBER: { status: 400, message: 'Chunk number must be a non-negative integer', retryable: false },
  ERR_CHUNK_OUT_OF_RANGE: { status: 400, message: 'Chunk number is past the last chunk', retryable: false },
  ERR_CHUNK_TOO_LARGE: { status: 413, message: 'Chunk body is longer than that chunk', retryable: false },
  ERR_CHUNK_TOO_SMALL: { status: 400, message: 'Chunk body is shorter than that chunk', retryable: false },
  ERR_CHUNK_HEADER_INVALID: { status: 400, message: 'Chunk header is missing or malformed', retryable: false },
  ERR_CHUNK_BUSY: { status: 409, message: 'Another request is writing this chunk; retry later', retryable: true },
  ERR_CHECKSUM_MISMATCH: { status: 422, message: 'Chunk checksum does not match its bytes', retryable: true },
  ERR_CHUNK_INCOMPLETE: { status: 400, message: 'The chunk did not arrive whole: its connection ended or its bytes stopped coming', retryable: true },
  ERR_WINDOW_EXCEEDED: { status: 400, message: 'More chunks in flight on this connection than its window allows', retryable: false },

  // --- limits ----------------------------------------------------------------------------------------------------
  ERR_RATE_LIMITED: { status: 429, message: 'Too many concurrent requests for this user', retryable: true },
  ERR_SERVER_BUSY: { status: 503, message: 'Server is at capacity; retry later', retryable: true },
  ERR_SHUTTING_DOWN: { status: 503, message: 'Server is shutting down; retry shortly', retryable: true },

  // --- server side -----------------------------------------------------------------------------------------------
  ERR_STORAGE_FAILED: { status: 500, message: 'Writing to storage failed; the upload cannot continue', retryable: false },
  ERR_HOOK_FAILED: { status: 500, message: 'The server refused to complete the upload', retryable: false },
  ERR_INTERNAL: { status: 500, message: 'Internal server error', retryable: true },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export const ERROR_CODES = Object.keys(ERRORS) as ErrorCode[];

/**
 * A typed error a client or caller can cause. `message` defaults to the catalogue's; a more specific message may be
 * given (it must never contain a server path).
 */
export class UploadError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly retryable: boolean;
  /** Extra fields sent to the client in `data` (never paths). */
  readonly details?: Record<string, unknown>;

  /** `retryable`: overrides the catalogue's flag (a failed upload's error is final whatever its code). */
  constructor(code: ErrorCode, message?: string, details?: Record<string, unknown>, retryable?: boolean) {
    const spec: ErrorSpec = ERRORS[code];
    super(message ?? spec.message);
    this.name = 'UploadError';
    this.code = code;
    this.status = spec.status;
    this.retryable = retryable ?? spec.retryable;
    if (details !== undefined) this.details = details;
  }
}

export function isUploadError(e: unknown): e is UploadError {
  return e instanceof UploadError;
}

/** The JSON envelope of every HTTP reply (PSWebHost compatible). */
export interface Envelope<T = Record<string, unknown>> {
  status: 'success' | 'fail' | 'error';
  message: string;
  code?: ErrorCode;
  data?: T;
}

export function envelopeStatusFor(httpStatus: number): 'fail' | 'error' {
  return httpStatus >= 500 ? 'error' : 'fail';
}

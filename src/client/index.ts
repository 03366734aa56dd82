/**
 * Updraft's client for browsers and Node (`updraft/client`; the browser bundle `/updraft-client.js` is this file).
 * It does the chunking, the WebSocket-first transport with PUT fallback, retries, resume and progress, so callers
 * never do (issue 4). Imports only src/protocol, so it runs wherever `fetch` and WebSocket do.
 */
export { upload, UploadHandle } from './upload.js';
export type { TransportEvent, TransportMode, UploadEvents, UploadOptions, UploadResult } from './upload.js';
export type { UploadProgress, UploadState } from './progress.js';
export type { BytesByTransport, TransportName } from './plan.js';
export type { RetryEvent } from './http.js';
export type { RetryOptions } from './retry.js';
export type { UploadSource } from './source.js';
export { listResumable } from './resume-store.js';
export type { ResumableUpload } from './resume-store.js';
export { ClientError, CLIENT_ERRORS, CLIENT_ERROR_CODES, isClientError } from './errors.js';
export type { ClientErrorCode, ClientOnlyErrorCode } from './errors.js';
export { ERRORS, ERROR_CODES } from '../protocol/errors.js';
export type { ErrorCode } from '../protocol/errors.js';

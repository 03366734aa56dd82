/**
 * Every message Updraft puts on the wire, as TypeScript types (docs/PROTOCOL.md is the prose for the same shapes).
 *
 * Three transports share these:
 *   - HTTP: JSON bodies in and the PSWebHost-compatible `Envelope` out (errors.ts); the `*Data` types are its `data`.
 *   - WebSocket, native protocol `updraft.v1`: binary frames of a msgpack header plus payload (codec.ts encodes them).
 *     The keys of messages sent once per chunk (`chunk`, `ack`, `progress`) are one or two letters because they cross
 *     the wire for every chunk; the once-per-connection ones (`hello`, `complete`, `error`) keep readable names.
 *   - WebSocket, PSWebHost compatible: JSON text frames (`Ps*` types below) followed by raw binary chunk frames.
 *
 * Pure types and constants: no `node:*`, nothing of ours outside src/protocol (the browser client imports this).
 */

import { ERRORS, type ErrorCode, type Envelope } from './errors.js';

// --- HTTP ----------------------------------------------------------------------------------------------------------

/** POST body that starts an upload (PSWebHost `action: "init"`); parsed and checked by `parseInitRequest`. */
export interface InitRequestBody {
  action: 'init';
  fileName: string;
  /** A number; a string of decimal digits is accepted too (see validate.ts). */
  fileSize: number | string;
  /** Optional: the server's default applies when absent. */
  chunkSize?: number | string;
  /** Optional: when sent it must equal ceil(fileSize / chunkSize). */
  totalChunks?: number | string;
  /** Root-relative folder, '/'-separated; '' or '/' or absent is the upload root. */
  targetPath?: string;
  /** Informational label of the client's transport (e.g. 'websocket', 'put'); at most 32 printable ASCII chars. */
  uploadMethod?: string;
  /**
   * Optional: the client's identity of its source (the Updraft client sends `<size>:<modified ms>`), at most 128
   * printable ASCII characters. The server only stores it and returns it in status, so a client resuming by guid can
   * tell whether the upload was started from the same file.
   */
  fingerprint?: string;
}

/** POST body that cancels an upload (PSWebHost `action: "cancel"`). */
export interface CancelRequestBody {
  action: 'cancel';
  guid: string;
}

/** `data` of the reply to init. */
export interface InitReplyData {
  guid: string;
  /** Where to PUT chunks (and upgrade to a WebSocket): a path on this server that carries the guid. */
  uploadUrl: string;
  fileName: string;
  fileSize: number;
  chunkSize: number;
  totalChunks: number;
}

/** `data` of the reply to a chunk PUT that did not complete the upload. */
export interface ChunkReplyData {
  chunkNumber: number;
  receivedChunks: number;
  totalChunks: number;
  receivedBytes: number;
  /** False here; the reply that completes the upload carries `CompletionData` instead. */
  complete: boolean;
}

/** `data` of the reply that reports a finished upload (only after the file is durable under its final name). */
export interface CompletionData {
  /** The final name, which may differ from the requested one when the server renames on conflict. */
  fileName: string;
  size: number;
  complete: true;
  guid: string;
  /** Root-relative folder of the file, `/`-separated without a leading `/`: 'a/b', or '' for the root. */
  targetPath: string;
}

/** The envelopes of the HTTP replies (`Envelope` is in errors.ts, shared with error replies). */
export type InitReply = Envelope<InitReplyData>;
export type ChunkReply = Envelope<ChunkReplyData | CompletionData>;
export type StatusReply = Envelope<StatusData>;

export type UploadStatus = 'active' | 'completed' | 'cancelled' | 'failed';

/** `data` of the status reply (GET status / resume). */
export interface StatusData {
  guid: string;
  fileName: string;
  fileSize: number;
  chunkSize: number;
  totalChunks: number;
  receivedChunks: number;
  receivedBytes: number;
  /** Chunk numbers not yet received, ascending. */
  missingChunks: number[];
  uploadStatus: UploadStatus;
  /** Unix times in milliseconds. */
  startTime: number;
  lastActivityTime: number;
  /** Set once completed: the name the file got (it may differ from `fileName` after a conflict rename). */
  finalName?: string;
  /** The target folder relative to the upload root, '/'-separated ('' = the root). */
  targetPath: string;
  /** The `fingerprint` the init carried, when it carried one. */
  fingerprint?: string;
}

// --- WebSocket: updraft.v1 ----------------------------------------------------------------------------------------

/** The subprotocol a client offers (Sec-WebSocket-Protocol) to speak updraft.v1 instead of PSWebHost JSON. */
export const NATIVE_SUBPROTOCOL = 'updraft.v1';

/** The `v` a server puts in `hello`; a client that gets another value closes with CLOSE_PROTOCOL_ERROR. */
export const NATIVE_PROTOCOL_VERSION = 1;

export type ChecksumAlgorithm = 'sha256' | 'crc32';

/** An optional per-chunk checksum: `a` algorithm, `v` lower-case hex (64 digits for sha256, 8 for crc32 IEEE). */
export interface WireChecksum {
  a: ChecksumAlgorithm;
  v: string;
}

/** Client -> server: the whole chunk `c` is the frame's payload. */
export interface ChunkMessage {
  t: 'chunk';
  c: number;
  k?: WireChecksum;
}

/** Client -> server: ask for a `progress` message. */
export interface StatusMessage {
  t: 'status';
}

/** Client -> server: cancel the upload; the server deletes it and closes with CLOSE_UPLOAD_CANCELLED. */
export interface CancelMessage {
  t: 'cancel';
}

/**
 * Client -> server: bytes `o` .. `o + payload length - 1` of chunk `c`. A chunk may be sent as consecutive parts
 * instead of one `chunk` frame: the first at `o` 0, each next one where the previous ended, nothing else carrying
 * chunk bytes in between, until the chunk's end. The server streams each part to disk as it arrives.
 */
export interface PartMessage {
  t: 'part';
  c: number;
  o: number;
}

export type ClientMessage = ChunkMessage | PartMessage | StatusMessage | CancelMessage;

/**
 * Server -> client, first message on every connection. `missing` is carried on the wire as a bitmap in the frame's
 * payload (a list would not fit the 4096-byte header for a large upload); the codec converts both ways.
 */
export interface HelloMessage {
  t: 'hello';
  v: 1;
  guid: string;
  chunkSize: number;
  fileSize: number;
  totalChunks: number;
  /** The largest frame (prefix + header + payload) the server accepts; a larger one ends the connection. */
  maxFrame: number;
  /**
   * How many chunks the client may have sent and not yet seen an `ack` or chunk `error` for. 0: none for now; wait
   * for a `window` message (the server's budget is taken by other connections).
   */
  window: number;
  /** Chunk numbers the server does not have, ascending. */
  missing: number[];
}

/** Server -> client: chunk `c` is stored (written, or synced in `chunk` durability). */
export interface AckMessage {
  t: 'ack';
  c: number;
  /** Present (true) when the chunk had already been received: nothing was written or counted. */
  dup?: true;
  /** receivedChunks and receivedBytes after this chunk. */
  rc: number;
  rb: number;
}

/** Server -> client: the counters, in reply to `status` (a client accepts one at any time). */
export interface ProgressMessage {
  t: 'progress';
  rc: number;
  tc: number;
  rb: number;
  complete: boolean;
}

/** Server -> client: the file is final and durable; the server then closes with CLOSE_NORMAL. */
export interface CompleteMessage {
  t: 'complete';
  fileName: string;
  size: number;
}

/**
 * Server -> client. With `c`: that chunk was not stored (it frees its window slot; resend it when `retry`). Without
 * `c`: the connection is over and a close with the code from `closeCodeForError` follows.
 */
export interface ErrorMessage {
  t: 'error';
  /** A code from the catalogue in errors.ts (typed as string: a newer server may send codes this client lacks). */
  code: string;
  message: string;
  c?: number;
  retry: boolean;
}

/**
 * Server -> client, at any time after `hello`: the connection's window is now `window` chunks (0: send none until
 * the next `window`). The server shares one memory budget among all open connections: it lowers windows as
 * connections open, raises them as they close, and when more connections are open than the budget has chunks for,
 * they take turns. The client applies it to the chunks it sends from now on (chunks already sent stay in flight).
 */
export interface WindowMessage {
  t: 'window';
  window: number;
}

export type ServerMessage = HelloMessage | AckMessage | ProgressMessage | CompleteMessage | ErrorMessage | WindowMessage;

// --- WebSocket: PSWebHost compatible (JSON text frames) -----------------------------------------------------------

/** Client -> server text frame announcing that the next binary frame holds chunk `chunkNumber`. */
export interface PsChunkControl {
  type: 'chunk';
  chunkNumber: number;
  /** Informational (bytes of the file after this chunk); not used by the server. */
  bytesRemaining?: number;
}

/** Client -> server: ask for a `progress` text frame. */
export interface PsGetProgressControl {
  type: 'getProgress';
}

export type PsClientControl = PsChunkControl | PsGetProgressControl;

export interface PsProgressControl {
  type: 'progress';
  chunkNumber: number;
  receivedChunks: number;
  totalChunks: number;
  receivedBytes: number;
  complete: boolean;
}

export interface PsCompleteControl {
  type: 'complete';
  fileName: string;
  size: number;
}

export interface PsErrorControl {
  type: 'error';
  code: string;
  message: string;
  /** The chunk refused, when the error is about one (extra field: PSWebHost's client ignores it). */
  chunkNumber?: number;
}

export type PsServerControl = PsProgressControl | PsCompleteControl | PsErrorControl;

// --- WebSocket close codes ----------------------------------------------------------------------------------------
// 1000-1015 are RFC 6455 / IANA codes; 4000-4999 are private-use codes whose meaning this protocol defines. A close
// reason is at most 123 bytes (RFC 6455 5.5: control frame payload <= 125 bytes, 2 of them the code).

/** Upload complete (after `complete`), or the client's normal close. */
export const CLOSE_NORMAL = 1000;
/** The server is shutting down (ERR_SHUTTING_DOWN); reconnect shortly and resume. */
export const CLOSE_GOING_AWAY = 1001;
/** Policy violation: authentication or origin refused after the upgrade (ERR_UNAUTHORIZED, ERR_FORBIDDEN_ORIGIN). */
export const CLOSE_POLICY = 1008;
/** A message was larger than the server accepts (`maxFrame`, or a text frame over its limit). */
export const CLOSE_TOO_BIG = 1009;
/** Internal server error or storage failure: nothing the client sent was wrong. */
export const CLOSE_INTERNAL = 1011;
/** The server is at capacity (ERR_SERVER_BUSY); retry later. */
export const CLOSE_TRY_AGAIN_LATER = 1013;
/** Protocol error: a frame or control message was malformed or not allowed at that point. */
export const CLOSE_PROTOCOL_ERROR = 4000;
/** The upload was cancelled (by this connection's `cancel`, another request, or the owner). */
export const CLOSE_UPLOAD_CANCELLED = 4001;
/** No such upload (wrong or unknown guid, or it belongs to another user). */
export const CLOSE_UPLOAD_NOT_FOUND = 4004;
/** The upload has failed (e.g. a storage error) and accepts no more chunks. */
export const CLOSE_UPLOAD_FAILED = 4009;
/** The upload expired (abandoned past its lifetime) and its staging data is gone. */
export const CLOSE_UPLOAD_EXPIRED = 4010;
/** Too many connections or requests for this user or upload (ERR_RATE_LIMITED). */
export const CLOSE_TOO_MANY_CONNECTIONS = 4029;

/**
 * The close code that follows a fatal `error` message (one without `c`) carrying `code`. Codes not listed are the
 * client's fault (protocol error) when their catalogue status is 4xx, the server's (internal) when 5xx.
 */
export function closeCodeForError(code: ErrorCode): number {
  switch (code) {
    case 'ERR_UPLOAD_CANCELLED':
      return CLOSE_UPLOAD_CANCELLED;
    case 'ERR_UPLOAD_NOT_FOUND':
    case 'ERR_MISSING_GUID':
      return CLOSE_UPLOAD_NOT_FOUND;
    case 'ERR_UPLOAD_FAILED':
      return CLOSE_UPLOAD_FAILED;
    case 'ERR_UPLOAD_EXPIRED':
      return CLOSE_UPLOAD_EXPIRED;
    case 'ERR_RATE_LIMITED':
      return CLOSE_TOO_MANY_CONNECTIONS;
    case 'ERR_SERVER_BUSY':
      return CLOSE_TRY_AGAIN_LATER;
    case 'ERR_SHUTTING_DOWN':
      return CLOSE_GOING_AWAY;
    case 'ERR_UNAUTHORIZED':
    case 'ERR_FORBIDDEN_ORIGIN':
      return CLOSE_POLICY;
    case 'ERR_BODY_TOO_LARGE':
      return CLOSE_TOO_BIG;
    default:
      return ERRORS[code].status >= 500 ? CLOSE_INTERNAL : CLOSE_PROTOCOL_ERROR;
  }
}

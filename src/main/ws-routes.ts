/**
 * The WebSocket transport (issue 3; docs/PROTOCOL.md "WebSocket transport"): `GET <prefix>/upload-chunk?guid=G` with
 * `Upgrade: websocket`. One connection carries chunks of one upload; PUTs and other connections may feed the same
 * upload at the same time, through the same claims, bitmap and completion (chunk-ingest.ts).
 *
 * Upgrade: every check runs in uWS's `upgrade` handler, before a socket exists, and a refusal is a plain HTTP error
 * reply (respond.ts): shutting down (503), Origin (403), subprotocol (400), authentication (401: `Authorization`,
 * `?token=`, or a `bearer.<token>` subprotocol entry), upload (404 for an unknown guid and for another user's guid
 * alike). The subprotocol picks the session: none or `json` -> PSWebHost JSON + binary, `updraft.v1` -> native.
 *
 * Contracts that keep this safe:
 *   - Memory: a chunk frame is copied once, synchronously, by `writeWholeChunk` (uWS neuters the message's
 *     ArrayBuffer when the handler returns). A connection never has more than `wsWindow` chunks between that copy
 *     and its reply; past that, a native client is closed (it broke the window it was given in `hello`) and a
 *     PSWebHost chunk is refused with an error. PSWebHost chunks also share a bound in bytes (`Hub.psBudget`).
 *     uWS's `maxPayloadLength` bounds one frame, so a larger one closes the socket before it is buffered (uWS then
 *     closes abruptly: code 1006 on both sides, no close frame).
 *   - Lifetime: the uWS WebSocket object is dead once `close` has fired (touching it aborts the process). Every send
 *     goes through `Session.#send`, which checks `closed` after whatever await preceded it.
 *   - Backpressure: replies are queued by us, never dropped by uWS: nothing is sent while the socket buffers
 *     SEND_THRESHOLD bytes or more (`maxBackpressure` leaves room for the largest message above that), `drain`
 *     flushes the queue, and a client that lets the queue grow past a bound stops being served (1008).
 *   - Order: `complete` is sent after the upload is final and durable (registry `completed` event or the ack that
 *     carries `completion`) and after every reply to chunks still in flight on that connection; the close follows it.
 *   - A transport error never discards the upload: only `cancel` (native) or the HTTP cancel does.
 */
import type { HttpRequest, HttpResponse, TemplatedApp, WebSocket, us_socket_context_t } from 'uWebSockets.js';
import type { Logger } from 'pino';
import {
  FRAME_LENGTH_SIZE,
  MAX_FRAME_HEADER,
  MAX_PS_CONTROL_LENGTH,
  decodeClientFrame,
  encodeFrame,
  encodePsControl,
  parsePsControl,
} from '../protocol/codec.js';
import { ERRORS, UploadError } from '../protocol/errors.js';
import type { ErrorCode } from '../protocol/errors.js';
import { CLOSE_NORMAL, CLOSE_POLICY, CLOSE_UPLOAD_FAILED, NATIVE_PROTOCOL_VERSION, NATIVE_SUBPROTOCOL, closeCodeForError } from '../protocol/messages.js';
import type { PsServerControl, ServerMessage, WireChecksum } from '../protocol/messages.js';
import { checkChunkInRange } from '../protocol/validate.js';
import { chunkLength } from '../workers/shared-layout.js';
import type { ChunkChecksum } from '../workers/task-types.js';
import { authenticate } from './auth.js';
import { ChunkReceiver, claimChunk, completionOf, nextWriterId, writeWholeChunk } from './chunk-ingest.js';
import type { ChunkAck } from './chunk-ingest.js';
import { originRefusal } from './http-policy.js';
import { readRequest, responseState } from './http-routes.js';
import type { RouteContext } from './http-routes.js';
import { sendError, toUploadError } from './respond.js';
import type { ResponseState } from './respond.js';
import type { CompletionInfo, Upload } from './upload.js';
import { WindowScheduler } from './ws-windows.js';

/**
 * The error that failed an upload, as its connections hear it: never `retry: true`, whatever the code (the upload is
 * over), and the close code of that code unless it is one that says "come back later" (a hook's ERR_SERVER_BUSY,
 * ERR_INTERNAL...): then 4009, the upload failed.
 */
class UploadFailure extends UploadError {
  constructor(code: ErrorCode, message: string) {
    super(code, message, undefined, false);
  }
  get closeCode(): number {
    return ERRORS[this.code].retryable ? CLOSE_UPLOAD_FAILED : closeCodeForError(this.code);
  }
}

/** The PSWebHost subprotocol name a browser may offer (next to `bearer.<token>`); no subprotocol means the same. */
export const PS_SUBPROTOCOL = 'json';
const BEARER_PREFIX = 'bearer.';

/** Replies wait in our queue while uWS buffers this much for the socket. */
const SEND_THRESHOLD = 256 * 1024;
/** Close reasons are at most 123 bytes (RFC 6455 5.5). */
const MAX_CLOSE_REASON = 123;

/**
 * Errors after which the upload takes no more chunks: the connection gets the error and is closed with the code of
 * `closeCodeForError`. Any other error is about one chunk (or one message) and the connection stays open.
 */
const FATAL: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ERR_UPLOAD_CANCELLED',
  'ERR_UPLOAD_EXPIRED',
  'ERR_UPLOAD_FAILED',
  'ERR_UPLOAD_NOT_FOUND',
  'ERR_STORAGE_FAILED',
  'ERR_HOOK_FAILED',
  'ERR_SHUTTING_DOWN',
]);

interface WsUserData {
  session: Session;
}

export interface WsRoutes {
  /** Open upload WebSockets. */
  readonly connections: number;
  /** Engine shutdown: every connection gets ERR_SHUTTING_DOWN and is closed with 1001 (clients resume later). */
  closeAll(): void;
}

/** Which wire format the client chose, and a token it carried in `Sec-WebSocket-Protocol`. */
interface Subprotocol {
  native: boolean;
  /** The value the server answers with: '' when the client offered none (no header in the reply). */
  answer: string;
  token: string | undefined;
}

/**
 * Reads `Sec-WebSocket-Protocol`: comma-separated, in the client's order of preference. `bearer.<token>` entries
 * carry a token only and are never echoed (the reply names the real protocol, and the token stays out of response
 * logs). A client that offers protocols must be answered with one of them (RFC 6455 4.1; `ws` and browsers fail
 * the connection otherwise), so an offer with only a bearer entry, or only unknown protocols, is refused.
 */
export function chooseSubprotocol(header: string | undefined): Subprotocol {
  const offered = (header ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
  let token: string | undefined;
  const real: string[] = [];
  for (const p of offered) {
    if (p.toLowerCase().startsWith(BEARER_PREFIX)) token ??= p.slice(BEARER_PREFIX.length);
    else real.push(p);
  }
  if (offered.length === 0) return { native: false, answer: '', token };
  for (const p of real) {
    if (p === NATIVE_SUBPROTOCOL) return { native: true, answer: p, token };
    if (p === PS_SUBPROTOCOL) return { native: false, answer: p, token };
  }
  throw new UploadError(
    'ERR_INVALID_FIELD',
    `Sec-WebSocket-Protocol must offer "${NATIVE_SUBPROTOCOL}" or "${PS_SUBPROTOCOL}" (a bearer.<token> entry goes next to it)`,
  );
}

function closeReason(text: string): string {
  if (Buffer.byteLength(text) <= MAX_CLOSE_REASON) return text;
  let s = text.slice(0, MAX_CLOSE_REASON);
  while (Buffer.byteLength(s) > MAX_CLOSE_REASON) s = s.slice(0, -1);
  return s;
}

/** Everything a session needs from the route: context, limits and the connection table. */
class Hub {
  readonly byUpload = new Map<string, Set<Session>>();
  readonly byUser = new Map<string, number>();
  readonly all = new Set<Session>();
  readonly maxPayload: number;
  /**
   * The windows of the updraft.v1 connections share half the in-flight budget: a frame is held twice at worst, in
   * uWS's buffer while it arrives and then copied into the slabs, so both stay within maxInFlightBytes.
   */
  readonly windows: WindowScheduler;
  /**
   * PSWebHost clients are told no window, so their chunk copies share a bound of their own, the other half of the
   * in-flight budget: a chunk that would go past it is refused with ERR_SERVER_BUSY (sent again after a progress),
   * unless its connection has nothing in flight, so a serial client is never refused.
   */
  readonly psBudget: number;
  /** Bytes of PSWebHost chunks copied and not yet answered, over all connections. */
  psHeld = 0;

  constructor(readonly ctx: RouteContext) {
    this.maxPayload = ctx.options.maxChunkSize + FRAME_LENGTH_SIZE + MAX_FRAME_HEADER;
    this.windows = new WindowScheduler(Math.max(1, Math.floor(ctx.options.maxInFlightBytes / 2)));
    this.psBudget = Math.max(1, Math.floor(ctx.options.maxInFlightBytes / 2));
  }

  get log(): Logger {
    return this.ctx.log;
  }

  /** Registers an opened session; false when its user is at the connection cap (the session is then refused). */
  add(s: Session): boolean {
    const n = this.byUser.get(s.user) ?? 0;
    if (n >= this.ctx.options.maxWsConnectionsPerUser) return false;
    this.byUser.set(s.user, n + 1);
    this.all.add(s);
    let set = this.byUpload.get(s.upload.guid);
    if (!set) this.byUpload.set(s.upload.guid, (set = new Set()));
    set.add(s);
    if (s instanceof NativeSession) this.windows.add(s);
    return true;
  }

  remove(s: Session): void {
    if (!this.all.delete(s)) return;
    const n = (this.byUser.get(s.user) ?? 1) - 1;
    if (n <= 0) this.byUser.delete(s.user);
    else this.byUser.set(s.user, n);
    const set = this.byUpload.get(s.upload.guid);
    set?.delete(s);
    if (set?.size === 0) this.byUpload.delete(s.upload.guid);
    if (s instanceof NativeSession) this.windows.remove(s);
  }

  sessionsOf(guid: string): Session[] {
    return [...(this.byUpload.get(guid) ?? [])];
  }
}

/** Chunk bytes a native connection may have unacknowledged (bounds its window for large chunks). */
const WINDOW_BYTES = 64 * 1024 * 1024;

/** One open connection: what both protocols share (lifetime, send queue, in-flight count, completion, errors). */
abstract class Session {
  #ws: WebSocket<WsUserData> | null = null;
  /** uWS fired `close` (or the socket never opened): the WebSocket object must not be touched. */
  closed = false;
  /** We decided to close: nothing more is sent but what is queued, then the close frame. */
  #ending: { code: number; reason: string } | null = null;
  #queue: Array<{ data: string | Uint8Array; binary: boolean }> = [];
  #registered = false;
  /** Chunks copied and not yet answered (the window). */
  inFlight = 0;
  /** Set once the upload is final and durable; `complete` goes out when nothing is in flight on this connection. */
  completion: CompletionInfo | null = null;
  #finished = false;

  constructor(
    readonly hub: Hub,
    readonly upload: Upload,
    readonly user: string,
  ) {}

  get ctx(): RouteContext {
    return this.hub.ctx;
  }

  get window(): number {
    return this.ctx.options.wsWindow;
  }

  get ending(): boolean {
    return this.#ending !== null || this.closed;
  }

  // --- lifecycle ---------------------------------------------------------------------------------------------------

  open(ws: WebSocket<WsUserData>): void {
    this.#ws = ws;
    if (!this.hub.add(this)) {
      this.fail(new UploadError('ERR_RATE_LIMITED', `At most ${this.ctx.options.maxWsConnectionsPerUser} upload connections per user`));
      return;
    }
    this.#registered = true;
    this.hub.log.debug({ event: 'ws.open', guid: this.upload.guid, user: this.user, protocol: this.protocol }, 'websocket open');
    this.greet();
    // The upload may have ended between the upgrade and now (its event found no session to tell).
    const u = this.upload;
    if (u.status === 'completed') this.uploadCompleted(completionOf(u));
    else if (u.status === 'failed') this.fail(new UploadError('ERR_UPLOAD_FAILED'));
    else if (u.status === 'cancelled') this.fail(new UploadError('ERR_UPLOAD_CANCELLED'));
    else if (u.status === 'expired') this.fail(new UploadError('ERR_UPLOAD_EXPIRED'));
  }

  onClose(code: number, message: ArrayBuffer): void {
    this.closed = true;
    this.#ws = null;
    this.#queue = [];
    this.abandon();
    if (this.#registered) this.hub.remove(this);
    const reason = Buffer.from(message).toString('utf8');
    const fields = { event: 'ws.close', guid: this.upload.guid, user: this.user, code, reason, inFlight: this.inFlight };
    // uWS closes without a close frame (1006 on both sides) when a frame exceeds maxPayloadLength.
    if (code === 1006 && /too big/i.test(reason)) {
      this.hub.log.info({ ...fields, maxPayloadLength: this.hub.maxPayload }, 'websocket frame over the size limit');
    } else {
      this.hub.log.debug(fields, 'websocket closed');
    }
  }

  onDrain(): void {
    const ws = this.#ws;
    if (this.closed || ws === null) return;
    ws.cork(() => {
      while (this.#queue.length > 0 && ws.getBufferedAmount() < SEND_THRESHOLD) {
        const m = this.#queue.shift()!;
        ws.send(m.data, m.binary);
      }
    });
    // end() runs the close handler at once, so it is called outside the cork, as the last use of `ws`.
    if (this.#queue.length === 0 && this.#ending !== null) ws.end(this.#ending.code, this.#ending.reason);
  }

  // --- sending -----------------------------------------------------------------------------------------------------

  /** Sends now, or queues behind backpressure. Safe after any await: a closed or closing session sends nothing. */
  protected send(data: string | Uint8Array, binary: boolean): void {
    const ws = this.#ws;
    if (this.ending || ws === null) return;
    if (this.#queue.length > 0 || ws.getBufferedAmount() >= SEND_THRESHOLD) {
      this.#queue.push({ data, binary });
      // Replies per chunk are bounded by the window; only a client that never reads (and keeps asking for status)
      // gets here.
      if (this.#queue.length > 4 * this.window + 64) this.#close(CLOSE_POLICY, 'Client is not reading its replies', true);
      return;
    }
    ws.cork(() => ws.send(data, binary));
  }

  /** Closes after whatever is queued; `drop` discards the queue first. */
  #close(code: number, reason: string, drop = false): void {
    const ws = this.#ws;
    if (this.ending || ws === null) return;
    const ending = (this.#ending = { code, reason: closeReason(reason) });
    // No more messages are read (see the message handler), so a half-received chunk will never end: free its claim
    // and slabs now rather than when the close is done, which waits for the queued replies to drain.
    this.abandon();
    if (drop) this.#queue = [];
    // ws.end() runs the close handler at once, which takes the connection out of the window scheduler; this may be
    // called from inside the scheduler (a `window` frame that overflows the reply queue), so end in a microtask,
    // once the scheduler's call is over.
    if (this.#queue.length === 0) {
      queueMicrotask(() => {
        if (!this.closed && this.#ws === ws) ws.end(code, ending.reason);
      });
      return;
    }
    // The queue drains first (onDrain ends the connection); a client that never reads would keep it, its per-user
    // slot and its window entry for good: cut it off after CLOSE_DRAIN_MS.
    setTimeout(() => {
      if (!this.closed && this.#ws === ws) ws.close();
    }, CLOSE_DRAIN_MS).unref?.();
  }

  /** A fatal error: the error message, then the close code of `closeCodeForError`. */
  fail(e: unknown): void {
    if (this.ending) return;
    const err = toUploadError(e, this.hub.log);
    this.sendError(err, undefined, true);
    this.#close(err instanceof UploadFailure ? err.closeCode : closeCodeForError(err.code), err.message);
  }

  /** A chunk's or a message's error: fatal ones close the connection, the rest leave it open. */
  protected refuse(e: unknown, chunk?: number): void {
    const err = toUploadError(e, this.hub.log);
    if (FATAL.has(err.code)) this.fail(err);
    else this.sendError(err, chunk, false);
  }

  // --- completion --------------------------------------------------------------------------------------------------

  /** The upload is final and durable (registry event, or an ack that carried it). */
  uploadCompleted(info: CompletionInfo): void {
    this.completion ??= info;
    this.maybeFinish();
  }

  /** Sends the completion sequence once nothing is in flight on this connection, then closes with 1000. */
  protected maybeFinish(): void {
    if (this.completion === null || this.#finished || this.inFlight > 0 || this.ending) return;
    this.#finished = true;
    this.sendCompletion(this.completion);
    this.#close(CLOSE_NORMAL, 'Upload complete');
  }

  // --- chunks ------------------------------------------------------------------------------------------------------

  /**
   * Starts writing chunk `c` from `bytes`, a view of the uWS message: `writeWholeChunk` copies it before its first
   * await, so this must be called synchronously from the message handler. `settled` runs when the write has ended,
   * before the reply.
   */
  protected write(c: number, bytes: Uint8Array, checksum?: ChunkChecksum, settled?: () => void): void {
    this.inFlight++;
    const outcome = writeWholeChunk(this.ctx, this.upload, c, bytes, checksum);
    this.answer(c, settled ? outcome.finally(settled) : outcome);
  }

  /** Replies to chunk `c`, counted in `inFlight` by the caller, once `outcome` settles. */
  protected answer(c: number, outcome: Promise<ChunkAck>): void {
    outcome.then(
      (ack) => {
        this.inFlight--;
        if (ack.completion) this.completion ??= ack.completion;
        this.acked(ack);
        this.maybeFinish();
      },
      (e: unknown) => {
        this.inFlight--;
        this.refuse(e, c);
        this.maybeFinish();
      },
    );
  }

  /** The chunk length a frame for chunk `c` must have; throws the chunk's error when `c` or `length` is wrong. */
  protected checkChunk(c: number, length: number): void {
    const u = this.upload;
    if (c >= u.totalChunks) throw new UploadError('ERR_CHUNK_OUT_OF_RANGE', `Chunk ${c} is past the last chunk (${u.totalChunks - 1})`);
    const expected = chunkLength(u.fileSize, u.chunkSize, c);
    if (length > expected) throw new UploadError('ERR_CHUNK_TOO_LARGE', `Chunk ${c} is ${expected} bytes, got ${length}`);
    if (length < expected) throw new UploadError('ERR_CHUNK_TOO_SMALL', `Chunk ${c} is ${expected} bytes, got ${length}`);
  }

  /** The connection is closed: drop whatever was half received (nothing of it is stored). */
  protected abandon(): void {}

  abstract readonly protocol: string;
  protected abstract greet(): void;
  abstract message(bytes: ArrayBuffer, isBinary: boolean): void;
  protected abstract acked(ack: ChunkAck): void;
  protected abstract sendError(err: UploadError, chunk: number | undefined, fatal: boolean): void;
  protected abstract sendCompletion(info: CompletionInfo): void;
}

/**
 * PSWebHost protocol: a text `{"type":"chunk","chunkNumber":N}` names the chunk of the next binary message;
 * `{"type":"getProgress"}` asks for the counters. Every binary message gets exactly one reply, `progress` or `error`.
 */
/** How long a connection being closed may take to drain its queued replies before it is cut off. */
const CLOSE_DRAIN_MS = 5000;

class PsSession extends Session {
  readonly protocol = 'pswebhost';
  /** The chunk announced by the last `chunk` message; one binary message consumes it. */
  #announced: number | null = null;
  #sentCompleteProgress = false;

  protected greet(): void {}

  message(bytes: ArrayBuffer, isBinary: boolean): void {
    if (!isBinary) {
      // Refuse long text before decoding it (a control message is a few dozen ASCII bytes).
      // A refused control message also cancels the chunk announced before it: the client meant the binary message
      // that follows for another chunk, and storing it under the earlier number would corrupt the file.
      if (bytes.byteLength > 4 * MAX_PS_CONTROL_LENGTH) {
        this.#announced = null;
        this.refuse(new UploadError('ERR_CHUNK_HEADER_INVALID', `Invalid control message: longer than ${MAX_PS_CONTROL_LENGTH} characters`));
        return;
      }
      try {
        const ctl = parsePsControl(Buffer.from(bytes).toString('utf8'));
        if (ctl.type === 'chunk') this.#announced = ctl.chunkNumber;
        else this.#progress(-1, this.completion !== null);
      } catch (e) {
        this.#announced = null;
        this.refuse(e);
      }
      return;
    }
    const c = this.#announced;
    this.#announced = null;
    try {
      if (c === null) throw new UploadError('ERR_CHUNK_HEADER_INVALID', 'Binary message without a {"type":"chunk"} message before it');
      this.checkChunk(c, bytes.byteLength);
      if (this.inFlight >= this.window) {
        throw new UploadError('ERR_WINDOW_EXCEEDED', `More than ${this.window} chunks waiting on this connection; wait for their progress`);
      }
      if (this.inFlight > 0 && this.hub.psHeld + bytes.byteLength > this.hub.psBudget) {
        throw new UploadError('ERR_SERVER_BUSY', 'Too many chunk bytes are waiting for the disk; send this chunk again after a progress');
      }
    } catch (e) {
      this.refuse(e, c ?? undefined);
      return;
    }
    const n = bytes.byteLength;
    this.hub.psHeld += n;
    this.write(c, new Uint8Array(bytes), undefined, () => {
      this.hub.psHeld -= n;
    });
  }

  #progress(chunkNumber: number, complete: boolean): void {
    const u = this.upload;
    if (complete) this.#sentCompleteProgress = true;
    this.#sendControl({
      type: 'progress',
      chunkNumber,
      receivedChunks: u.receivedChunks,
      totalChunks: u.totalChunks,
      receivedBytes: u.receivedBytes,
      complete,
    });
  }

  #sendControl(m: PsServerControl): void {
    this.send(encodePsControl(m), false);
  }

  protected acked(ack: ChunkAck): void {
    const complete = this.completion !== null;
    if (complete) this.#sentCompleteProgress = true;
    this.#sendControl({
      type: 'progress',
      chunkNumber: ack.chunk,
      receivedChunks: ack.receivedChunks,
      totalChunks: ack.totalChunks,
      receivedBytes: ack.receivedBytes,
      complete,
    });
  }

  protected sendError(err: UploadError, chunk: number | undefined): void {
    this.#sendControl(chunk === undefined ? { type: 'error', code: err.code, message: err.message } : { type: 'error', code: err.code, message: err.message, chunkNumber: chunk });
  }

  protected sendCompletion(info: CompletionInfo): void {
    if (!this.#sentCompleteProgress) this.#progress(-1, true);
    this.#sendControl({ type: 'complete', fileName: info.fileName, size: info.size });
  }
}

/** Native protocol `updraft.v1`: binary frames (codec.ts), `hello` first, one `ack` or chunk `error` per chunk. */
class NativeSession extends Session {
  readonly protocol = NATIVE_SUBPROTOCOL;

  /** The window last told to the client (hello, then `window` messages); see ws-windows.ts. */
  #told = 0;
  #helloSent = false;
  /**
   * The window enforced: the largest ever told. A lowered window is not enforced, since chunks the client sent before
   * it read the new value are still on the way; a conforming client keeps to the lower one from then on.
   */
  #limit = 0;
  /** The chunk whose parts are arriving; `receiver` null: it was refused, and its remaining parts are dropped. */
  #streaming: PartStream | null = null;
  /** The client sends its chunks as `part` frames (see chunkSize). */
  #parts = false;

  override get window(): number {
    return this.#told;
  }

  /**
   * WindowHolder: the bytes one slot stands for. A chunk sent as one frame is held twice at worst (whole in uWS's
   * buffer while it arrives, then in the slabs); one sent as parts only once, so its slot counts half.
   */
  get chunkSize(): number {
    return this.#parts ? Math.ceil(this.upload.chunkSize / 2) : this.upload.chunkSize;
  }

  /** `wsWindow` chunks, but never more than WINDOW_BYTES of them (twice that as parts), and at least 2. */
  get cap(): number {
    const bytes = this.#parts ? 2 * WINDOW_BYTES : WINDOW_BYTES;
    return Math.min(this.ctx.options.wsWindow, Math.max(2, Math.floor(bytes / this.upload.chunkSize)));
  }

  /**
   * A frame (`chunk` or `part`) that holds more than half a chunk in uWS's buffer, other than the last chunk's: the
   * client does not keep to the half weight of parts (see chunkSize).
   */
  #wholeFrame(c: number, length: number): boolean {
    return length > this.upload.chunkSize / 2 && c !== this.upload.totalChunks - 1;
  }

  /**
   * The client sends its chunks as parts of at most half a chunk (a chunk arrived in such parts) or whole (see
   * #wholeFrame): the scheduler counts its slots accordingly from now on.
   */
  #sendsParts(parts: boolean): void {
    if (this.#parts === parts) return;
    this.#parts = parts;
    this.hub.windows.reweigh(this);
  }

  /** WindowHolder: the scheduler changed this connection's window. Before hello, hello carries it. */
  windowChanged(window: number): void {
    if (!this.#helloSent) return;
    this.#tell(window);
    if (!this.ending) this.#frame({ t: 'window', window });
  }

  #tell(w: number): void {
    this.#told = w;
    this.#limit = Math.max(this.#limit, w);
  }

  #frame(m: ServerMessage): void {
    this.send(encodeFrame(m), true);
  }

  protected greet(): void {
    const u = this.upload;
    this.#tell(this.hub.windows.windowOf(this));
    this.#helloSent = true;
    this.#frame({
      t: 'hello',
      v: NATIVE_PROTOCOL_VERSION,
      guid: u.guid,
      chunkSize: u.chunkSize,
      fileSize: u.fileSize,
      totalChunks: u.totalChunks,
      maxFrame: this.hub.maxPayload,
      window: this.window,
      missing: u.statusData().missingChunks,
    });
  }

  message(bytes: ArrayBuffer, isBinary: boolean): void {
    if (!isBinary) {
      this.fail(new UploadError('ERR_CHUNK_HEADER_INVALID', 'updraft.v1 messages are binary frames; got a text frame'));
      return;
    }
    let frame;
    try {
      frame = decodeClientFrame(bytes);
    } catch (e) {
      this.fail(e); // an unreadable frame names no chunk: the connection cannot go on
      return;
    }
    const m = frame.message;
    switch (m.t) {
      case 'chunk': {
        if (!this.#endParts(`chunk ${m.c}`)) return;
        if (!this.#takeSlot()) return;
        try {
          this.checkChunk(m.c, frame.payload.length);
        } catch (e) {
          this.refuse(e, m.c);
          return;
        }
        this.write(m.c, frame.payload, m.k && checksumOf(m.k));
        if (this.#wholeFrame(m.c, frame.payload.length)) this.#sendsParts(false);
        return;
      }
      case 'part':
        this.#part(m.c, m.o, frame.payload);
        return;
      case 'status':
        this.#progress();
        return;
      case 'cancel':
        this.ctx.registry.cancel(this.upload).then(
          () => {}, // the registry's `cancelled` event closes every connection of the upload with 4001
          (e: unknown) => {
            // Cancelling a completing upload fails; its `complete` is on the way.
            if (e instanceof UploadError && e.code === 'ERR_UPLOAD_FINALIZING') return;
            this.fail(e);
          },
        );
        return;
    }
  }

  /**
   * A chunk starts in flight (its `chunk` frame or first `part`). The client was told the window; a conforming
   * client never trips this because the server frees a slot before it sends the reply that frees the client's.
   */
  #takeSlot(): boolean {
    if (this.inFlight >= this.#limit) {
      this.fail(new UploadError('ERR_WINDOW_EXCEEDED', `More than ${this.#limit} chunks unacknowledged`));
      return false;
    }
    this.hub.windows.sent(this);
    return true;
  }

  /**
   * A frame that is not the next part of the chunk being streamed: fine when no chunk is (or only the rest of a
   * refused one, which is dropped), a protocol error otherwise (the unfinished chunk is not stored).
   */
  #endParts(what: string): boolean {
    const p = this.#streaming;
    if (p === null) return true;
    if (p.receiver === null) {
      this.#streaming = null;
      return true;
    }
    this.fail(new UploadError('ERR_CHUNK_HEADER_INVALID', `Invalid updraft.v1 frame: ${what} while chunk ${p.c} has ${p.expected - p.next} bytes to come`));
    return false;
  }

  /**
   * `part` (docs/PROTOCOL.md): bytes `o..` of chunk `c`, streamed to disk through a ChunkReceiver as they arrive,
   * so no frame holds a whole chunk. The chunk is answered after its last byte, like a `chunk` frame.
   */
  #part(c: number, o: number, payload: Uint8Array): void {
    const p = this.#streaming;
    if (p !== null && p.c === c && p.receiver === null && o !== 0) return; // the rest of a refused chunk
    if (p !== null && p.c === c && p.receiver !== null && o === p.next) {
      if (o + payload.length > p.expected) {
        this.#dropPart(p);
        this.#dropRest(c);
        this.inFlight--;
        this.refuse(new UploadError('ERR_CHUNK_TOO_LARGE', `Chunk ${c} is ${p.expected} bytes; its parts are longer`), c);
        this.maybeFinish();
        return;
      }
      if (this.#wholeFrame(c, payload.length)) this.#sendsParts(false);
      this.#push(p, payload);
      return;
    }
    if (o !== 0) {
      this.fail(new UploadError('ERR_CHUNK_HEADER_INVALID', `Invalid updraft.v1 frame: part of chunk ${c} at offset ${o}` +
        (p?.receiver ? `, expected chunk ${p.c} at offset ${p.next}` : ', expected a first part (offset 0)')));
      return;
    }
    if (!this.#endParts(`part of chunk ${c}`)) return;
    if (!this.#takeSlot()) return;
    const u = this.upload;
    let expected: number;
    try {
      checkChunkInRange(c, u.totalChunks);
      expected = chunkLength(u.fileSize, u.chunkSize, c);
      if (payload.length > expected) throw new UploadError('ERR_CHUNK_TOO_LARGE', `Chunk ${c} is ${expected} bytes, got a part of ${payload.length}`);
    } catch (e) {
      this.refuse(e, c);
      this.#dropRest(c);
      return;
    }
    const writerId = nextWriterId();
    const abort = new AbortController();
    const claim = claimChunk(this.ctx, u, c, writerId, abort.signal);
    // A WebSocket cannot stop reading, so the receiver takes no reading place and never pauses anything.
    const receiver = new ChunkReceiver(this.ctx, u, c, writerId, noop, noop, { readingPlace: false, claim });
    this.inFlight++;
    const stream: PartStream = { c, next: 0, expected, receiver, abort, lastPartAt: 0, timer: null, periodAt: performance.now(), periodFrom: 0 };
    this.#streaming = stream;
    this.#push(stream, payload);
    const whole = this.#wholeFrame(c, payload.length);
    if (whole) this.#sendsParts(false);
    if (this.#streaming !== stream) return; // the chunk came whole in one part
    if (!whole) this.#sendsParts(true); // a chunk really in parts
    this.#watchStall(stream);
  }

  #push(p: PartStream, payload: Uint8Array): void {
    p.receiver!.push(payload);
    p.next += payload.length;
    p.lastPartAt = performance.now();
    if (p.next < p.expected) return;
    this.#streaming = null;
    this.#unwatch(p);
    const receiver = p.receiver!;
    this.ctx.metrics?.bytesReceived.inc(receiver.received);
    this.answer(p.c, receiver.finish());
  }

  /** Chunk `c` was refused: its remaining parts are dropped without replies (see #part). */
  #dropRest(c: number): void {
    this.#streaming = { c, next: 0, expected: 0, receiver: null, abort: null, lastPartAt: 0, timer: null, periodAt: 0, periodFrom: 0 };
  }

  /** Stops a half-received chunk: nothing more of it is written, its bit stays clear, its claim and slabs go. */
  #dropPart(p: PartStream): void {
    this.#unwatch(p);
    p.abort?.abort();
    p.receiver?.abort();
  }

  /**
   * A chunk whose next part does not come within `wsPartTimeout` is dropped, like a PUT body that stops: it would
   * otherwise hold its claim (other writers of the chunk get ERR_CHUNK_BUSY, the upload never expires) and its
   * window slot (connections waiting for a turn never get one) for as long as the connection lives. While others
   * wait for a window, parts that keep coming but bring less than WS_MIN_RATE_WHILE_OTHERS_WAIT drop it too.
   */
  #watchStall(p: PartStream): void {
    const limit = this.ctx.options.wsPartTimeout;
    const period = Math.min(WS_RATE_PERIOD_MS, limit);
    const floor = (WS_MIN_RATE_WHILE_OTHERS_WAIT * period) / 1000;
    const drop = (why: string): void => {
      this.#dropPart(p);
      this.#dropRest(p.c);
      this.inFlight--;
      this.refuse(new UploadError('ERR_CHUNK_INCOMPLETE', `Chunk ${p.c}: ${why} after ${p.next} of ${p.expected} bytes; send it again from offset 0`), p.c);
      this.maybeFinish();
    };
    const check = (): void => {
      p.timer = null;
      if (this.#streaming !== p || this.ending) return;
      const now = performance.now();
      const quiet = now - p.lastPartAt;
      if (quiet >= limit) return drop(`no part for ${limit} ms`);
      if (now - p.periodAt >= period) {
        if (p.next - p.periodFrom < floor && this.hub.windows.othersWait) {
          return drop(`less than ${Math.round(floor / 1024)} KiB in ${period} ms while other connections wait for a window`);
        }
        p.periodAt = now;
        p.periodFrom = p.next;
      }
      p.timer = setTimeout(check, Math.max(1, Math.min(limit - quiet, period - (now - p.periodAt))));
    };
    p.timer = setTimeout(check, period);
  }

  #unwatch(p: PartStream): void {
    if (p.timer !== null) clearTimeout(p.timer);
    p.timer = null;
  }

  protected override abandon(): void {
    const p = this.#streaming;
    this.#streaming = null;
    if (p !== null && p.receiver !== null) {
      this.#dropPart(p);
      this.inFlight--;
    }
  }

  #progress(): void {
    const u = this.upload;
    this.#frame({ t: 'progress', rc: u.receivedChunks, tc: u.totalChunks, rb: u.receivedBytes, complete: this.completion !== null });
  }

  protected acked(ack: ChunkAck): void {
    // A slot may go to a waiting connection: the new window must reach the client before this ack does.
    this.hub.windows.answering(this);
    this.#frame(
      ack.duplicate
        ? { t: 'ack', c: ack.chunk, dup: true, rc: ack.receivedChunks, rb: ack.receivedBytes }
        : { t: 'ack', c: ack.chunk, rc: ack.receivedChunks, rb: ack.receivedBytes },
    );
  }

  protected sendError(err: UploadError, chunk: number | undefined, fatal: boolean): void {
    if (chunk !== undefined && !fatal) this.hub.windows.answering(this);
    this.#frame(
      chunk === undefined || fatal
        ? { t: 'error', code: err.code, message: err.message, retry: err.retryable }
        : { t: 'error', code: err.code, message: err.message, c: chunk, retry: err.retryable },
    );
  }

  protected sendCompletion(info: CompletionInfo): void {
    this.#progress();
    this.#frame({ t: 'complete', fileName: info.fileName, size: info.size });
  }
}

interface PartStream {
  c: number;
  /** The offset the next part must have. */
  next: number;
  expected: number;
  receiver: ChunkReceiver | null;
  abort: AbortController | null;
  /** performance.now() of the last part, and the timer that drops the chunk when parts stop (#watchStall). */
  lastPartAt: number;
  timer: ReturnType<typeof setTimeout> | null;
  /** The rate check's current period (#watchStall): when it began, and `next` then. */
  periodAt: number;
  periodFrom: number;
}

/**
 * While other connections wait for a window, a chunk arriving in parts must bring at least this many bytes per second
 * (over periods of 10 s, or wsPartTimeout if shorter), the floor uWS puts on a PUT body: a trickle of parts, each in
 * time, would otherwise hold its slot, for a 64 MiB chunk the whole budget, while everyone else waits.
 */
const WS_MIN_RATE_WHILE_OTHERS_WAIT = 16 * 1024;
const WS_RATE_PERIOD_MS = 10_000;

const noop = (): void => {};

function checksumOf(k: WireChecksum): ChunkChecksum {
  return { algorithm: k.a, expected: k.v };
}

/** Mounts the upload WebSocket on `<prefix>/upload-chunk`. uWS routes an Upgrade request here and a plain GET to the status route. */

export function registerWsRoutes(app: TemplatedApp, ctx: RouteContext): WsRoutes {
  const { options: o, registry, log } = ctx;
  const hub = new Hub(ctx);

  registry.on('completed', (info) => {
    const c: CompletionInfo = { guid: info.guid, fileName: info.finalName, size: info.fileSize, targetPath: info.targetPath };
    for (const s of hub.sessionsOf(info.guid)) s.uploadCompleted(c);
  });
  registry.on('cancelled', (info) => {
    for (const s of hub.sessionsOf(info.guid)) s.fail(new UploadError('ERR_UPLOAD_CANCELLED'));
  });
  registry.on('expired', (info) => {
    for (const s of hub.sessionsOf(info.guid)) s.fail(new UploadError('ERR_UPLOAD_EXPIRED'));
  });
  registry.on('failed', (info) => {
    // The failure's own code and message, as a PUT of the last chunk hears them (ERR_HOOK_FAILED, a hook's own
    // UploadError, ERR_FILE_EXISTS, ERR_STORAGE_FAILED, ...), and so the close code closeCodeForError gives that code
    // (docs/PROTOCOL.md, Close codes). This event is the only place a connection hears it: the registry emits it
    // before the failed completion rejects the last chunk's write, whose reply then finds the connection closing.
    const code = Object.hasOwn(ERRORS, info.code) ? (info.code as ErrorCode) : 'ERR_UPLOAD_FAILED';
    const err = new UploadFailure(code, info.message);
    for (const s of hub.sessionsOf(info.guid)) s.fail(err);
  });

  const upgrade = (res: HttpResponse, req: HttpRequest, context: us_socket_context_t): void => {
    // Everything from `req` is read now: it is invalid after the first await.
    const info = readRequest(res, req, o);
    const key = req.getHeader('sec-websocket-key');
    const extensions = req.getHeader('sec-websocket-extensions');
    const st: ResponseState = responseState(ctx, info);
    res.onAborted(() => {
      st.aborted = true;
    });
    void (async () => {
      try {
        if (ctx.isClosing()) throw new UploadError('ERR_SHUTTING_DOWN');
        const refusal = originRefusal(o, info.headers);
        if (refusal !== null) throw refusal;
        const proto = chooseSubprotocol(info.headers['sec-websocket-protocol']);
        const queryToken = info.query.get('token') || undefined;
        const user = await authenticate(o, info, queryToken ?? proto.token);
        if (ctx.isClosing()) throw new UploadError('ERR_SHUTTING_DOWN'); // the stop began while authenticating
        const upload = registry.find(info.query.get('guid'), user);
        if (st.aborted) return;
        st.done = true;
        const session = proto.native ? new NativeSession(hub, upload, user) : new PsSession(hub, upload, user);
        const data: WsUserData = { session };
        res.cork(() => res.upgrade(data, key, proto.answer, extensions, context));
      } catch (e) {
        sendError(res, st, e, log);
      }
    })();
  };

  app.ws<WsUserData>(`${o.prefix}/upload-chunk`, {
    // A whole chunk plus the largest updraft.v1 header: uWS closes on a larger frame without buffering it.
    maxPayloadLength: hub.maxPayload,
    // Room for the largest reply (hello's bitmap) on top of SEND_THRESHOLD, so uWS never drops a send.
    maxBackpressure: SEND_THRESHOLD + Math.ceil(o.maxChunks / 8) + 2 * MAX_FRAME_HEADER + 64 * 1024,
    idleTimeout: o.wsIdleTimeout,
    sendPingsAutomatically: o.wsIdleTimeout > 0,
    upgrade,
    open: (ws) => {
      ctx.metrics?.wsConnections.inc();
      ws.getUserData().session.open(ws);
    },
    message: (ws, message, isBinary) => {
      const s = ws.getUserData().session;
      if (!s.ending) s.message(message, isBinary);
    },
    drain: (ws) => ws.getUserData().session.onDrain(),
    close: (ws, code, message) => {
      ctx.metrics?.wsConnections.dec();
      ws.getUserData().session.onClose(code, message);
    },
  });

  return {
    get connections() {
      return hub.all.size;
    },
    closeAll() {
      for (const s of [...hub.all]) s.fail(new UploadError('ERR_SHUTTING_DOWN'));
    },
  };
}

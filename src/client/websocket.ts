/**
 * One `updraft.v1` WebSocket connection carrying chunks of one upload (docs/PROTOCOL.md "Native WebSocket protocol").
 *
 * The session waits for `hello`, adopts its bitmap into the shared ChunkPlan, keeps up to `window` chunks
 * unacknowledged, and ends in one of five outcomes the caller decides on: `complete` (the file is final),
 * `connect-failed` (no hello: refused, unreachable, wrong subprotocol, timeout), `dropped` (closed mid-upload after a
 * hello; in-flight chunks are put back into the plan, the next hello or upload-status says which were stored),
 * `all-stored` (every chunk acknowledged, closed before `complete`: the caller asks upload-status) or `parked`
 * (paused with nothing in flight for PARK_AFTER_MS: closed so that it holds none of the server's per-user connection
 * slots; the caller reconnects on resume). Errors that no reconnect can fix (cancelled, not found, expired, failed,
 * unauthorized, a non-retryable chunk error) reject.
 *
 * In Node 20 there is no global WebSocket; the `ws` package is loaded with a dynamic import only then, so the
 * browser bundle never contains it.
 */
import { decodeServerFrame, encodeFrame, encodeFramePrefix } from '../protocol/codec.js';
import {
  CLOSE_POLICY,
  CLOSE_PROTOCOL_ERROR,
  CLOSE_TOO_BIG,
  CLOSE_TOO_MANY_CONNECTIONS,
  CLOSE_UPLOAD_CANCELLED,
  CLOSE_UPLOAD_EXPIRED,
  CLOSE_UPLOAD_FAILED,
  CLOSE_UPLOAD_NOT_FOUND,
  NATIVE_SUBPROTOCOL,
} from '../protocol/messages.js';
import type { ChunkMessage, ServerMessage } from '../protocol/messages.js';
import { ClientError } from './errors.js';
import type { RetryEvent } from './http.js';
import type { ChunkPlan } from './plan.js';
import { backoffDelay } from './retry.js';
import type { RetryPolicy } from './retry.js';
import type { ChunkSource } from './source.js';

/** The part of the WHATWG WebSocket API used here; the browser's WebSocket and `ws` both provide it. */
interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  readonly readyState: number;
  /** Bytes queued by send() and not yet handed to the network (both the browser's WebSocket and `ws` have it). */
  readonly bufferedAmount: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

type WebSocketCtor = new (url: string, protocols?: string[], options?: Record<string, unknown>) => WebSocketLike;

let implementation: Promise<{ ctor: WebSocketCtor; isWsPackage: boolean }> | undefined;

/** The global WebSocket (browsers, Node >= 22), else the `ws` package (Node 20). */
function webSocketImpl(): Promise<{ ctor: WebSocketCtor; isWsPackage: boolean }> {
  implementation ??= (async () => {
    const g = (globalThis as { WebSocket?: unknown }).WebSocket;
    if (typeof g === 'function') return { ctor: g as WebSocketCtor, isWsPackage: false };
    try {
      const mod = (await import('ws')) as unknown as { WebSocket?: unknown; default?: unknown };
      return { ctor: (mod.WebSocket ?? mod.default) as WebSocketCtor, isWsPackage: true };
    } catch (e) {
      implementation = undefined;
      throw new ClientError('ERR_WEBSOCKET_FAILED', 'No WebSocket implementation: install the "ws" package', { cause: e });
    }
  })();
  return implementation;
}

/** How long a client that stops gives the server to answer its close frame before dropping the connection. */
const CLOSE_GRACE_MS = 1000;

/** A connection paused this long with nothing in flight is closed (`parked`) until the upload resumes. */
const PARK_AFTER_MS = 2000;

export type WsOutcome =
  | { kind: 'complete'; fileName: string; size: number }
  | { kind: 'connect-failed'; error: ClientError }
  | { kind: 'dropped'; error: ClientError; progressed: boolean }
  | { kind: 'all-stored' }
  | { kind: 'parked' };

export interface WsSessionOptions {
  /** ws:// or wss:// URL of the upload: `<endpoint>/upload-chunk?guid=G`. */
  url: URL;
  token: string | undefined;
  guid: string;
  plan: ChunkPlan;
  source: ChunkSource;
  /** Upper bound for chunks in flight; the server's hello may lower it. */
  window: number | undefined;
  /** A chunk longer than this (and without a checksum) goes as `part` frames of this size; 0: never. */
  partSize: number;
  /**
   * The server dropped a chunk because its next part came too late (`ERR_CHUNK_INCOMPLETE`, a slow link): parts are
   * halved from now on (to MIN_PART_SIZE at least), and this tells the caller the new size for later connections.
   */
  onSlowParts: (partSize: number) => void;
  /**
   * With chunks in flight, how long the connection may carry nothing (no message from the server, and none of our
   * queued bytes leaving) before it counts as dead and is dropped (then reconnected, or PUT in `auto`).
   */
  stallTimeoutMs: number;
  checksum: 'sha256' | undefined;
  connectTimeoutMs: number;
  retry: RetryPolicy;
  signal: AbortSignal;
  isPaused: () => boolean;
  onHello: () => void;
  onStored: (chunk: number) => void;
  onRetry: (e: RetryEvent) => void;
}

/** RFC 7230 token characters: what a Sec-WebSocket-Protocol entry may hold. */
const TOKEN = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const subtle = (globalThis as { crypto?: Crypto }).crypto?.subtle;
  if (subtle === undefined) throw new ClientError('ERR_CHECKSUM_UNAVAILABLE');
  const digest = new Uint8Array(await subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>));
  let hex = '';
  for (const b of digest) hex += b.toString(16).padStart(2, '0');
  return hex;
}

/** Close codes after which no reconnect can help, and the error each stands for when no `error` came first. */
const FATAL_CLOSE: Record<number, string> = {
  [CLOSE_UPLOAD_CANCELLED]: 'ERR_UPLOAD_CANCELLED',
  [CLOSE_UPLOAD_NOT_FOUND]: 'ERR_UPLOAD_NOT_FOUND',
  [CLOSE_UPLOAD_FAILED]: 'ERR_UPLOAD_FAILED',
  [CLOSE_UPLOAD_EXPIRED]: 'ERR_UPLOAD_EXPIRED',
  [CLOSE_POLICY]: 'ERR_UNAUTHORIZED',
  [CLOSE_PROTOCOL_ERROR]: 'ERR_PROTOCOL',
  [CLOSE_TOO_BIG]: 'ERR_BODY_TOO_LARGE',
};

/** The smallest part the client shrinks to on a slow link (see WsSessionOptions.onSlowParts). */
export const MIN_PART_SIZE = 64 * 1024;

export class WsSession {
  readonly #o: WsSessionOptions;
  #partSize: number;
  /** The stall watchdog: when the connection last showed life, and the bufferedAmount seen then. */
  #lastLife = 0;
  #lastBuffered = 0;
  /** When the watchdog last asked for a `status` because nothing was in flight. */
  #lastProbe = 0;
  /** When the watchdog first saw the upload paused with nothing in flight here (0: not so). */
  #idlePausedSince = 0;
  #watchdog: ReturnType<typeof setInterval> | undefined;
  #ws: WebSocketLike | undefined;
  #window = 1;
  #hello = false;
  #progressed = false;
  #settled = false;
  #pumping = false;
  #pumpAgain = false;
  /** Chunks sent on this connection and not yet answered (they hold a window slot). */
  readonly #inFlight = new Set<number>();
  /** Chunks refused with `retry: true`, waiting out a backoff before they go back into the plan. */
  readonly #cooling = new Map<number, ReturnType<typeof setTimeout>>();
  readonly #attempts = new Map<number, number>();
  #lastError: ClientError | undefined;
  #connectTimer: ReturnType<typeof setTimeout> | undefined;
  #resolve!: (o: WsOutcome) => void;
  #reject!: (e: unknown) => void;
  #onAbort = (): void => this.#fail(this.#o.signal.reason);

  constructor(options: WsSessionOptions) {
    this.#o = options;
    this.#partSize = options.partSize;
  }

  async run(): Promise<WsOutcome> {
    let impl: { ctor: WebSocketCtor; isWsPackage: boolean };
    try {
      impl = await webSocketImpl();
    } catch (e) {
      // No WebSocket here at all: the same as a connection that cannot be made (`auto` goes on over PUT).
      const error = e instanceof ClientError ? e : new ClientError('ERR_WEBSOCKET_FAILED', (e as Error).message, { cause: e });
      return { kind: 'connect-failed', error };
    }
    const { ctor, isWsPackage } = impl;
    const o = this.#o;
    if (o.signal.aborted) throw o.signal.reason;
    return new Promise<WsOutcome>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
      o.signal.addEventListener('abort', this.#onAbort, { once: true });

      const url = new URL(o.url);
      const protocols = [NATIVE_SUBPROTOCOL];
      const wsOptions: Record<string, unknown> = {};
      if (o.token !== undefined) {
        // Browsers cannot set headers on a WebSocket: the token rides in a subprotocol entry, or in the query when
        // it has characters a subprotocol cannot carry. The `ws` package can send the header.
        if (isWsPackage) wsOptions.headers = { authorization: `Bearer ${o.token}` };
        else if (TOKEN.test(o.token)) protocols.push(`bearer.${o.token}`);
        else url.searchParams.set('token', o.token);
      }
      // Chunks are file data: compression would cost CPU on both ends for little gain.
      if (isWsPackage) wsOptions.perMessageDeflate = false;

      let ws: WebSocketLike;
      try {
        ws = isWsPackage ? new ctor(url.href, protocols, wsOptions) : new ctor(url.href, protocols);
      } catch (e) {
        this.#settle({ kind: 'connect-failed', error: new ClientError('ERR_WEBSOCKET_FAILED', (e as Error).message, { cause: e }) });
        return;
      }
      this.#ws = ws;
      ws.binaryType = 'arraybuffer';
      this.#connectTimer = setTimeout(() => {
        this.#lastError = new ClientError('ERR_WEBSOCKET_FAILED', `No hello within ${o.connectTimeoutMs} ms`);
        this.#dropSocket(1000, 'hello timeout');
        this.#settle({ kind: 'connect-failed', error: this.#lastError });
      }, o.connectTimeoutMs);
      ws.onopen = () => {
        if (ws.protocol !== NATIVE_SUBPROTOCOL) {
          const error = new ClientError('ERR_WEBSOCKET_FAILED', `Server did not accept the ${NATIVE_SUBPROTOCOL} subprotocol`);
          this.#closeSocket(1000, 'subprotocol');
          this.#settle({ kind: 'connect-failed', error });
        }
      };
      ws.onmessage = (ev) => {
        this.#lastLife = Date.now();
        try {
          this.#onMessage(ev.data);
        } catch (e) {
          this.#fail(e);
        }
      };
      ws.onclose = (ev) => this.#onClose(ev.code, ev.reason);
      ws.onerror = () => {
        // Always followed by close, which carries the code; browsers give no detail here.
      };
    });
  }

  /** Sends more chunks if the window allows (after resume() or a retry's backoff). */
  kick(): void {
    void this.#pump();
  }

  #onMessage(data: unknown): void {
    if (this.#settled) return;
    if (typeof data === 'string') throw this.#protocolError('text frame received');
    let m: ServerMessage;
    try {
      m = decodeServerFrame(data as ArrayBuffer);
    } catch (e) {
      throw this.#protocolError((e as Error).message);
    }
    const plan = this.#o.plan;
    switch (m.t) {
      case 'hello': {
        if (this.#hello) throw this.#protocolError('second hello');
        if (m.guid !== this.#o.guid || m.chunkSize !== plan.chunkSize || m.fileSize !== plan.fileSize || m.totalChunks !== plan.totalChunks) {
          throw this.#protocolError('hello describes another upload');
        }
        clearTimeout(this.#connectTimer);
        this.#hello = true;
        // 0: the server's budget is taken by other connections; a `window` message will say when to send.
        this.#window = Math.min(this.#o.window ?? m.window, m.window);
        const largestPrefix = encodeFramePrefix({ t: 'chunk', c: Math.max(0, plan.totalChunks - 1), k: { a: 'sha256', v: '0'.repeat(64) } }).length;
        if (plan.chunkSize + largestPrefix > m.maxFrame) {
          // The server would end the connection on our first full chunk: use PUT instead.
          this.#closeSocket(1000, 'frame limit');
          this.#settle({ kind: 'connect-failed', error: new ClientError('ERR_WEBSOCKET_FAILED', `maxFrame ${m.maxFrame} is below the chunk size`) });
          return;
        }
        plan.adopt(m.missing);
        this.#startWatchdog();
        this.#o.onHello();
        if (plan.allStored) {
          // Nothing left to send; the caller waits for completion through upload-status.
          this.#closeSocket(1000, 'nothing to send');
          this.#settle({ kind: 'all-stored' });
          return;
        }
        void this.#pump();
        return;
      }
      case 'ack': {
        if (!this.#inFlight.delete(m.c)) return; // not ours on this connection (or answered already)
        this.#progressed = true;
        plan.stored(m.c, 'websocket');
        this.#o.onStored(m.c);
        void this.#pump();
        return;
      }
      case 'error': {
        const error = new ClientError(m.code, m.message, { retryable: m.retry, guid: this.#o.guid });
        if (m.c === undefined) {
          this.#lastError = error; // a close with the matching code follows
          return;
        }
        if (!this.#inFlight.delete(m.c)) return;
        if (!m.retry) throw error;
        if (m.code === 'ERR_CHUNK_INCOMPLETE' && this.#partSize > MIN_PART_SIZE) {
          // Its parts came too slowly for the server's wsPartTimeout: send smaller ones (each arrives sooner).
          this.#partSize = Math.max(MIN_PART_SIZE, Math.floor(this.#partSize / 2 / 4096) * 4096);
          this.#o.onSlowParts(this.#partSize);
        }
        const attempt = (this.#attempts.get(m.c) ?? 0) + 1;
        this.#attempts.set(m.c, attempt);
        if (attempt > this.#o.retry.attempts) throw error;
        const c = m.c;
        const delayMs = backoffDelay(this.#o.retry, attempt);
        this.#o.onRetry({ operation: `chunk ${c}`, attempt, delayMs, error });
        // The chunk stays in flight in the plan (nobody else takes it) but frees its slot on this connection.
        this.#cooling.set(
          c,
          setTimeout(() => {
            this.#cooling.delete(c);
            plan.release(c);
            void this.#pump();
          }, delayMs),
        );
        void this.#pump();
        return;
      }
      case 'complete':
        this.#settle({ kind: 'complete', fileName: m.fileName, size: m.size });
        return;
      case 'window':
        // The server shares its memory among its connections: from now on, at most this many chunks unanswered.
        this.#window = Math.min(this.#o.window ?? m.window, m.window);
        void this.#pump();
        return;
      case 'progress':
        return;
    }
  }

  #onClose(code: number, reason: string): void {
    if (this.#settled) return;
    const fatalCode = FATAL_CLOSE[code];
    if (this.#lastError !== undefined && !this.#lastError.retryable) {
      this.#fail(this.#lastError);
    } else if (fatalCode !== undefined && this.#hello) {
      this.#fail(this.#lastError ?? new ClientError(fatalCode, `WebSocket closed with ${code}${reason ? `: ${reason}` : ''}`, { guid: this.#o.guid }));
    } else if (!this.#hello && code === CLOSE_TOO_MANY_CONNECTIONS) {
      // The server has no room for another connection of this user now: try again later (backoff), not PUT at once.
      const error = new ClientError('ERR_RATE_LIMITED', `WebSocket closed with ${code}${reason ? `: ${reason}` : ''}`, { retryable: true, guid: this.#o.guid });
      this.#settle({ kind: 'dropped', error, progressed: false });
    } else if (!this.#hello) {
      const detail = `WebSocket closed with ${code} before hello${reason ? `: ${reason}` : ''}`;
      this.#settle({ kind: 'connect-failed', error: this.#lastError ?? new ClientError('ERR_WEBSOCKET_FAILED', detail) });
    } else if (this.#o.plan.allStored) {
      this.#settle({ kind: 'all-stored' });
    } else {
      const detail = `WebSocket closed with ${code}${reason ? `: ${reason}` : ''}`;
      this.#settle({ kind: 'dropped', error: this.#lastError ?? new ClientError('ERR_WEBSOCKET_FAILED', detail), progressed: this.#progressed });
    }
  }

  async #pump(): Promise<void> {
    if (this.#pumping) {
      this.#pumpAgain = true;
      return;
    }
    this.#pumping = true;
    const o = this.#o;
    try {
      do {
        this.#pumpAgain = false;
        while (!this.#settled && this.#hello && !o.isPaused() && this.#inFlight.size < this.#window) {
          const c = o.plan.take('websocket');
          if (c === undefined) break;
          this.#inFlight.add(c);
          const bytes = await o.source.read(o.plan.chunkStart(c), o.plan.chunkEnd(c));
          const header: ChunkMessage = { t: 'chunk', c };
          if (o.checksum === 'sha256') header.k = { a: 'sha256', v: await sha256Hex(bytes) };
          if (this.#settled) return; // the teardown has already given c back to the plan (#finish)
          const partSize = this.#partSize;
          if (header.k === undefined && partSize > 0 && bytes.length > partSize) {
            // Parts of one chunk go back to back (no await between them): nothing else may come in between.
            for (let off = 0; off < bytes.length; off += partSize) {
              this.#ws!.send(encodeFrame({ t: 'part', c, o: off }, bytes.subarray(off, off + partSize)));
            }
          } else {
            this.#ws!.send(encodeFrame(header, bytes));
          }
        }
      } while (this.#pumpAgain && !this.#settled);
    } catch (e) {
      this.#fail(e);
    } finally {
      this.#pumping = false;
    }
  }

  /**
   * A connection can go dead without a close (a network change, a half-open NAT, a stalled peer): nothing would ever
   * settle the session. A message from the server or our own queued bytes leaving (bufferedAmount going down) count
   * as life; none for stallTimeoutMs drops the connection. With nothing in flight (a window of 0 while other
   * connections have their turn, or every chunk stored and the file being placed) no answer is due, so the session
   * asks for one: a `status` every half stallTimeoutMs of silence, whose `progress` reply shows the path still works
   * (a lost `window` message would otherwise leave it waiting for good). Paused by the caller, it waits.
   */
  #startWatchdog(): void {
    const limit = this.#o.stallTimeoutMs;
    this.#lastLife = Date.now();
    this.#lastBuffered = this.#ws?.bufferedAmount ?? 0;
    this.#watchdog = setInterval(() => {
      const ws = this.#ws;
      if (this.#settled || ws === undefined) return;
      const now = Date.now();
      const buffered = ws.bufferedAmount;
      if (buffered < this.#lastBuffered || this.#o.isPaused()) this.#lastLife = now;
      this.#lastBuffered = buffered;
      // Paused with nothing in flight (or cooling): close, so that a paused upload keeps none of the server's
      // per-user connection slots (8 paused uploads would otherwise keep a 9th from connecting).
      // Not once every chunk is stored: the completion may still come on this connection.
      const idlePaused = this.#o.isPaused() && this.#inFlight.size === 0 && this.#cooling.size === 0 && buffered === 0 && !this.#o.plan.allStored;
      if (!idlePaused) this.#idlePausedSince = 0;
      else if (this.#idlePausedSince === 0) this.#idlePausedSince = now;
      else if (now - this.#idlePausedSince >= PARK_AFTER_MS) {
        this.#closeWithGrace(1000, 'paused');
        this.#settle({ kind: 'parked' });
        return;
      }
      if (this.#inFlight.size === 0 && now - this.#lastLife >= limit / 2 && now - this.#lastProbe >= limit / 2) {
        this.#lastProbe = now;
        ws.send(encodeFrame({ t: 'status' }));
      }
      if (now - this.#lastLife < limit) return;
      const error = new ClientError('ERR_WEBSOCKET_FAILED', `No answer from the server for ${Math.round((now - this.#lastLife) / 1000)} s`);
      this.#dropSocket(1000, 'stalled');
      this.#settle({ kind: 'dropped', error, progressed: this.#progressed });
    }, Math.max(10, Math.min(1000, Math.floor(limit / 4))));
    (this.#watchdog as { unref?: () => void }).unref?.();
  }

  #protocolError(detail: string): ClientError {
    this.#closeSocket(CLOSE_PROTOCOL_ERROR, 'protocol error');
    return new ClientError('ERR_PROTOCOL', `updraft.v1: ${detail}`, { guid: this.#o.guid });
  }

  #closeSocket(code: number, reason: string): void {
    const ws = this.#ws;
    if (ws === undefined || ws.readyState >= 2) return; // CLOSING or CLOSED
    try {
      ws.close(code, reason);
    } catch {
      // close() throws only for invalid codes/reasons, which ours are not.
    }
  }

  /**
   * Closes a connection that is not answering. A close handshake would wait for an answer that may never come: the
   * `ws` package keeps the socket (and the Node process) alive for its 30 s close timeout. So terminate it where
   * that exists; a browser's WebSocket has only close(), and the browser handles the rest.
   */
  #dropSocket(code: number, reason: string): void {
    const ws = this.#ws as (WebSocketLike & { terminate?: () => void }) | undefined;
    if (ws === undefined || ws.readyState >= 2) return;
    if (typeof ws.terminate === 'function') ws.terminate();
    else this.#closeSocket(code, reason);
  }

  /**
   * Closes with a handshake, and drops the connection if the peer has not answered within CLOSE_GRACE_MS: a peer that
   * never answers (a dead route) would keep the socket, and a Node process, up for ws's 30 s close timeout.
   */
  #closeWithGrace(code: number, reason: string): void {
    this.#closeSocket(code, reason);
    const ws = this.#ws as (WebSocketLike & { terminate?: () => void }) | undefined;
    const drop = setTimeout(() => {
      // Still not CLOSED: the handshake went unanswered (CLOSING is what a sent, unanswered close looks like).
      if (ws !== undefined && ws.readyState !== 3 && typeof ws.terminate === 'function') ws.terminate();
    }, CLOSE_GRACE_MS);
    (drop as { unref?: () => void }).unref?.();
  }

  #fail(e: unknown): void {
    if (this.#settled) return;
    this.#closeWithGrace(1000, 'client stopped');
    this.#finish();
    this.#reject(e);
  }

  #settle(outcome: WsOutcome): void {
    if (this.#settled) return;
    this.#finish();
    this.#resolve(outcome);
  }

  /** Common teardown: chunks not acknowledged here go back to the plan; later events are ignored. */
  #finish(): void {
    this.#settled = true;
    clearTimeout(this.#connectTimer);
    clearInterval(this.#watchdog);
    this.#o.signal.removeEventListener('abort', this.#onAbort);
    for (const t of this.#cooling.values()) clearTimeout(t);
    for (const c of this.#cooling.keys()) this.#o.plan.release(c);
    for (const c of this.#inFlight) this.#o.plan.release(c);
    this.#cooling.clear();
    this.#inFlight.clear();
    const ws = this.#ws;
    if (ws !== undefined) {
      ws.onmessage = null;
      ws.onopen = null;
      // Keep onclose/onerror as no-ops: a late error event with no handler is harmless, but be explicit.
      ws.onclose = null;
      ws.onerror = () => {};
      if (ws.readyState === 1) this.#closeSocket(1000, 'done');
    }
  }
}

/**
 * Which chunks of one upload are still to send, which are on the wire, and which the server has acknowledged.
 * Both transports draw from the same plan, so a switch from WebSocket to PUT mid-upload never resends a chunk
 * the server confirmed, and the server's view (hello bitmap, upload-status) can overrule ours at any time.
 *
 * Bytes are counted once per chunk, when the server acknowledges it, and attributed to the transport that carried
 * it in this session; chunks the server already had when this session started count as `resumedBytes`.
 */

export type TransportName = 'websocket' | 'http';

export interface BytesByTransport {
  websocket: number;
  http: number;
}

const PENDING = 0;
const IN_FLIGHT = 1;
const STORED = 2;

const NOT_SENT = 0;
const SENT_WS = 1;
const SENT_HTTP = 2;

export class ChunkPlan {
  readonly fileSize: number;
  readonly chunkSize: number;
  readonly totalChunks: number;
  /** Bytes the server has acknowledged (from any session). */
  storedBytes = 0;
  /** Bytes the server already had when this session first learned its state. */
  resumedBytes = 0;
  readonly bytesByTransport: BytesByTransport = { websocket: 0, http: 0 };
  readonly #state: Uint8Array;
  readonly #sentBy: Uint8Array;
  #pending: number;
  #storedCount = 0;
  /** Every chunk below this index is known not to be PENDING (the scan for the next chunk starts here). */
  #cursor = 0;

  constructor(fileSize: number, chunkSize: number, totalChunks: number) {
    this.fileSize = fileSize;
    this.chunkSize = chunkSize;
    this.totalChunks = totalChunks;
    this.#state = new Uint8Array(totalChunks);
    this.#sentBy = new Uint8Array(totalChunks);
    this.#pending = totalChunks;
  }

  chunkStart(c: number): number {
    return c * this.chunkSize;
  }

  chunkEnd(c: number): number {
    return Math.min(this.fileSize, (c + 1) * this.chunkSize);
  }

  chunkLength(c: number): number {
    return this.chunkEnd(c) - this.chunkStart(c);
  }

  /** True when the server has acknowledged every chunk (the file may still be finalizing). */
  get allStored(): boolean {
    return this.#storedCount === this.totalChunks;
  }

  /** True while some chunk is neither stored nor on the wire. */
  get hasPending(): boolean {
    return this.#pending > 0;
  }

  /** Takes the lowest pending chunk and marks it in flight for `transport`; undefined when none is pending. */
  take(transport: TransportName): number | undefined {
    if (this.#pending === 0) return undefined;
    for (let c = this.#cursor; c < this.totalChunks; c++) {
      if (this.#state[c] === PENDING) {
        this.#state[c] = IN_FLIGHT;
        this.#sentBy[c] = transport === 'websocket' ? SENT_WS : SENT_HTTP;
        this.#pending--;
        this.#cursor = c + 1;
        return c;
      }
    }
    return undefined;
  }

  /** Puts an in-flight chunk back: it was not acknowledged (error, drop) and must be sent again. */
  release(c: number): void {
    if (this.#state[c] !== IN_FLIGHT) return;
    this.#state[c] = PENDING;
    this.#pending++;
    if (c < this.#cursor) this.#cursor = c;
  }

  /** The server acknowledged chunk `c`, received over `transport`. Idempotent. */
  stored(c: number, transport: TransportName): void {
    this.#markStored(c, transport === 'websocket' ? SENT_WS : SENT_HTTP);
  }

  #markStored(c: number, via: number): void {
    const s = this.#state[c];
    if (s === STORED) return;
    if (s === PENDING) this.#pending--;
    this.#state[c] = STORED;
    this.#storedCount++;
    const len = this.chunkLength(c);
    this.storedBytes += len;
    if (via === SENT_WS) this.bytesByTransport.websocket += len;
    else if (via === SENT_HTTP) this.bytesByTransport.http += len;
    else this.resumedBytes += len;
  }

  /**
   * Adopts the server's view: every chunk not in `missing` is stored (if we sent it in this session but never saw
   * its ack, e.g. the connection dropped after the write, the transport that sent it gets the bytes); every chunk in
   * `missing` that is not in flight becomes pending again. Call it only when nothing is in flight, or accept that
   * in-flight chunks stay in flight.
   */
  adopt(missing: readonly number[]): void {
    const isMissing = new Uint8Array(this.totalChunks);
    for (const c of missing) if (c >= 0 && c < this.totalChunks) isMissing[c] = 1;
    for (let c = 0; c < this.totalChunks; c++) {
      const s = this.#state[c];
      if (isMissing[c] === 0) {
        if (s !== STORED) this.#markStored(c, this.#sentBy[c]!);
      } else if (s === STORED) {
        // The server lost a chunk it had acknowledged (it should not happen; trust the server and resend).
        this.#state[c] = PENDING;
        this.#storedCount--;
        this.#pending++;
        const len = this.chunkLength(c);
        this.storedBytes -= len;
        if (this.#sentBy[c] === SENT_WS) this.bytesByTransport.websocket -= len;
        else if (this.#sentBy[c] === SENT_HTTP) this.bytesByTransport.http -= len;
        else this.resumedBytes -= len;
        if (c < this.#cursor) this.#cursor = c;
      }
    }
  }

  /** Chunks in flight, e.g. to release them all when a connection drops. */
  inFlight(): number[] {
    const out: number[] = [];
    for (let c = 0; c < this.totalChunks; c++) if (this.#state[c] === IN_FLIGHT) out.push(c);
    return out;
  }
}

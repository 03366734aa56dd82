/**
 * `upload(source, options)`: one file, end to end (issue 4).
 *
 *   1. Find the upload: the caller's `guid` (Node) or the one remembered for this File (browser localStorage), read
 *      back with upload-status; otherwise init a new one.
 *   2. Send chunks. `auto`: the updraft.v1 WebSocket; if it cannot connect, or drops and the one reconnect that
 *      follows cannot connect either, ask upload-status which chunks are missing and PUT them, `parallel` at a time,
 *      on the same guid. `websocket` and `http` use one transport only.
 *   3. Completion is the server's word only: a `complete` frame, a PUT reply with `complete: true`, or
 *      upload-status `completed`. Acknowledging the last chunk is not enough (the server still syncs and renames).
 *
 * Stopping: `cancel()` deletes the upload on the server and rejects `done` with ERR_UPLOAD_CANCELLED; the caller's
 * `signal` stops without deleting (ERR_ABORTED, carrying the guid to resume with). `pause()` sends no new chunk;
 * those already on the wire finish.
 */
import { ClientError } from './errors.js';
import { HttpApi } from './http.js';
import type { InitFields, InitResult, RetryEvent } from './http.js';
import { ChunkPlan } from './plan.js';
import type { BytesByTransport, TransportName } from './plan.js';
import { SpeedMeter, etaSeconds } from './progress.js';
import type { UploadProgress, UploadState } from './progress.js';
import { forgetGuid, loadGuid, resumeKey, saveGuid } from './resume-store.js';
import { backoffDelay, resolveRetry, sleep } from './retry.js';
import type { RetryOptions, RetryPolicy } from './retry.js';
import { SourceChangedError, openSource, sourceFingerprint } from './source.js';
import type { ChunkSource, UploadSource } from './source.js';
import { WsSession, sha256Hex } from './websocket.js';

export type TransportMode = 'auto' | 'websocket' | 'http';

export interface UploadOptions {
  /** The API prefix URL, e.g. `http://127.0.0.1:8080/api/v1/files` (relative URLs resolve against the page). */
  endpoint: string | URL;
  /** Bearer token: the Authorization header; on a browser WebSocket a `bearer.<token>` subprotocol or `?token=`. */
  token?: string;
  /** Name on the server; default the File's name or the path's last segment ('data.bin' for bytes). */
  fileName?: string;
  /** Root-relative folder on the server ('a/b'); default the upload root. */
  targetPath?: string;
  /** Bytes per chunk; default the server's. */
  chunkSize?: number;
  /** Default 'auto'. */
  transport?: TransportMode;
  /** HTTP PUTs in flight at once. Default 4. */
  parallel?: number;
  /** Most unacknowledged chunks on the WebSocket; the server's hello may lower it. Default the server's. */
  window?: number;
  /**
   * WebSocket: a chunk longer than this goes as `part` frames of this many bytes, which the server writes as they
   * arrive instead of holding a whole chunk per frame. 0: every chunk in one frame. Default 2 MiB. Chunks with a
   * checksum always go whole. On a link too slow for the server's `wsPartTimeout` (a chunk answered
   * ERR_CHUNK_INCOMPLETE), the parts are halved, down to 64 KiB.
   */
  partSize?: number;
  /** 'sha256': every WebSocket chunk carries its digest and the server checks it (the HTTP PUT has no such field). */
  checksum?: 'sha256';
  /** Stops the upload without deleting it on the server; `done` rejects with ERR_ABORTED (resume with the guid). */
  signal?: AbortSignal;
  retry?: RetryOptions;
  /** Resume this upload (Node; a browser resumes by itself, see `resume`): checked against the source's size and fingerprint. */
  guid?: string;
  /** Browser: remember the guid in localStorage so a reload continues the same File. Default true. */
  resume?: boolean;
  /** How long to wait for the WebSocket's hello before calling the connection failed. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * How long a WebSocket may carry nothing (no message from the server, none of the queued bytes leaving) before it
   * is dropped as dead and reconnected (or, in `auto`, replaced by PUT). With nothing in flight (waiting for its
   * turn, or for the file to be placed) it sends a `status` after half of this in silence, so the answer shows the
   * path works. Default 60 s.
   */
  stallTimeoutMs?: number;
  /**
   * How long to poll upload-status for the file to be placed (the server's final sync, the move, an
   * `onUploadComplete` hook) once the client knows every chunk is stored but has no reply saying the file is in
   * place: after a resume, a reconnect or a lost reply. Past it, `done` rejects with ERR_FINALIZE_TIMEOUT and the
   * guid, and the upload stays on the server. (The last chunk's own PUT or WebSocket acknowledgement waits for the
   * placement itself, bounded by that transport's timeouts and retries.) Default 10 min.
   */
  finalizeTimeoutMs?: number;
  /** Same as `handle.on('progress', fn)`, registered before the upload starts. */
  onProgress?: (p: UploadProgress) => void;
}

export interface UploadResult {
  guid: string;
  /** The name the server gave the file (it can differ from the one asked for, after a conflict rename). */
  fileName: string;
  size: number;
  /** Bytes the server acknowledged in this session, by the transport that carried them. */
  bytesByTransport: BytesByTransport;
  /** Bytes the server already had when this session started (a resume). */
  resumedBytes: number;
}

export interface TransportEvent {
  transport: TransportName;
  /** Why this transport: 'connected', or what made the client fall back to HTTP. */
  reason: string;
}

export interface UploadEvents {
  progress: UploadProgress;
  state: UploadState;
  transport: TransportEvent;
  retry: RetryEvent;
}

interface Completion {
  fileName: string;
  size: number;
}

/** UploadOptions.finalizeTimeoutMs's default, and the longest a timer can wait (2^31 - 1 ms, about 24.8 days). */
const DEFAULT_FINALIZE_TIMEOUT_MS = 10 * 60 * 1000;
const MAX_TIMER_MS = 2 ** 31 - 1;
/** WebSocket part size (UploadOptions.partSize): the server's slab size, so each part fills one slab. */
const DEFAULT_PART_SIZE = 2 * 1024 * 1024;
/** Shortest wait between tries while every WebSocket slot of the user is taken (4029) in `websocket` mode. */
const WAIT_FOR_SLOT_MIN_MS = 1000;

const TERMINAL: ReadonlySet<UploadState> = new Set(['done', 'failed', 'cancelled']);

/** How long an init already sent may still answer after a stop, so the stop can delete what it created (ms). */
const INIT_STOP_GRACE_MS = 5_000;

function positiveInt(name: string, v: unknown, min = 1): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new TypeError(`${name} must be an integer >= ${min}`);
  return v;
}

function resolveEndpoint(endpoint: string | URL): URL {
  const base = typeof location !== 'undefined' ? location.href : undefined;
  let url: URL;
  try {
    url = new URL(String(endpoint), base);
  } catch {
    throw new TypeError(`endpoint must be an absolute URL (or relative, in a browser): ${String(endpoint)}`);
  }
  // Every request URL is `<endpoint>/upload-chunk?...`: a query or fragment would end up before the route's path.
  if (url.href.includes('?') || url.href.includes('#')) throw new TypeError(`endpoint must be the API prefix alone, without a query string or fragment: ${url.origin}${url.pathname}`);
  return url;
}

/**
 * The upload's WebSocket URL, built from `endpoint` like every HTTP URL: not from the init reply's `uploadUrl`,
 * which is relative to the server's own root and misses the path of a proxy that mounts it under a prefix.
 */
function webSocketUrl(endpoint: URL, guid: string): URL {
  const u = new URL(`${endpoint.href.replace(/\/+$/, '')}/upload-chunk?guid=${encodeURIComponent(guid)}`);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u;
}

export class UploadHandle {
  /** Resolves when the server has the whole file under its final name. */
  readonly done: Promise<UploadResult>;
  readonly #source: UploadSource;
  readonly #o: UploadOptions;
  readonly #endpoint: URL;
  readonly #mode: TransportMode;
  readonly #parallel: number;
  readonly #window: number | undefined;
  /** Halved by a WebSocket session whose parts were too slow for the server (see WsSessionOptions.onSlowParts). */
  #partSize: number;
  readonly #chunkSize: number | undefined;
  readonly #retry: RetryPolicy;
  readonly #ac = new AbortController();
  readonly #listeners: { [K in keyof UploadEvents]: Set<(e: UploadEvents[K]) => void> } = {
    progress: new Set(),
    state: new Set(),
    transport: new Set(),
    retry: new Set(),
  };
  readonly #speed = new SpeedMeter();
  #api!: HttpApi;
  #src: ChunkSource | undefined;
  #plan: ChunkPlan | undefined;
  #guid: string | undefined;
  #fileName: string;
  #state: UploadState = 'starting';
  #transport: TransportName | null = null;
  #paused = false;
  /** The guid cancel() deleted on the server already (a remembered one may since have given way to a new init). */
  #serverCancelled: string | undefined;
  #resumeWaiters: Array<() => void> = [];
  #ws: WsSession | undefined;
  #storeKey: string | undefined;
  #ticker: ReturnType<typeof setInterval> | undefined;
  #stopReason: ClientError | undefined;
  readonly #finalizeTimeoutMs: number;
  /** Runs while the state is 'finalizing' (finalizeTimeoutMs). */
  #finalizeTimer: ReturnType<typeof setTimeout> | undefined;
  /** Why `auto` left the WebSocket, for the 'transport' event. */
  #fallbackReason = '';

  constructor(source: UploadSource, options: UploadOptions) {
    if (options === null || typeof options !== 'object') throw new TypeError('upload(source, options): options are required');
    this.#source = source;
    this.#o = options;
    this.#endpoint = resolveEndpoint(options.endpoint);
    this.#mode = options.transport ?? 'auto';
    if (!['auto', 'websocket', 'http'].includes(this.#mode)) throw new TypeError(`transport must be auto, websocket or http`);
    this.#parallel = positiveInt('parallel', options.parallel) ?? 4;
    this.#window = positiveInt('window', options.window);
    this.#partSize = options.partSize === 0 ? 0 : (positiveInt('partSize', options.partSize) ?? DEFAULT_PART_SIZE);
    this.#chunkSize = positiveInt('chunkSize', options.chunkSize);
    this.#finalizeTimeoutMs = positiveInt('finalizeTimeoutMs', options.finalizeTimeoutMs) ?? DEFAULT_FINALIZE_TIMEOUT_MS;
    // setTimeout fires at once (with a warning) for anything longer.
    if (this.#finalizeTimeoutMs > MAX_TIMER_MS) throw new TypeError(`finalizeTimeoutMs must be at most ${MAX_TIMER_MS}`);
    if (options.checksum !== undefined && options.checksum !== 'sha256') throw new TypeError(`checksum must be 'sha256'`);
    this.#retry = resolveRetry(options.retry);
    this.#fileName = options.fileName ?? '';
    if (options.onProgress) this.#listeners.progress.add(options.onProgress);

    const signal = options.signal;
    let onAbort: (() => void) | undefined;
    if (signal !== undefined) {
      onAbort = (): void => this.#stop(new ClientError('ERR_ABORTED', undefined, { cause: signal.reason }));
      if (signal.aborted) queueMicrotask(onAbort);
      else signal.addEventListener('abort', onAbort, { once: true });
    }
    this.done = this.#run();
    // One signal may serve many uploads: a finished one must not stay reachable from it.
    if (signal !== undefined && onAbort !== undefined) {
      const listener = onAbort;
      void this.done.then(
        () => signal.removeEventListener('abort', listener),
        () => signal.removeEventListener('abort', listener),
      );
    }
    // A caller that only listens to events must not get an unhandled rejection; awaiting `done` still throws.
    this.done.catch(() => {});
  }

  get guid(): string | undefined {
    return this.#guid;
  }

  get state(): UploadState {
    return this.#state;
  }

  /** The current progress (the same object shape the 'progress' event carries). */
  get progress(): UploadProgress {
    return this.#snapshot();
  }

  on<K extends keyof UploadEvents>(event: K, listener: (e: UploadEvents[K]) => void): () => void {
    this.#listeners[event].add(listener);
    return () => this.#listeners[event].delete(listener);
  }

  /** Sends no new chunk until resume(); chunks already on the wire finish. */
  pause(): void {
    // Nothing is left to send once finalizing; pausing then would only hide the completion.
    if (this.#paused || TERMINAL.has(this.#state) || this.#state === 'finalizing') return;
    this.#paused = true;
    this.#setState('paused');
  }

  resume(): void {
    if (!this.#paused || TERMINAL.has(this.#state)) return;
    this.#paused = false;
    this.#speed.reset();
    this.#setState(this.#plan?.allStored ? 'finalizing' : this.#guid === undefined ? 'starting' : 'uploading');
    for (const w of this.#resumeWaiters.splice(0)) w();
    this.#ws?.kick();
  }

  /**
   * Stops the upload and deletes it on the server; `done` rejects with ERR_UPLOAD_CANCELLED. An init already sent
   * is given a few seconds to answer, so the upload it created is deleted too. Once the upload exists
   * on the server, the server is asked first (no new chunk is sent meanwhile): if every chunk had already arrived
   * and the server is placing (or has placed) the file, it refuses, and `cancel()` rejects with
   * ERR_UPLOAD_FINALIZING while the upload goes on to `done` like any other.
   */
  async cancel(): Promise<void> {
    if (TERMINAL.has(this.#state) || this.#stopReason !== undefined) return this.#cancelStopped();
    const guid = this.#guid;
    if (guid !== undefined) {
      const wasPaused = this.#paused;
      this.#paused = true; // hold new chunks while the server decides (no 'paused' state: the caller did not pause)
      try {
        await this.#api.cancel(guid, new AbortController().signal);
        this.#serverCancelled = guid;
      } catch (e) {
        if (e instanceof ClientError && e.code === 'ERR_UPLOAD_FINALIZING') {
          if (!wasPaused) this.#unpause();
          throw e;
        }
        // Unreachable or gone (404, 410): stop here; the stop tries the delete once more, the TTL cleans up otherwise.
      }
    }
    this.#stop(new ClientError('ERR_UPLOAD_CANCELLED', 'Upload cancelled', { guid: this.#guid }));
    await this.done.catch(() => {});
    // The upload completed before the stop could take effect (a 0-byte file completes at init).
    if (this.#state === 'done') throw new ClientError('ERR_UPLOAD_FINALIZING', undefined, { guid: this.#guid });
  }

  /**
   * cancel() of an upload that has stopped already (or is stopping): a completed one cannot be cancelled (the file is
   * in place: ERR_UPLOAD_FINALIZING, as during the completion); one stopped by the caller's signal or a failure may
   * still be on the server, waiting to be resumed, and is deleted there as cancel() promises.
   */
  async #cancelStopped(): Promise<void> {
    await this.done.catch(() => {});
    const guid = this.#guid;
    if (this.#state === 'done') throw new ClientError('ERR_UPLOAD_FINALIZING', undefined, { guid });
    if (this.#state === 'cancelled' || guid === undefined || this.#serverCancelled === guid) return;
    try {
      await this.#api.cancel(guid, new AbortController().signal);
    } catch (e) {
      // Gone already (expired, cancelled elsewhere, ended by its failure): nothing is left to delete.
      const gone = e instanceof ClientError && (e.status === 404 || e.status === 410 || e.code === 'ERR_UPLOAD_FAILED');
      if (!gone) throw e;
    }
    this.#serverCancelled = guid;
    if (this.#storeKey !== undefined) forgetGuid(this.#storeKey);
  }

  /** Lets held chunks go again (resume() without its state change, for cancel's wait). */
  #unpause(): void {
    this.#paused = false;
    for (const w of this.#resumeWaiters.splice(0)) w();
    this.#ws?.kick();
  }

  #stop(reason: ClientError): void {
    if (this.#stopReason !== undefined || TERMINAL.has(this.#state)) return;
    this.#stopReason = reason;
    this.#ac.abort(reason);
    for (const w of this.#resumeWaiters.splice(0)) w(); // waiters re-check the signal and throw
  }

  // --- events -----------------------------------------------------------------------------------------------------

  #emit<K extends keyof UploadEvents>(event: K, value: UploadEvents[K]): void {
    for (const l of this.#listeners[event]) {
      try {
        l(value);
      } catch (e) {
        // A listener's bug must not break the upload; surface it without swallowing it.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  #setState(s: UploadState): void {
    if (this.#state === s) return;
    if (TERMINAL.has(this.#state)) return;
    this.#state = s;
    // The wait for the file to be placed is bounded; it starts over if chunks turn out to be missing after all.
    clearTimeout(this.#finalizeTimer);
    this.#finalizeTimer = undefined;
    if (s === 'finalizing') {
      this.#finalizeTimer = setTimeout(() => this.#stop(new ClientError('ERR_FINALIZE_TIMEOUT')), this.#finalizeTimeoutMs);
    }
    this.#emit('state', s);
    this.#emitProgress();
  }

  #setTransport(t: TransportName, reason: string): void {
    this.#transport = t;
    this.#emit('transport', { transport: t, reason });
    this.#emitProgress();
  }

  #snapshot(): UploadProgress {
    const plan = this.#plan;
    const total = plan?.fileSize ?? 0;
    const loaded = plan?.storedBytes ?? 0;
    const rate = this.#state === 'uploading' ? this.#speed.rate() : 0;
    return {
      guid: this.#guid,
      fileName: this.#fileName,
      loaded,
      total,
      fraction: total === 0 ? (this.#state === 'done' ? 1 : 0) : loaded / total,
      bytesPerSecond: rate,
      etaSeconds: this.#state === 'done' ? 0 : this.#state === 'uploading' ? etaSeconds(total - loaded, rate) : null,
      transport: TERMINAL.has(this.#state) ? null : this.#transport,
      bytesByTransport: { ...(plan?.bytesByTransport ?? { websocket: 0, http: 0 }) },
      state: this.#state,
    };
  }

  #emitProgress(): void {
    if (this.#listeners.progress.size > 0) this.#emit('progress', this.#snapshot());
  }

  #onStored(chunk: number): void {
    this.#speed.add(this.#plan!.chunkLength(chunk));
    if (this.#plan!.allStored) {
      // Nothing is left to send: a pause that came while the last chunks were on the wire holds nothing any more,
      // and must not hide the completion (pause() refuses once finalizing for the same reason).
      if (this.#paused) this.#unpause();
      this.#setState('finalizing');
    }
    this.#emitProgress();
  }

  #onRetry = (e: RetryEvent): void => {
    this.#emit('retry', e);
  };

  // --- flow -------------------------------------------------------------------------------------------------------

  get #signal(): AbortSignal {
    return this.#ac.signal;
  }

  #whenResumed(): Promise<void> {
    if (this.#signal.aborted) return Promise.reject(this.#signal.reason);
    if (!this.#paused) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.#resumeWaiters.push(() => (this.#signal.aborted ? reject(this.#signal.reason) : resolve()));
    });
  }

  async #run(): Promise<UploadResult> {
    try {
      await Promise.resolve(); // let the constructor return (and listeners attach) before any event
      const result = await this.#upload();
      this.#finishOk();
      return result;
    } catch (e) {
      throw await this.#finishFailed(e);
    } finally {
      clearInterval(this.#ticker);
      await this.#src?.close().catch(() => {});
    }
  }

  async #upload(): Promise<UploadResult> {
    const o = this.#o;
    this.#api = new HttpApi({ endpoint: this.#endpoint, token: o.token, retry: this.#retry, onRetry: this.#onRetry });
    if (o.checksum === 'sha256' && this.#mode !== 'http') await sha256Hex(new Uint8Array(0)); // fail early without WebCrypto
    const src = (this.#src = await openSource(this.#source));
    this.#fileName = o.fileName ?? src.name;
    if (src.isBlob && src.lastModified !== undefined && o.resume !== false) {
      this.#storeKey = resumeKey({
        endpoint: this.#endpoint.href,
        fileName: this.#fileName,
        size: src.size,
        lastModified: src.lastModified,
        ...(o.targetPath === undefined ? {} : { targetPath: o.targetPath }),
      });
    }

    let completion = await this.#findOrCreate(src);
    const plan = this.#plan!;
    const guid = this.#guid!;
    if (this.#storeKey !== undefined && completion === undefined) saveGuid(this.#storeKey, guid);
    if (completion === undefined) {
      this.#speed.reset();
      this.#ticker = setInterval(() => this.#emitProgress(), 1000);
      this.#setState(this.#paused ? 'paused' : plan.allStored ? 'finalizing' : 'uploading');
    }

    let useWebSocket = this.#mode !== 'http';
    while (completion === undefined) {
      if (plan.hasPending) {
        await this.#whenResumed();
        if (useWebSocket) {
          const r = await this.#runWebSocket(webSocketUrl(this.#endpoint, guid));
          if (typeof r === 'object') {
            completion = r;
            break;
          }
          if (r === 'fallback') {
            useWebSocket = false;
            completion = await this.#syncStatus();
          }
          continue;
        }
        if (this.#transport !== 'http') this.#setTransport('http', this.#mode === 'http' ? 'transport: http' : this.#fallbackReason);
        completion = await this.#runHttp();
        continue;
      }
      completion = await this.#awaitCompletion();
    }
    return {
      guid,
      fileName: completion.fileName,
      size: completion.size,
      bytesByTransport: { ...plan.bytesByTransport },
      resumedBytes: plan.resumedBytes,
    };
  }

  /** Resumes the caller's or the remembered guid when it still fits, else inits. A completion when already done. */
  async #findOrCreate(src: ChunkSource): Promise<Completion | undefined> {
    const o = this.#o;
    const explicit = o.guid;
    const remembered = explicit === undefined && this.#storeKey !== undefined ? loadGuid(this.#storeKey) : undefined;
    const guid = explicit ?? remembered;
    const fingerprint = sourceFingerprint(src);
    if (guid !== undefined) {
      // Known from here: a cancel() during the lookup deletes it on the server, and errors name it.
      this.#guid = guid;
      const forget = (): undefined => {
        if (this.#storeKey !== undefined) forgetGuid(this.#storeKey);
        this.#guid = undefined;
        return undefined;
      };
      let st;
      try {
        st = await this.#api.status(guid, this.#signal);
      } catch (e) {
        // A remembered guid the server no longer knows (404; 410 expired): start over. An explicit one,
        // or any other refusal (401 a bad token, 429 busy): report it and keep the guid, which may work next time.
        if (remembered !== undefined && e instanceof ClientError && (e.status === 404 || e.status === 410)) st = forget();
        else throw e;
      }
      if (st !== undefined) {
        const mismatch = st.fileSize !== src.size || (this.#chunkSize !== undefined && st.chunkSize !== this.#chunkSize);
        // An upload started with a fingerprint is resumed only from the same file: another one of the same size (or
        // this one since changed) would be stored as a mix of the two. One started without (bytes, an older client
        // or server) is checked by size alone.
        const otherFile = !mismatch && st.fingerprint !== undefined && fingerprint !== undefined && st.fingerprint !== fingerprint;
        if (mismatch || otherFile) {
          if (remembered === undefined) {
            const asked = this.#chunkSize !== undefined ? ` in ${this.#chunkSize}-byte chunks` : '';
            const message = otherFile
              ? `Upload ${guid} was started from another file, or from this one before it was last modified (fingerprint ${st.fingerprint}; the source's is ${fingerprint})`
              : `Upload ${guid} is ${st.fileSize} bytes in ${st.chunkSize}-byte chunks; the source is ${src.size} bytes${asked}`;
            throw new ClientError('ERR_RESUME_MISMATCH', message, { guid });
          }
          forget();
        } else if (st.uploadStatus === 'cancelled' || st.uploadStatus === 'failed') {
          if (remembered === undefined) {
            const code = st.uploadStatus === 'cancelled' ? 'ERR_UPLOAD_CANCELLED' : 'ERR_UPLOAD_FAILED';
            throw new ClientError(code, undefined, { guid });
          }
          forget();
        } else {
          this.#guid = st.guid;
          this.#plan = new ChunkPlan(st.fileSize, st.chunkSize, st.totalChunks);
          this.#plan.adopt(st.uploadStatus === 'completed' ? [] : st.missingChunks);
          if (st.uploadStatus === 'completed') return { fileName: st.finalName ?? st.fileName, size: st.fileSize };
          return undefined;
        }
      }
    }

    const fields: InitFields = {
      fileName: this.#fileName,
      fileSize: src.size,
      uploadMethod: this.#mode === 'http' ? 'put' : 'websocket',
    };
    if (fingerprint !== undefined) fields.fingerprint = fingerprint;
    if (this.#chunkSize !== undefined) fields.chunkSize = this.#chunkSize;
    if (o.targetPath !== undefined) fields.targetPath = o.targetPath;
    // A stop (cancel(), the caller's signal) while the init is on its way: no further attempt, but the one sent is
    // given INIT_STOP_GRACE_MS to answer. Its guid lets the stop delete the upload the server may just have created,
    // which would otherwise count against the user's uploads until it expires.
    const stop = this.#signal;
    const request = new AbortController();
    let grace: ReturnType<typeof setTimeout> | undefined;
    const onStop = (): void => {
      grace = setTimeout(() => request.abort(stop.reason), INIT_STOP_GRACE_MS);
    };
    if (stop.aborted) throw stop.reason;
    stop.addEventListener('abort', onStop, { once: true });
    let init: InitResult;
    try {
      init = await this.#api.init(fields, request.signal, stop);
    } finally {
      clearTimeout(grace);
      stop.removeEventListener('abort', onStop);
    }
    this.#guid = init.guid;
    this.#plan = new ChunkPlan(init.fileSize, init.chunkSize, init.totalChunks);
    // A 0-byte file is complete at init: too late to cancel (cancel() says ERR_UPLOAD_FINALIZING), as with any other.
    if (init.complete === true) return { fileName: init.finalName ?? init.fileName, size: init.fileSize };
    if (stop.aborted) throw stop.reason;
    return undefined;
  }

  /**
   * WebSocket connections until the upload completes, or the caller should switch to HTTP ('fallback'), or every
   * chunk is acknowledged without a `complete` ('stored': the caller asks upload-status).
   */
  async #runWebSocket(url: URL): Promise<Completion | 'fallback' | 'stored'> {
    const auto = this.#mode === 'auto';
    let failures = 0;
    for (;;) {
      const session = new WsSession({
        url,
        token: this.#o.token,
        guid: this.#guid!,
        plan: this.#plan!,
        source: this.#src!,
        window: this.#window,
        partSize: this.#partSize,
        onSlowParts: (size) => {
          this.#partSize = size;
        },
        stallTimeoutMs: this.#o.stallTimeoutMs ?? 60_000,
        checksum: this.#o.checksum,
        connectTimeoutMs: this.#o.connectTimeoutMs ?? 10_000,
        retry: this.#retry,
        signal: this.#signal,
        isPaused: () => this.#paused,
        onHello: () => {
          if (this.#transport !== 'websocket') this.#setTransport('websocket', 'connected');
          else this.#emitProgress();
        },
        onStored: (c) => this.#onStored(c),
        onRetry: this.#onRetry,
      });
      this.#ws = session;
      let outcome;
      try {
        outcome = await session.run();
      } finally {
        this.#ws = undefined;
      }
      switch (outcome.kind) {
        case 'complete':
          return { fileName: outcome.fileName, size: outcome.size };
        case 'all-stored':
          return 'stored';
        case 'connect-failed': {
          // auto: no connection at all, or the reconnect after a drop failed -> PUT.
          if (auto) {
            this.#fallbackReason = outcome.error.message;
            return 'fallback';
          }
          // An upgrade refused for good (the upload was cancelled or expired meanwhile, the token was revoked) looks
          // like any failed connect from here: a browser shows no status. upload-status says why (it throws the
          // server's code for 401, 404, 410), or that the upload completed.
          const done = this.#adoptStatus(await this.#api.status(this.#guid!, this.#signal));
          if (done !== undefined) return done;
          break;
        }
        case 'dropped':
          if (outcome.progressed) failures = 0;
          break;
        case 'parked':
          // Paused with nothing in flight: the connection was closed on purpose; a new one opens on resume.
          failures = 0;
          await this.#whenResumed();
          continue;
      }
      const error = 'error' in outcome ? outcome.error : new ClientError('ERR_WEBSOCKET_FAILED');
      // Every connection slot of the user is taken (4029 before hello), e.g. by uploads started while this one was
      // parked: in `websocket` mode that is a wait, not a failure (the retries go on at the longest delay until a slot
      // frees or the caller stops); `auto` goes over PUT after the usual attempts.
      if (!auto && error.code === 'ERR_RATE_LIMITED' && this.#retry.attempts > 0) failures = Math.min(failures, this.#retry.attempts - 1);
      failures++;
      if (failures > this.#retry.attempts) {
        if (auto) {
          this.#fallbackReason = `WebSocket dropped ${failures} times (${error.message})`;
          return 'fallback';
        }
        throw new ClientError('ERR_WEBSOCKET_FAILED', `${error.message} (after ${failures} attempts)`, { cause: error, guid: this.#guid });
      }
      // Waiting out a full set of slots has no end of its own: never faster than once a second, whatever the policy
      // (baseDelayMs 0 reconnected in a tight loop for as long as the slots stayed taken).
      const waiting = !auto && error.code === 'ERR_RATE_LIMITED';
      const delayMs = waiting ? Math.max(WAIT_FOR_SLOT_MIN_MS, backoffDelay(this.#retry, failures)) : backoffDelay(this.#retry, failures);
      this.#onRetry({ operation: 'websocket', attempt: failures, delayMs, error });
      await sleep(delayMs, this.#signal);
      await this.#whenResumed();
    }
  }

  /** After a WebSocket gave up: adopt upload-status as the truth about what is stored. */
  async #syncStatus(): Promise<Completion | undefined> {
    const st = await this.#api.status(this.#guid!, this.#signal);
    this.#setTransport('http', this.#fallbackReason || 'websocket unavailable');
    return this.#adoptStatus(st);
  }

  #adoptStatus(st: { uploadStatus: string; missingChunks: number[]; finalName?: string; fileName: string; fileSize: number }): Completion | undefined {
    switch (st.uploadStatus) {
      case 'completed':
        this.#plan!.adopt([]);
        return { fileName: st.finalName ?? st.fileName, size: st.fileSize };
      case 'cancelled':
        throw new ClientError('ERR_UPLOAD_CANCELLED', undefined, { guid: this.#guid });
      case 'failed':
        throw new ClientError('ERR_UPLOAD_FAILED', undefined, { guid: this.#guid });
      default:
        this.#plan!.adopt(st.missingChunks);
        if (this.#plan!.allStored) this.#setState('finalizing');
        this.#emitProgress();
        return undefined;
    }
  }

  /** PUTs every pending chunk, `parallel` at a time. Resolves with the completion if a reply carried it. */
  async #runHttp(): Promise<Completion | undefined> {
    const plan = this.#plan!;
    const src = this.#src!;
    const guid = this.#guid!;
    let completion: Completion | undefined;
    const worker = async (): Promise<void> => {
      for (;;) {
        // Nothing left to take: a worker whose part is done does not wait out a pause (Promise.all below would).
        if (!plan.hasPending) return;
        await this.#whenResumed();
        const c = plan.take('http');
        if (c === undefined) return;
        let reply;
        try {
          const body = await src.body(plan.chunkStart(c), plan.chunkEnd(c));
          reply = await this.#api.putChunk(guid, c, body, this.#signal);
        } catch (e) {
          plan.release(c);
          throw e;
        }
        plan.stored(c, 'http');
        this.#onStored(c);
        if (reply.complete === true && typeof reply.fileName === 'string') {
          completion ??= { fileName: reply.fileName, size: reply.size ?? plan.fileSize };
        }
      }
    };
    const workers = Array.from({ length: this.#parallel }, worker);
    try {
      await Promise.all(workers);
    } catch (e) {
      // Stop the other workers now rather than let them send chunks of an upload that has failed; those waiting
      // for resume() re-check the signal and throw.
      if (!this.#signal.aborted) this.#ac.abort(e);
      for (const w of this.#resumeWaiters.splice(0)) w();
      await Promise.allSettled(workers);
      throw e;
    }
    return completion;
  }

  /** Every chunk is acknowledged: wait (polling upload-status) until the server has finalized the file. */
  async #awaitCompletion(): Promise<Completion | undefined> {
    this.#setState('finalizing');
    for (let i = 0; ; i++) {
      const st = await this.#api.status(this.#guid!, this.#signal);
      const done = this.#adoptStatus(st);
      if (done !== undefined || this.#plan!.hasPending) return done;
      await sleep(Math.min(2000, 50 * 2 ** i), this.#signal);
    }
  }

  #finishOk(): void {
    if (this.#storeKey !== undefined) forgetGuid(this.#storeKey);
    this.#setState('done');
  }

  /**
   * DELETE of the upload on the server with a few quick tries, on a fresh signal (the upload's own is aborted by now);
   * true once the server has taken it.
   */
  #deleteQuickly(guid: string): Promise<boolean> {
    const api = new HttpApi({ endpoint: this.#endpoint, token: this.#o.token, retry: { attempts: 2, baseDelayMs: 200, maxDelayMs: 1000 }, onRetry: this.#onRetry });
    return api.cancel(guid, new AbortController().signal).then(
      () => true,
      () => false,
    );
  }

  /** Maps whatever stopped the upload to the ClientError `done` rejects with, and cleans up. */
  async #finishFailed(e: unknown): Promise<ClientError> {
    let err: ClientError;
    if (this.#stopReason !== undefined) err = this.#stopReason;
    else if (e instanceof ClientError) err = e;
    else err = new ClientError('ERR_NETWORK', (e as Error)?.message ?? String(e), { cause: e });
    err.guid ??= this.#guid;
    if (!this.#signal.aborted) this.#ac.abort(err); // stop whatever still runs
    const cancelled = err.code === 'ERR_UPLOAD_CANCELLED';
    if (cancelled && this.#stopReason !== undefined && this.#guid !== undefined && this.#serverCancelled !== this.#guid) {
      // The caller's cancel(): delete the upload on the server too (a few quick tries; the TTL cleans up otherwise).
      await this.#deleteQuickly(this.#guid);
    }
    if (err instanceof SourceChangedError && this.#guid !== undefined) {
      // The chunks stored so far are of a version of the file that is gone: nothing can finish this upload, so it
      // goes now rather than hold its space until it expires.
      const guid = this.#guid;
      err.message += (await this.#deleteQuickly(guid)) ? `; upload ${guid} was deleted on the server` : `; upload ${guid} could not be deleted on the server (it expires)`;
    }
    if (this.#storeKey !== undefined && (cancelled || !err.retryable)) forgetGuid(this.#storeKey);
    this.#setState(cancelled ? 'cancelled' : 'failed');
    return err;
  }
}

/**
 * Uploads one file. Returns at once; the upload runs in the background. `await handle.done` for the result.
 *
 * ```ts
 * const h = upload(file, { endpoint: '/api/v1/files', token });
 * h.on('progress', (p) => console.log(p.loaded, p.total, p.bytesPerSecond, p.etaSeconds));
 * const { guid, fileName, size, bytesByTransport } = await h.done;
 * ```
 */
export function upload(source: UploadSource, options: UploadOptions): UploadHandle {
  return new UploadHandle(source, options);
}

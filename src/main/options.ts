/**
 * Every engine option with its meaning and default. `resolveOptions()` validates, names the bad field, fills the
 * defaults and freezes the result; nothing else in the engine reads raw options.
 */
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import type { LockMode } from '../workers/shared-layout.js';
import { parseTrustProxy } from './forwarded.js';
import type { ProxyTrust } from './forwarded.js';

/** What `onUploadCreate` sees (values as validated from the client's init). */
export interface UploadCreateInfo {
  user: string;
  fileName: string;
  fileSize: number;
  chunkSize: number;
  totalChunks: number;
  /** Folder relative to the upload root, '/'-separated ('' = the root). */
  targetPath: string;
  uploadMethod?: string;
  /** The client's address (after trusted proxies). */
  clientIp: string;
}

/** What `onUploadCreate` may decide: the target folder (relative to the root) and the file's name. */
export interface UploadPlacement {
  targetPath?: string;
  fileName?: string;
}

/** What `onUploadComplete` sees: the upload and where its file now is. */
export interface UploadCompleteInfo {
  guid: string;
  user: string;
  /** The final name in the target folder. */
  fileName: string;
  size: number;
  targetPath: string;
  /** Absolute path of the completed file on this server (for scanning, indexing, moving). */
  path: string;
}

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export type Durability = 'chunk' | 'upload';
export type ConflictPolicy = 'rename' | 'overwrite' | 'reject';
export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** What an `authenticate` hook sees of a request (read synchronously from uWS before any await). */
export interface AuthRequest {
  readonly method: string;
  readonly url: string;
  /** Lower-case header names. */
  readonly headers: Readonly<Record<string, string>>;
  readonly query: URLSearchParams;
  readonly remoteAddress: string;
}

export interface UploadEngineOptions {
  /** Upload root: completed files land under it. Staging files live in `<dir>/.updraft-staging`. Default `./uploads`. */
  dir?: string;
  /** Route prefix for the upload API. Default `/api/v1/files`. */
  prefix?: string;
  /** Address `listen()` binds. Default `127.0.0.1`. */
  host?: string;
  /** Port `listen()` binds; 0 picks any free port. Default 8080. */
  port?: number;
  /** Chunk size used when a client sends none. Default 8 MiB. */
  chunkSize?: number;
  /** Smallest chunk size a client may ask for. Default 1 KiB. */
  minChunkSize?: number;
  /** Largest chunk size a client may ask for; also bounds one PUT body and one WebSocket frame. Default 64 MiB. */
  maxChunkSize?: number;
  /** Largest file accepted. Default 1 TiB. */
  maxFileSize?: number;
  /** Most chunks one upload may have (bounds the per-upload shared state). Default 1,048,576. */
  maxChunks?: number;
  /**
   * Worker threads writing chunks. Default: twice the CPUs, at least 4, at most 16. The workers mostly wait for the
   * device (O_DIRECT writes), so more threads than cores keep more writes in flight: on the 2-core reference machine
   * 4 workers took 1.35-1.47 GB/s against 1.19-1.24 with 2, 6 the same as 4, and 8 less (1.09-1.27).
   */
  workers?: number;
  /**
   * `chunk` (default): a chunk is acknowledged only after an fdatasync that covers it (group-committed).
   * `upload`: chunks are acknowledged once written; only completion is durable (checkpoints every second).
   */
  durability?: Durability;
  /**
   * What completion does when the target name exists: `rename` (default, "name (1).ext"), `overwrite` (files only: a
   * folder of that name is refused with 409), `reject` (409).
   */
  onConflict?: ConflictPolicy;
  /** Lock granularity in the workers: `chunk` (default, distinct chunks write in parallel) or `upload`. */
  lockMode?: LockMode;
  /** Bearer tokens: token -> user name. With none (and no `authenticate`), everyone is the user `anonymous`. */
  tokens?: Readonly<Record<string, string>>;
  /** Embedder's authentication: return the user name, or null to refuse (401). Replaces `tokens` when given. */
  authenticate?: (req: AuthRequest) => string | null | Promise<string | null>;
  /** Uploads idle longer than this expire with their staging files (ms). Default 24 h. */
  uploadTtl?: number;
  /** How long a completed, cancelled or expired upload keeps its record for retries and status calls (ms). Default 1 h. */
  recordTtl?: number;
  /** Bytes of request bodies and WebSocket frames waiting for the disk at once; requests pause beyond it. Default 128 MiB. */
  maxInFlightBytes?: number;
  /** Size of one batch handed to a worker (a slab of the in-flight budget). Default 2 MiB. */
  batchSize?: number;
  /**
   * Request bodies read at once; the others wait paused, first come first served, each until a reader ends its body.
   * uWS reads up to 512 KiB from each ready socket per turn of the event loop, so this bounds how long one turn
   * lasts (4 x 512 KiB) however many uploads arrive at once. A body that sends nothing for 250 ms, or is still
   * filling the same slab after 1 s, while others wait gives its place up and queues again. Default 4.
   */
  maxReadingBodies?: number;
  /**
   * Write aligned pieces with O_DIRECT, bypassing the page cache (steady throughput, near-free fdatasync); pieces
   * that are not 4 KiB-aligned, and filesystems that refuse O_DIRECT, use the page cache. Default true.
   */
  directIo?: boolean;
  /**
   * At start, allocate the whole `maxInFlightBytes` budget and have a worker thread touch every page of it, so the
   * first uploads after a start do not pay the first write to fresh memory (a page fault, slow on a VM) inside the
   * main thread's copies. The budget is then resident from the start. false: memory is taken as uploads need it.
   * Default true.
   */
  prefault?: boolean;
  /** How long a second writer of the same chunk waits for the first before ERR_CHUNK_BUSY (ms). Default 30 s. */
  chunkBusyTimeout?: number;
  /**
   * A PUT body that sends nothing for this long (ms), while the server is reading it, is answered ERR_CHUNK_INCOMPLETE
   * and its connection closed, freeing its claim, memory and reading place. Time the server itself holds the request
   * paused (waiting for memory or for another writer) does not count; a body that lost its reading place for sending
   * nothing keeps the silence it had, so its turns add up until its next byte. uWS's own 10 s idle timeout would do
   * this, but every resume restarts it. Default and most 10 s: uWS itself closes, without a reply, a request whose
   * body brings less than 160 KiB in 10 s (16 KiB/s) while it is read (its slow-loris guard; held paused, the engine
   * keeps it).
   */
  bodyIdleTimeout?: number;
  /** In `upload` durability, how often written chunks are synced and recorded as resumable (ms). Default 1000. */
  checkpointInterval?: number;
  /** How often the reaper looks for expired uploads and records (ms). Default 60 s. */
  reapInterval?: number;
  /** Prefix put in front of every guid (letters, digits, '-'), e.g. an instance id for routing. Default none. */
  instanceId?: string;
  /** pino log level. Default `info`. */
  logLevel?: LogLevel;
  /** A pino logger to use instead of the engine's own (stderr). */
  logger?: Logger;
  /** Expose `/__bench/eld` (event-loop delay) for the benchmark harness. Default false. */
  benchEndpoints?: boolean;

  // --- WebSocket ---
  /**
   * Browser origins (`scheme://host[:port]`) allowed to open an upload WebSocket and to send POST, PUT and DELETE
   * requests, in addition to the server's own origin (an `Origin` whose host equals the `Host` header, or a request
   * the browser marks `Sec-Fetch-Site: same-origin`). `'*'` allows any origin. A request without `Origin` (a
   * non-browser client) is always allowed; any other origin is refused with 403 ERR_FORBIDDEN_ORIGIN, because a
   * browser sends its cookies with a cross-site request. Listed origins also get CORS headers. Default `[]`: same
   * origin only. Without tokens or `authenticate`, same origin counts only on an IP address or localhost (DNS
   * rebinding): list a name's origin to serve browsers under it.
   */
  allowedOrigins?: readonly string[];
  /**
   * Seconds of silence after which a WebSocket is closed (uWS `idleTimeout`). The server pings a silent connection
   * after half of it, so a live client (its pong counts as traffic) behind an idle proxy stays connected while a dead
   * one is closed. 0 disables it; otherwise a multiple of 4 from 8 to 960 (uWS's timer granularity). Default 32.
   */
  wsIdleTimeout?: number;
  /** Most open upload WebSockets per user; the next one is closed with 4029 (ERR_RATE_LIMITED). Default 8. */
  maxWsConnectionsPerUser?: number;
  /**
   * `updraft.v1` window: chunks a client may have sent and not yet seen acknowledged, and so the most chunks the
   * server holds in memory for one connection (of either protocol). Default 8, at most 64.
   */
  wsWindow?: number;
  /**
   * `updraft.v1`: how long a chunk being sent as `part` frames may wait for its next part (ms). Past it the chunk is
   * dropped (ERR_CHUNK_INCOMPLETE with its number; the client sends it again from offset 0), freeing its claim and
   * window slot, as a stalled PUT body is dropped by the HTTP idle timeout. A whole part must arrive within it: the
   * default 60 s takes the client's 2 MiB parts down to about 35 KB/s (and the client halves its parts when a chunk
   * is dropped this way). At most 1 h.
   */
  wsPartTimeout?: number;

  // --- production: proxies, limits, hooks, metrics (issue 6) ---
  /**
   * Reverse proxies whose forwarded headers are believed: IP addresses or CIDRs (`127.0.0.1`, `10.0.0.0/8`,
   * `::1`). Only when the socket peer is one of them are `X-Forwarded-For/-Proto/-Host` and `Forwarded` used; the
   * client is the rightmost address that is not itself a trusted proxy. Default none: forwarded headers ignored.
   */
  trustProxy?: readonly string[];
  /** Open (active) uploads one user may have; the next init gets 429. Default 100. */
  maxUploadsPerUser?: number;
  /** Chunk bytes one user may be sending at once over HTTP; the next chunk gets 429. Default 256 MiB. */
  maxInFlightBytesPerUser?: number;
  /**
   * The largest share of the upload root's free space that one user's open uploads may reserve (the bytes they still
   * have to send; an init reserves its whole size). Past it an init gets 507 ERR_INSUFFICIENT_STORAGE. From above 0
   * to 1. Default 0.5 with `tokens` or `authenticate` (one user cannot leave the others no room), 1 without (one user).
   */
  maxReservedShare?: number;
  /** Open uploads on this server; the next init gets 503. Default 10,000. */
  maxUploads?: number;
  /** Allow credentialed cross-origin requests (cookies) from `allowedOrigins`, which must then list origins, not '*'. Default false. */
  corsCredentials?: boolean;
  /** Serve Prometheus metrics at `GET /metrics`. Default true. */
  metrics?: boolean;
  /** When set, `GET /metrics` requires `Authorization: Bearer <metricsToken>`. */
  metricsToken?: string;
  /**
   * Decides on a new upload before anything is created. Throw an `UploadError` to refuse it (its code and message
   * reach the client; any other error refuses with ERR_UPLOAD_REFUSED); return `{ targetPath, fileName }` to
   * choose where the file goes (validated like a client's values).
   */
  onUploadCreate?: (info: UploadCreateInfo, req: AuthRequest) => void | UploadPlacement | Promise<void | UploadPlacement>;
  /**
   * Runs after the file is durable in its final place and before the client hears "complete". If it throws, the
   * completion fails cleanly: the file is removed again, the upload is marked failed with the error (an
   * `UploadError`'s code and message, otherwise ERR_HOOK_FAILED), and the client is told. A crash or kill while it
   * runs (or before `completed` is recorded after it) runs it again at the next start, so it runs at least once for
   * every completed upload: make it idempotent.
   */
  onUploadComplete?: (info: UploadCompleteInfo) => void | Promise<void>;

  // --- demo ---
  /**
   * Serve the demo page at `/` and the browser client at `/updraft-client.js` (src/main/static-routes.ts).
   * Default false here, so an embedding app's `/` stays its own; the `updraft serve` CLI turns it on (--no-demo off).
   */
  demo?: boolean;
}

export interface ResolvedOptions {
  readonly dir: string;
  readonly stagingDir: string;
  readonly prefix: string;
  readonly host: string;
  readonly port: number;
  readonly chunkSize: number;
  readonly minChunkSize: number;
  readonly maxChunkSize: number;
  readonly maxFileSize: number;
  readonly maxChunks: number;
  readonly workers: number;
  readonly durability: Durability;
  readonly onConflict: ConflictPolicy;
  readonly lockMode: LockMode;
  readonly tokens: ReadonlyMap<string, string>;
  readonly authenticate: UploadEngineOptions['authenticate'] | undefined;
  readonly uploadTtl: number;
  readonly recordTtl: number;
  readonly maxInFlightBytes: number;
  readonly batchSize: number;
  readonly maxReadingBodies: number;
  readonly directIo: boolean;
  readonly prefault: boolean;
  readonly chunkBusyTimeout: number;
  readonly bodyIdleTimeout: number;
  readonly checkpointInterval: number;
  readonly reapInterval: number;
  readonly instanceId: string;
  readonly logLevel: LogLevel;
  readonly logger: Logger | undefined;
  readonly benchEndpoints: boolean;
  // --- WebSocket ---
  /** Normalized origins (`URL.origin`), or `'*'`. */
  readonly allowedOrigins: readonly string[];
  readonly wsIdleTimeout: number;
  readonly maxWsConnectionsPerUser: number;
  readonly wsWindow: number;
  readonly wsPartTimeout: number;
  readonly trustProxy: ProxyTrust;
  readonly maxUploadsPerUser: number;
  readonly maxInFlightBytesPerUser: number;
  readonly maxReservedShare: number;
  readonly maxUploads: number;
  readonly corsCredentials: boolean;
  readonly metrics: boolean;
  readonly metricsToken: string | undefined;
  readonly onUploadCreate: UploadEngineOptions['onUploadCreate'] | undefined;
  readonly onUploadComplete: UploadEngineOptions['onUploadComplete'] | undefined;
  // --- demo ---
  readonly demo: boolean;
}

/** Name of the staging folder under the upload root; no target path may start with it. */
export const STAGING_DIR_NAME = '.updraft-staging';

export class OptionsError extends Error {
  constructor(
    /** The option's name in UploadEngineOptions, e.g. 'durability'. */
    readonly field: string,
    /** What is wrong with its value, without the option's name. */
    readonly problem: string,
  ) {
    super(`invalid option ${field}: ${problem}`);
    this.name = 'OptionsError';
  }
}

/**
 * Credentials only for origins listed by name: with '*' every site a user visits could send requests carrying the
 * user's cookies (corsHeaders echoes the caller's origin when credentials are on), which is what CORS forbids.
 */
/**
 * Every option by name, checked by the compiler against UploadEngineOptions: an unknown key (a typo such as
 * `onUploadCompleted`) is refused rather than ignored, since the option meant would silently not apply.
 */
const KNOWN_OPTIONS: Readonly<Record<keyof UploadEngineOptions, true>> = {
  dir: true, prefix: true, host: true, port: true, chunkSize: true, minChunkSize: true, maxChunkSize: true,
  maxFileSize: true, maxChunks: true, workers: true, durability: true, onConflict: true, lockMode: true, tokens: true,
  authenticate: true, uploadTtl: true, recordTtl: true, maxInFlightBytes: true, batchSize: true, maxReadingBodies: true,
  directIo: true, prefault: true, chunkBusyTimeout: true, bodyIdleTimeout: true, checkpointInterval: true, reapInterval: true,
  instanceId: true, logLevel: true, logger: true, benchEndpoints: true, allowedOrigins: true, wsIdleTimeout: true,
  maxWsConnectionsPerUser: true, wsWindow: true, wsPartTimeout: true, trustProxy: true, maxUploadsPerUser: true,
  maxInFlightBytesPerUser: true, maxReservedShare: true, maxUploads: true, corsCredentials: true, metrics: true, metricsToken: true,
  onUploadCreate: true, onUploadComplete: true, demo: true,
};

/** A boolean option: true, false or absent (a string such as 'false' would read as its opposite). */
function flag(field: string, v: unknown, def: boolean): boolean {
  if (v === undefined) return def;
  if (typeof v !== 'boolean') throw new OptionsError(field, `expected true or false, got ${JSON.stringify(v)}`);
  return v;
}

/** A non-empty string option (a path, a host), or absent. */
function text(field: string, v: unknown, def: string, expected: string): string {
  if (v === undefined) return def;
  if (typeof v !== 'string' || v === '') throw new OptionsError(field, `expected ${expected}, got ${JSON.stringify(v)}`);
  return v;
}

function corsCredentials(o: UploadEngineOptions): boolean {
  if (!flag('corsCredentials', o.corsCredentials, false)) return false;
  if (Array.isArray(o.allowedOrigins) && o.allowedOrigins.includes('*')) {
    throw new OptionsError('corsCredentials', "cannot be combined with allowedOrigins '*': list the origins that may send credentials");
  }
  return true;
}

function int(field: string, v: unknown, def: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw new OptionsError(field, `expected an integer from ${min} to ${max}, got ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`);
  }
  return v;
}

/** A fraction above 0 and at most 1. */
function share(field: string, v: unknown, def: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > 1) {
    throw new OptionsError(field, `expected a number above 0 and at most 1, got ${String(v)}`);
  }
  return v;
}

function oneOf<T extends string>(field: string, v: unknown, def: T, allowed: readonly T[]): T {
  if (v === undefined) return def;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
    throw new OptionsError(field, `expected one of ${allowed.join(', ')}, got ${String(v)}`);
  }
  return v as T;
}

export function resolveOptions(o: UploadEngineOptions = {}): ResolvedOptions {
  if (typeof o !== 'object' || o === null) throw new OptionsError('options', 'expected an object');
  for (const key of Object.keys(o)) {
    if (!Object.hasOwn(KNOWN_OPTIONS, key)) throw new OptionsError(key, 'unknown option (see the options table in README.md)');
  }
  const dir = path.resolve(text('dir', o.dir, './uploads', 'a folder path'));
  let prefix = o.prefix ?? '/api/v1/files';
  if (typeof prefix !== 'string' || !/^(\/[A-Za-z0-9._~-]+)*\/?$/.test(prefix)) {
    throw new OptionsError('prefix', 'expected a path like /api/v1/files');
  }
  prefix = prefix.replace(/\/+$/, '');
  const maxChunkSize = int('maxChunkSize', o.maxChunkSize, 64 * MiB, 1, 1024 * MiB);
  // The defaults follow the limits given, so that min <= chunkSize <= max holds whichever ones are set.
  const givenChunk = Number.isSafeInteger(o.chunkSize) && (o.chunkSize as number) >= 1 ? (o.chunkSize as number) : Number.POSITIVE_INFINITY;
  const minChunkSize = int('minChunkSize', o.minChunkSize, Math.min(1 * KiB, maxChunkSize, givenChunk), 1, maxChunkSize);
  const chunkSize = int('chunkSize', o.chunkSize, Math.min(Math.max(8 * MiB, minChunkSize), maxChunkSize), minChunkSize, maxChunkSize);
  const tokens = new Map<string, string>();
  if (o.tokens !== undefined && (typeof o.tokens !== 'object' || o.tokens === null || Array.isArray(o.tokens))) {
    throw new OptionsError('tokens', 'expected an object of token: user name');
  }
  for (const [token, user] of Object.entries(o.tokens ?? {})) {
    if (token.length < 8 || /\s/.test(token)) throw new OptionsError('tokens', 'each token needs at least 8 non-space characters');
    if (typeof user !== 'string' || !/^[\w.@-]{1,64}$/.test(user)) throw new OptionsError('tokens', `user names are strings of 1-64 of [A-Za-z0-9_.@-], got ${JSON.stringify(user)}`);
    tokens.set(token, user);
  }
  if (o.authenticate !== undefined && typeof o.authenticate !== 'function') {
    throw new OptionsError('authenticate', 'expected a function');
  }
  const instanceId = o.instanceId ?? '';
  if (typeof instanceId !== 'string' || !/^[A-Za-z0-9-]{0,32}$/.test(instanceId)) {
    throw new OptionsError('instanceId', 'expected up to 32 letters, digits or dashes');
  }
  const batchSize = int('batchSize', o.batchSize, 2 * MiB, 64 * KiB, 64 * MiB);
  if (batchSize % (4 * KiB) !== 0) throw new OptionsError('batchSize', 'must be a multiple of 4 KiB (O_DIRECT alignment)');
  const wsIdleTimeout = int('wsIdleTimeout', o.wsIdleTimeout, 32, 0, 960);
  // uWS terminates the process on 1..7 and warns on stderr for values that are not a multiple of 4.
  if (wsIdleTimeout !== 0 && (wsIdleTimeout < 8 || wsIdleTimeout % 4 !== 0)) {
    throw new OptionsError('wsIdleTimeout', `expected 0 or a multiple of 4 from 8 to 960, got ${wsIdleTimeout}`);
  }
  const resolved: ResolvedOptions = {
    dir,
    stagingDir: path.join(dir, STAGING_DIR_NAME),
    prefix,
    host: text('host', o.host, '127.0.0.1', 'a host name or IP address'),
    port: int('port', o.port, 8080, 0, 65535),
    chunkSize,
    minChunkSize,
    maxChunkSize,
    maxFileSize: int('maxFileSize', o.maxFileSize, 1024 * GiB, 0),
    maxChunks: int('maxChunks', o.maxChunks, 1_048_576, 1, 16_777_216),
    workers: int('workers', o.workers, Math.min(16, Math.max(4, 2 * os.availableParallelism())), 1, 256),
    durability: oneOf('durability', o.durability, 'chunk', ['chunk', 'upload']),
    onConflict: oneOf('onConflict', o.onConflict, 'rename', ['rename', 'overwrite', 'reject']),
    lockMode: oneOf('lockMode', o.lockMode, 'chunk', ['chunk', 'upload']),
    tokens,
    authenticate: o.authenticate,
    uploadTtl: int('uploadTtl', o.uploadTtl, 24 * 3600_000, 1),
    recordTtl: int('recordTtl', o.recordTtl, 3600_000, 0),
    maxInFlightBytes: int('maxInFlightBytes', o.maxInFlightBytes, 128 * MiB, batchSize),
    batchSize,
    maxReadingBodies: int('maxReadingBodies', o.maxReadingBodies, 4, 1, 1_000_000),
    directIo: flag('directIo', o.directIo, true),
    prefault: flag('prefault', o.prefault, true),
    chunkBusyTimeout: int('chunkBusyTimeout', o.chunkBusyTimeout, 30_000, 0),
    // At most 10 s: uWS closes a request whose body stalls that long itself, without a reply (HTTP_IDLE_TIMEOUT_S).
    bodyIdleTimeout: int('bodyIdleTimeout', o.bodyIdleTimeout, 10_000, 1, 10_000),
    checkpointInterval: int('checkpointInterval', o.checkpointInterval, 1000, 10),
    reapInterval: int('reapInterval', o.reapInterval, 60_000, 10),
    instanceId,
    logLevel: oneOf('logLevel', o.logLevel, 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    logger: resolveLogger(o.logger),
    benchEndpoints: flag('benchEndpoints', o.benchEndpoints, false),
    allowedOrigins: resolveOrigins(o.allowedOrigins),
    trustProxy: resolveTrustProxy(o.trustProxy),
    maxUploadsPerUser: int('maxUploadsPerUser', o.maxUploadsPerUser, 100, 1),
    maxInFlightBytesPerUser: int('maxInFlightBytesPerUser', o.maxInFlightBytesPerUser, 256 * MiB, 1),
    maxReservedShare: share('maxReservedShare', o.maxReservedShare, tokens.size > 0 || o.authenticate !== undefined ? 0.5 : 1),
    maxUploads: int('maxUploads', o.maxUploads, 10_000, 1),
    corsCredentials: corsCredentials(o),
    metrics: flag('metrics', o.metrics, true),
    metricsToken: resolveMetricsToken(o.metricsToken),
    onUploadCreate: hook('onUploadCreate', o.onUploadCreate),
    onUploadComplete: hook('onUploadComplete', o.onUploadComplete),
    wsIdleTimeout,
    maxWsConnectionsPerUser: int('maxWsConnectionsPerUser', o.maxWsConnectionsPerUser, 8, 1, 65_536),
    wsWindow: int('wsWindow', o.wsWindow, 8, 1, 64),
    wsPartTimeout: int('wsPartTimeout', o.wsPartTimeout, 60_000, 1, 3_600_000),
    // --- demo ---
    demo: flag('demo', o.demo, false),
  };
  return Object.freeze(resolved);
}

/** Each entry is `'*'` or an origin `scheme://host[:port]` (http or https, no path); returns `URL.origin` forms. */
function resolveOrigins(v: unknown): readonly string[] {
  if (v === undefined) return Object.freeze([]);
  if (!Array.isArray(v)) throw new OptionsError('allowedOrigins', 'expected an array of origins like https://app.example.com');
  const out: string[] = [];
  for (const entry of v as unknown[]) {
    if (entry === '*') {
      out.push('*');
      continue;
    }
    let url: URL | null = null;
    try {
      url = typeof entry === 'string' ? new URL(entry) : null;
    } catch {
      url = null;
    }
    if (typeof entry === 'string' && entry.includes('*')) {
      throw new OptionsError('allowedOrigins', `wildcards inside an origin are not supported (${JSON.stringify(entry)}): list each origin, or '*' alone for any`);
    }
    const bare = url !== null && url.pathname === '/' && url.search === '' && url.hash === '' && url.username === '' && url.password === '';
    if (!url || !bare || (url.protocol !== 'http:' && url.protocol !== 'https:') || !/^[a-z]+:\/\/[^/]+\/?$/i.test(String(entry))) {
      throw new OptionsError('allowedOrigins', `expected '*' or an origin like https://app.example.com, got ${JSON.stringify(entry)}`);
    }
    out.push(url.origin);
  }
  return Object.freeze(out);
}

function resolveTrustProxy(v: unknown): ProxyTrust {
  if (v === undefined) return parseTrustProxy([]);
  if (!Array.isArray(v) || !v.every((e) => typeof e === 'string')) {
    throw new OptionsError('trustProxy', 'expected an array of IP addresses or CIDRs');
  }
  try {
    return parseTrustProxy(v as string[]);
  } catch (e) {
    throw new OptionsError('trustProxy', (e as Error).message);
  }
}

/** A pino logger (or anything with its level methods and child()), or absent. */
function resolveLogger(v: unknown): Logger | undefined {
  if (v === undefined) return undefined;
  const methods = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'child'];
  if (typeof v !== 'object' || v === null || !methods.every((m) => typeof (v as Record<string, unknown>)[m] === 'function')) {
    throw new OptionsError('logger', `expected a pino logger (with ${methods.join(', ')})`);
  }
  return v as Logger;
}

function resolveMetricsToken(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v.length < 8 || /\s/.test(v)) throw new OptionsError('metricsToken', 'expected at least 8 non-space characters');
  return v;
}

function hook<T>(field: string, v: T | undefined): T | undefined {
  if (v !== undefined && typeof v !== 'function') throw new OptionsError(field, 'expected a function');
  return v;
}

/**
 * The engine facade: owns the options, the logger, the registry, the write pool and the memory budget, and mounts
 * the transports on a uWS app (its own via `listen`, or the host's via `attach`).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { IntervalHistogram } from 'node:perf_hooks';
import uWS from 'uWebSockets.js';
import type { TemplatedApp, us_listen_socket } from 'uWebSockets.js';
import { pino } from 'pino';
import type { Logger } from 'pino';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { authMode } from './auth.js';
import { registerHttpRoutes, takeRoute } from './http-routes.js';
import type { RouteContext } from './http-routes.js';
import { resolveOptions } from './options.js';
import type { ResolvedOptions, UploadEngineOptions } from './options.js';
import { SlabPool } from './slab-pool.js';
import { UploadRegistry } from './upload-registry.js';
import type { UploadEvents } from './upload-registry.js';
import { WritePool } from './write-pool.js';
import { Metrics } from './metrics.js';
import { UserLimits } from './user-limits.js';
import { registerWsRoutes } from './ws-routes.js';
import { registerStaticRoutes } from './static-routes.js';
import { holdRoot } from './root-guard.js';
import type { RootGuard } from './root-guard.js';
import type { WsRoutes } from './ws-routes.js';

if (typeof uWS.App !== 'function' || typeof uWS.SSLApp !== 'function') {
  throw new Error('uWebSockets.js native binary not loaded (JS fallback active); Updraft needs Node 20 on a supported platform');
}

const ELD_RESOLUTION_MS = 1;

/** How late the event loop was, in ms: the recorded tick interval minus the resolution. */
function excessMs(h: IntervalHistogram, ns: number): number {
  if (h.count === 0 || Number.isNaN(ns)) return 0;
  return Math.round(Math.max(0, ns / 1e6 - ELD_RESOLUTION_MS) * 1000) / 1000;
}

export interface ListenInfo {
  host: string;
  port: number;
  url: string;
}

export class UploadEngine {
  readonly options: ResolvedOptions;
  readonly log: Logger;
  readonly #registry: UploadRegistry;
  readonly #pool: WritePool;
  readonly #slabs: SlabPool;
  readonly #eld: IntervalHistogram;
  readonly #metrics: Metrics | null;
  readonly #userLimits: UserLimits;
  #app: TemplatedApp | null = null;
  #ws: WsRoutes | null = null;
  #ownsApp = false;
  /** attach()/listen() has begun: one app per engine. */
  #mounting = false;
  #listenSocket: us_listen_socket | null = null;
  #started: Promise<void> | null = null;
  /** This engine's hold on its upload root (root-guard.ts): null before start, after close, or where unguarded. */
  #guard: RootGuard | null = null;
  #closing: Promise<void> | null = null;
  #port = 0;

  constructor(options: UploadEngineOptions = {}) {
    this.options = resolveOptions(options);
    this.log =
      this.options.logger ??
      pino({ level: this.options.logLevel, base: { name: 'updraft' }, redact: ['req.headers.authorization'] }, pino.destination(2));
    this.#registry = new UploadRegistry(this.options, this.log);
    this.#pool = new WritePool({ workers: this.options.workers, onError: (err) => this.log.error({ err }, 'write pool error') });
    this.#slabs = new SlabPool({
      slabSize: this.options.batchSize,
      maxBytes: this.options.maxInFlightBytes,
      arenaBytes: Math.max(16 * 1024 * 1024, this.options.batchSize), // an arena holds at least one slab
      maxFilling: this.options.maxReadingBodies,
    });
    // 1 ms ticks: enough samples for a p99 over a one-second upload, a few microseconds each. The histogram records
    // the interval between ticks, which includes the resolution; figures below report only the excess (lateness).
    this.#eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
    this.#userLimits = new UserLimits(this.options.maxInFlightBytesPerUser);
    this.#metrics = this.options.metrics
      ? new Metrics({
          activeUploads: () => [...this.#registry.uploads()].filter((u) => u.status === 'active' || u.status === 'finalizing').length,
          queueDepth: () => this.#pool.queueSize,
          inFlightBytes: () => this.#slabs.inUseBytes,
          eventLoopDelay: this.#eld,
          resolutionMs: ELD_RESOLUTION_MS,
        })
      : null;
    if (this.#metrics) {
      const m = this.#metrics;
      for (const e of ['created', 'completed', 'failed', 'cancelled', 'expired'] as const) {
        this.#registry.on(e, () => m.uploads.inc({ event: e }));
      }
      this.#registry.on('chunk', (c) => {
        m.bytesWritten.inc(c.size);
        m.chunkWrite.observe(c.writeSeconds);
      });
      this.#registry.onSync = (seconds) => m.fsync.observe(seconds);
    }
  }

  /** Subscribe to upload lifecycle events: created, completed, failed, cancelled, expired. */
  on<K extends keyof UploadEvents>(event: K, listener: (...args: UploadEvents[K]) => void): this {
    this.#registry.on(event, listener as never);
    return this;
  }

  /** The port `listen` bound (useful with port 0). */
  get port(): number {
    return this.#port;
  }

  get registry(): UploadRegistry {
    return this.#registry;
  }

  #start(): Promise<void> {
    this.#started ??= (async () => {
      if (this.options.prefault) this.#prefault();
      // The root with the default mode (the umask's; readers of completed files need it), the staging folder 0700.
      await makeRoot(this.options.dir).catch((e: NodeJS.ErrnoException) => {
        // A file where the root should be (or on its path): say so rather than "EEXIST ... mkdir".
        if (e.code === 'EEXIST' || e.code === 'ENOTDIR') throw new Error(`upload root ${this.options.dir} is not a folder (${e.code})`);
        throw e;
      });
      await fsp.mkdir(this.options.stagingDir, { mode: 0o700 }).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'EEXIST') return;
        // The root refuses the new staging folder (a read-only volume, another owner): said as checkWritable says it.
        if (e.code === 'EROFS' || e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'ENOSPC') {
          throw new Error(`upload root ${this.options.dir} is not writable (${e.code})`);
        }
        throw e;
      });
      // Held before the reload, which takes over every upload in the staging folder; a failed start is closed by
      // attach(), which lets go of it.
      this.#guard = await holdRoot(this.options.stagingDir, this.options.dir, this.log);
      // A read-only volume, or a root the server's user cannot write to, would otherwise be found only by the first
      // init (staging) or, worse, by the first completion, after every byte of that upload was sent (the root).
      await checkWritable('staging folder', this.options.stagingDir);
      await checkWritable('upload root', this.options.dir);
      // A staging folder made before (a restore, a provisioning script) may be wider than 0700: files in progress are
      // private only behind it.
      await fsp.chmod(this.options.stagingDir, 0o700);
      await this.#registry.start();
      this.#eld.enable();
      const mode = authMode(this.options);
      if (mode === 'anonymous') {
        this.log.warn('no tokens configured: every request is the user "anonymous" (pass --token USER:TOKEN to require auth)');
      }
    })();
    return this.#started;
  }

  /**
   * Makes the whole slab budget resident in a worker, beside the rest of the start and the first uploads (option
   * `prefault`). Not awaited: nothing depends on it but speed, and a failure only leaves the pages to be faulted by
   * the copies as they would be without it.
   */
  #prefault(): void {
    const started = performance.now();
    this.#pool.prefault(this.#slabs.carveAll()).then(
      (pages) => this.log.debug({ pages, ms: Math.round(performance.now() - started) }, 'slab budget prefaulted'),
      (err: unknown) => this.log.warn({ err }, 'prefaulting the slab budget failed; its pages are faulted as uploads use them'),
    );
  }

  #context(): RouteContext {
    return {
      options: this.options,
      pool: this.#pool,
      slabs: this.#slabs,
      registry: this.#registry,
      log: this.log,
      eventLoopDelay: () => ({
        p99Ms: excessMs(this.#eld, this.#eld.percentile(99)),
        maxMs: excessMs(this.#eld, this.#eld.max),
        meanMs: excessMs(this.#eld, this.#eld.mean),
        resolutionMs: ELD_RESOLUTION_MS,
      }),
      metrics: this.#metrics,
      userLimits: this.#userLimits,
      resetEventLoopDelay: () => this.#eld.reset(),
      isClosing: () => this.#closing !== null,
    };
  }

  /**
   * Mounts the upload routes on the host's uWS app (under the prefix; `/healthz` too). If the engine cannot start
   * (its root in use, the reload failing), it is closed, so its root is free for another engine.
   */
  attach(app: TemplatedApp): Promise<void> {
    return this.#mount(app, false);
  }

  /** One app per engine, and none once close() has begun (checked before any await, so a racing call is refused). */
  async #mount(app: TemplatedApp, ownApp: boolean): Promise<void> {
    if (this.#closing !== null) throw new Error('engine is closed');
    if (this.#mounting) throw new Error('engine is already attached to an app');
    this.#mounting = true;
    try {
      await this.#start();
      if (this.#closing !== null) throw new Error('engine is closed');
      this.#app = app;
      // uWS aborts the process on a route registered twice: two engines on one app need prefixes of their own.
      if (!takeRoute(app, `prefix ${this.options.prefix}`)) {
        throw new Error(`another engine attached to this app already serves the prefix ${this.options.prefix || '/'}; give each engine its own prefix`);
      }
      // The demo page and client bundle (issue 4) go first: registerHttpRoutes ends with the catch-all 404.
      if (this.options.demo && takeRoute(app, 'demo')) await registerStaticRoutes(app, this.#context());
      if (this.#closing !== null) throw new Error('engine is closed'); // closed while the bundle was built
      registerHttpRoutes(app, this.#context(), ownApp);
      // uWS sends an Upgrade request on <prefix>/upload-chunk to the ws route whatever the registration order, and a
      // plain GET there to the status handler (verified with uWS 20.30; test/integration/ws-pswebhost.test.ts).
      this.#ws = registerWsRoutes(app, this.#context());
    } catch (e) {
      await this.close();
      throw e;
    }
  }

  /** Starts the engine's own server. If it cannot (the port is taken, the root is in use), the engine is closed. */
  async listen(port = this.options.port, host = this.options.host): Promise<ListenInfo> {
    if (this.#closing !== null) throw new Error('engine is closed');
    if (!Number.isSafeInteger(port) || port < 0 || port > 65535) {
      if (!this.#mounting) await this.close();
      throw new RangeError(`port must be an integer from 0 to 65535, got ${port}`);
    }
    if (this.#mounting) throw new Error('engine is already attached to an app');
    const app = uWS.App();
    this.#ownsApp = true;
    await this.#mount(app, true);
    // close() began while the routes were mounted: it has closed (or is closing) this app; do not open a socket.
    const closing = this.#closing as Promise<void> | null;
    if (closing !== null) {
      await closing.catch(() => {});
      throw new Error('engine is closed');
    }
    // Exclusive: without it uWS sets SO_REUSEPORT on a fixed port, so a second server (or any SO_REUSEPORT listener)
    // on the same port started too, and the kernel split connections between them (uploads answered 404 at random).
    // The 4-argument form is in uWS 20.30 (index.d.ts lists only (port, options, cb)).
    const listenExclusive = app.listen as unknown as (h: string, p: number, o: number, cb: (s: us_listen_socket | false) => void) => void;
    const socket = await new Promise<us_listen_socket | false>((resolve) => listenExclusive.call(app, host, port, LIBUS_LISTEN_EXCLUSIVE_PORT, resolve));
    if (!socket) {
      const why = await listenError(host, port).catch(() => '');
      await this.close();
      throw new Error(`could not listen on ${host}:${port}${why ? ` (${why})` : ''}`);
    }
    this.#listenSocket = socket;
    this.#port = uWS.us_socket_local_port(socket);
    const shownHost = host.includes(':') ? `[${host}]` : host;
    return { host, port: this.#port, url: `http://${shownHost}:${this.#port}` };
  }

  /**
   * Graceful stop: refuse new work, let bodies in flight finish (up to `graceMs`), commit what was written so every
   * upload resumes after a restart, close files, threads and sockets. A completion already under way (its final sync,
   * the move, `onUploadComplete`) is finished first, however long it takes: it is not cut by `graceMs`. Afterwards the
   * engine cannot be attached or listen again; make a new one.
   */
  close(graceMs = 5000): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#listenSocket) {
        uWS.us_listen_socket_close(this.#listenSocket);
        this.#listenSocket = null;
      }
      this.#ws?.closeAll(); // 1001: clients reconnect later and resume from the hello / status
      const deadline = Date.now() + graceMs;
      while (Date.now() < deadline && [...this.#registry.uploads()].some((u) => u.claimCount > 0)) {
        await new Promise((r) => setTimeout(r, 20));
      }
      if (this.#started) await this.#started.catch(() => {});
      // Every step runs even if an earlier one fails (its error is the stop's), so no socket, thread or timer stays.
      try {
        await this.#registry.close();
      } finally {
        try {
          await this.#guard?.release();
          this.#guard = null;
        } finally {
          if (this.#ownsApp && this.#app) (this.#app as unknown as { close?: () => void }).close?.(); // runtime-only in uWS 20.30
          this.#eld.disable();
          await this.#pool.close();
        }
      }
    })();
    return this.#closing;
  }
}

export function createUploadEngine(options: UploadEngineOptions = {}): UploadEngine {
  return new UploadEngine(options);
}

/** uWS ListenOptions.LIBUS_LISTEN_EXCLUSIVE_PORT (a type-only enum in index.d.ts; the value is what the binding takes). */
/**
 * `mkdir -p` of the upload root, one folder at a time from the nearest one that exists. Node's recursive mkdir never
 * settles where a folder refuses children although its parent exists (under /proc: ENOENT, then the parent is
 * there, so it tries the child again, for good); here that ENOENT ends the start.
 */
async function makeRoot(dir: string): Promise<void> {
  const missing: string[] = [];
  for (let cur = path.resolve(dir); ; ) {
    const st = await fsp.stat(cur).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return null;
      throw e;
    });
    if (st !== null) {
      if (!st.isDirectory()) throw Object.assign(new Error(`${cur} is not a folder`), { code: missing.length === 0 ? 'EEXIST' : 'ENOTDIR' });
      break;
    }
    missing.push(cur);
    const up = path.dirname(cur);
    if (up === cur) break;
    cur = up;
  }
  for (const d of missing.reverse()) {
    await fsp.mkdir(d).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
  }
}

const LIBUS_LISTEN_EXCLUSIVE_PORT = 1;

/**
 * Creates, syncs and removes a file in `dir`; throws "<what> <dir> is not writable (CODE)" when the folder
 * refuses (EROFS, EACCES, EPERM, ENOSPC...). The name starts with `.updraft`, which upload names may not (no client
 * file is ever in the way), and is fixed, so a crash in between leaves one file that the next start reuses; the root
 * guard keeps other engines out meanwhile. Whatever has the name is unlinked first (a symlink is never followed).
 */
async function checkWritable(what: string, dir: string): Promise<void> {
  const probe = path.join(dir, '.updraft-write-check');
  try {
    await fsp.unlink(probe).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
    });
    const fh = await fsp.open(probe, 'wx', 0o600);
    try {
      await fh.write('x');
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await fsp.unlink(probe);
  } catch (e) {
    await fsp.unlink(probe).catch(() => {});
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new Error(`${what} ${dir} is not writable (${code})`);
  }
}

/** Why a listen failed, asked of the OS with node:net (uWS says only that it failed); '' when that bind works. */
async function listenError(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'EADDRINUSE' ? 'the port is in use' : (e.code ?? e.message)));
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve('')));
  });
}


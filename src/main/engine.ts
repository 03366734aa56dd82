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
import { authMode } from './auth.js';
import { registerHttpRoutes } from './http-routes.js';
import type { RouteContext } from './http-routes.js';
import { resolveOptions } from './options.js';
import type { ResolvedOptions, UploadEngineOptions } from './options.js';
import { SlabPool } from './slab-pool.js';
import { UploadRegistry } from './upload-registry.js';
import type { UploadEvents } from './upload-registry.js';
import { WritePool } from './write-pool.js';

if (typeof uWS.App !== 'function' || typeof uWS.SSLApp !== 'function') {
  throw new Error('uWebSockets.js native binary not loaded (JS fallback active); Updraft needs Node 20 on a supported platform');
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
  #app: TemplatedApp | null = null;
  #ownsApp = false;
  #listenSocket: us_listen_socket | null = null;
  #started: Promise<void> | null = null;
  #closing: Promise<void> | null = null;
  #port = 0;

  constructor(options: UploadEngineOptions = {}) {
    this.options = resolveOptions(options);
    this.log =
      this.options.logger ??
      pino({ level: this.options.logLevel, base: { name: 'updraft' }, redact: ['req.headers.authorization'] }, pino.destination(2));
    this.#registry = new UploadRegistry(this.options, this.log);
    this.#pool = new WritePool({ workers: this.options.workers, onError: (err) => this.log.error({ err }, 'write pool error') });
    this.#slabs = new SlabPool({ slabSize: this.options.batchSize, maxBytes: this.options.maxInFlightBytes });
    this.#eld = monitorEventLoopDelay({ resolution: 10 });
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
      await this.#registry.start();
      this.#eld.enable();
      const mode = authMode(this.options);
      if (mode === 'anonymous') {
        this.log.warn('no tokens configured: every request is the user "anonymous" (pass --token USER:TOKEN to require auth)');
      }
    })();
    return this.#started;
  }

  #context(): RouteContext {
    return {
      options: this.options,
      pool: this.#pool,
      slabs: this.#slabs,
      registry: this.#registry,
      log: this.log,
      eventLoopDelay: () => ({
        p99Ms: this.#eld.percentile(99) / 1e6,
        maxMs: this.#eld.max / 1e6,
        meanMs: Number.isNaN(this.#eld.mean) ? 0 : this.#eld.mean / 1e6,
      }),
      resetEventLoopDelay: () => this.#eld.reset(),
      isClosing: () => this.#closing !== null,
    };
  }

  /** Mounts the upload routes on the host's uWS app (under the prefix; `/healthz` too). */
  async attach(app: TemplatedApp): Promise<void> {
    if (this.#app) throw new Error('engine is already attached to an app');
    await this.#start();
    this.#app = app;
    registerHttpRoutes(app, this.#context());
  }

  /** Starts the engine's own server. */
  async listen(port = this.options.port, host = this.options.host): Promise<ListenInfo> {
    const app = uWS.App();
    await this.attach(app);
    this.#ownsApp = true;
    const socket = await new Promise<us_listen_socket | false>((resolve) => app.listen(host, port, resolve));
    if (!socket) throw new Error(`could not listen on ${host}:${port}`);
    this.#listenSocket = socket;
    this.#port = uWS.us_socket_local_port(socket);
    const shownHost = host.includes(':') ? `[${host}]` : host;
    return { host, port: this.#port, url: `http://${shownHost}:${this.#port}` };
  }

  /**
   * Graceful stop: refuse new work, let writes in flight finish (up to `graceMs`), commit what was written so every
   * upload resumes after a restart, close files, threads and sockets.
   */
  close(graceMs = 5000): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#listenSocket) {
        uWS.us_listen_socket_close(this.#listenSocket);
        this.#listenSocket = null;
      }
      const deadline = Date.now() + graceMs;
      while (Date.now() < deadline && [...this.#registry.uploads()].some((u) => u.claimCount > 0)) {
        await new Promise((r) => setTimeout(r, 20));
      }
      if (this.#started) await this.#started.catch(() => {});
      await this.#registry.close();
      if (this.#ownsApp && this.#app) (this.#app as unknown as { close?: () => void }).close?.(); // runtime-only in uWS 20.30
      await this.#pool.close();
      this.#eld.disable();
    })();
    return this.#closing;
  }
}

export function createUploadEngine(options: UploadEngineOptions = {}): UploadEngine {
  return new UploadEngine(options);
}

/**
 * Updraft's WebSocket transports as an UploadClient: init over HTTP (fetch, as for PUT), then the chunks over one
 * WebSocket per upload, sent by the ws-runner child process (clients/ws-runner.ts), which lives for the whole run so
 * its start-up is not measured and its CPU is read from /proc apart from the harness's.
 *
 *   - `updraft.v1`: binary frames (2-byte length, msgpack header, chunk), `inFlight` = the window (8 in the plan,
 *     capped by the server's `hello`);
 *   - `pswebhost`: JSON text metadata then the chunk as one binary message; `inFlight` 1 is serial (wait for each
 *     `progress`), more is pipelined.
 * The upload succeeds at `complete` (after finalization), once every chunk was acknowledged exactly once; the
 * harness then verifies the stored bytes like any other target's.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import { trackChild } from '../child-server.js';
import type { Runtime } from '../build.js';
import type { UploadClient, UploadJob, UploadReceipt } from '../model.js';
import { initUpload, TokenTurns } from './chunk-put.js';

export type WsProtocol = 'updraft.v1' | 'pswebhost';

/** One upload, as sent to the runner (one JSON line). */
export interface WsCommand {
  readonly id: number;
  readonly url: string;
  readonly protocol: WsProtocol;
  readonly inFlight: number;
  readonly token?: string;
  readonly chunkPaths: readonly string[];
  readonly chunkSize: number;
  readonly fileSize: number;
  readonly timeoutMs: number;
  /** updraft.v1: send a chunk longer than this as `part` frames of this size (docs/PROTOCOL.md); absent: whole. */
  readonly partSize?: number;
}

/** The runner's answer to one command (one JSON line). */
export interface WsResult {
  readonly id: number;
  readonly ok: boolean;
  readonly error?: string;
  readonly size?: number;
  readonly fileName?: string;
  readonly chunks?: number;
}

export const WS_RUNNER = 'bench/macro/clients/ws-runner.ts';
const READY_TIMEOUT_MS = 15_000;

/** The runner child process: commands in on stdin, results out on stdout, matched by id. */
export class WsRunner {
  readonly #child: ChildProcess;
  readonly #untrack: () => void;
  readonly #pending = new Map<number, (result: WsResult) => void>();
  #nextId = 1;
  #exited = false;
  #stderr = '';

  private constructor(child: ChildProcess) {
    this.#child = child;
    this.#untrack = trackChild(child);
    child.stderr?.setEncoding('utf8').on('data', (t: string) => (this.#stderr = (this.#stderr + t).slice(-4096)));
    child.once('exit', (code, signal) => {
      this.#exited = true;
      this.#untrack();
      for (const [id, settle] of this.#pending) {
        settle({ id, ok: false, error: `ws-runner exited (code ${code}, signal ${signal}) ${this.#stderr.trim().slice(-300)}` });
      }
      this.#pending.clear();
    });
  }

  get pid(): number {
    return this.#child.pid ?? -1;
  }

  static async start(repoRoot: string, runtime: Runtime): Promise<WsRunner> {
    const child = spawn(process.execPath, runtime.nodeArgs(WS_RUNNER), { cwd: repoRoot, stdio: ['pipe', 'pipe', 'pipe'] });
    const runner = new WsRunner(child);
    const lines = readline.createInterface({ input: child.stdout!, crlfDelay: Infinity });
    let ready: () => void = () => {};
    const readyPromise = new Promise<void>((resolve) => (ready = resolve));
    lines.on('line', (line) => {
      if (line === 'ready') {
        ready();
        return;
      }
      let result: WsResult;
      try {
        result = JSON.parse(line) as WsResult;
      } catch {
        return;
      }
      const settle = runner.#pending.get(result.id);
      runner.#pending.delete(result.id);
      settle?.(result);
    });
    const started = await Promise.race([
      readyPromise.then(() => true),
      new Promise<boolean>((resolve) => child.once('exit', () => resolve(false))),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), READY_TIMEOUT_MS).unref()),
    ]);
    if (!started) {
      await runner.stop();
      throw new Error(`ws-runner did not start: ${runner.#stderr.trim().slice(-1000)}`);
    }
    return runner;
  }

  run(command: Omit<WsCommand, 'id'>): Promise<WsResult> {
    const id = this.#nextId++;
    if (this.#exited) return Promise.resolve({ id, ok: false, error: 'ws-runner is not running' });
    return new Promise((resolve) => {
      this.#pending.set(id, resolve);
      this.#child.stdin!.write(`${JSON.stringify({ id, ...command })}\n`);
    });
  }

  /** Ends every connection now; their uploads fail. */
  abort(): void {
    if (!this.#exited) this.#child.stdin!.write(`${JSON.stringify({ abort: true })}\n`);
  }

  /** Closes stdin (the runner exits), SIGKILL after 3 s. */
  async stop(): Promise<void> {
    if (this.#exited) return;
    const exited = new Promise<void>((resolve) => this.#child.once('exit', () => resolve()));
    this.#child.stdin!.end();
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
}

export interface WsClientOptions {
  readonly baseUrl: string;
  readonly prefix: string;
  readonly protocol: WsProtocol;
  /** updraft.v1 window / PSWebHost chunks in flight (1 = serial). */
  readonly inFlight: number;
  /** updraft.v1: chunks longer than this go as `part` frames of this size; absent: one frame per chunk. */
  readonly partSize?: number;
  readonly timeoutMs: number;
  readonly runner: WsRunner;
  readonly tokens?: readonly string[];
}

export class WsUploadClient implements UploadClient {
  readonly #o: WsClientOptions;
  readonly #tokens: TokenTurns;

  constructor(options: WsClientOptions) {
    this.#o = options;
    this.#tokens = new TokenTurns(options.tokens);
  }

  describe(): string {
    if (this.#o.protocol === 'updraft.v1') {
      const parts = this.#o.partSize === undefined ? '' : ` p${this.#o.partSize / (1024 * 1024)}M`;
      return `ws updraft.v1 w${this.#o.inFlight}${parts}`;
    }
    return this.#o.inFlight === 1 ? 'ws PSWebHost serial' : `ws PSWebHost x${this.#o.inFlight}`;
  }

  async upload(job: UploadJob): Promise<UploadReceipt> {
    const { baseUrl, prefix, protocol, inFlight, timeoutMs, runner, partSize } = this.#o;
    const route = `${baseUrl}${prefix}/upload-chunk`;
    const token = this.#tokens.take();
    const guid = await initUpload(route, job, timeoutMs, token);
    const { content } = job;
    const result = await runner.run({
      url: `${route.replace(/^http/, 'ws')}?guid=${encodeURIComponent(guid)}`,
      protocol,
      inFlight,
      token,
      chunkPaths: content.chunkPaths,
      chunkSize: content.chunkSize,
      fileSize: content.fileSize,
      timeoutMs,
      ...(partSize === undefined ? {} : { partSize }),
    });
    if (!result.ok) throw new Error(`${this.describe()}: ${result.error ?? 'failed'}`);
    return { id: guid };
  }

  abort(): void {
    this.#o.runner.abort();
  }
}
